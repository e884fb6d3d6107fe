"""The tables of docs/results/table3-quick-all.md, printed as Markdown from the exported grid.

    python benchmarks/table3_tables.py benchmarks/results/table3-quick-all.json \
        --spend AVX512:2026-12-05,2026-12-06 --spend AVX2:2026-12-04

Three kinds of table, each attack x defense, from the grid's finished cells (one seed):
- the defenses that need no clean data, and ASD: ACC / ASR in %, per-sample protocol; a guarded model's
  paper (batch) protocol in parentheses; for a defense handed the no-defense model (CLP, D-BR), the model
  it was handed in brackets (`backdoored_acc`/`backdoored_asr`: the same seed trained on another CPU or
  code version than the none column's is another model);
- the post-training defenses that use the defender's clean images (FT, ANP, FP, NAD), the same way;
- what each defense spent on one machine (`--spend CAPABILITY:DAY[,DAY...]`, e.g. AVX512:2026-12-05: the
  cells whose `metrics.environment.cpu_capability` is CAPABILITY and that finished on one of the DAYs, each
  a prefix of the ISO time, so 2026-12 is the month):
  `defense_seconds` and `defense_cost_vs_plain` where the cell recorded it. Ratios compare within one
  machine only, so each machine (CPU model, `metrics.environment.cpu`, and capability) gets its own table:
  one --spend prints a table per CPU model among its cells. Rows and columns with no cell are left out.
`·` marks a cell that has not run.
"""

import argparse
import json
from pathlib import Path
from typing import Any

from eigenguard.bench.report import markdown_table

ATTACKS = {
    "badnets": "BadNets",
    "blend": "Blend",
    "sig": "SIG",
    "wanet": "WaNet",
    "multi-trigger": "multi-trigger",
    "adap-blend": "Adap-Blend",
    "adap-patch": "Adap-Patch",
    "bpp": "BppAttack",
    "input-aware": "Input-aware",
}
NO_CLEAN_DATA = {"none": "none", "abl": "ABL", "ss": "SS", "clp": "CLP", "d-br": "D-BR", "d-st": "D-ST"}
NO_CLEAN_DATA |= {"asd": "ASD", "eigenguard": "EigenGuard"}
POST_TRAINING = {"ft": "FT", "anp": "ANP", "fp": "FP", "nad": "NAD"}
SPEND = {k: v for k, v in (NO_CLEAN_DATA | POST_TRAINING).items() if k != "none"}
HANDED_THE_MODEL = {"clp", "d-br", *POST_TRAINING}  # their bracket: the no-defense model they started from

Cells = dict[tuple[str, str], dict[str, Any]]


def finished_cells(path: Path) -> Cells:
    """(attack, defense) -> cell, for the finished cells of an exported grid (`eigenguard export`)."""
    grid = json.loads(path.read_text())
    return {(c["labels"]["attack"], c["labels"]["defense"]): c for c in grid["cells"] if c["status"] == "done"}


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def result(cells: Cells, attack: str, defense: str) -> str:
    cell = cells.get((attack, defense))
    if cell is None:
        return "·"
    m = cell["metrics"]
    text = f"{pct(m['acc'])} / {pct(m['asr'])}"
    if m.get("acc_paper") is not None:
        text += f" ({pct(m['acc_paper'])} / {pct(m['asr_paper'])})"
    if defense in HANDED_THE_MODEL and m.get("backdoored_acc") is not None:
        text += f" [{pct(m['backdoored_acc'])} / {pct(m['backdoored_asr'])}]"
    return text


def results_table(cells: Cells, defenses: dict[str, str]) -> str:
    rows = [[name, *(result(cells, a, d) for d in defenses)] for a, name in ATTACKS.items()]
    return markdown_table(["attack", *defenses.values()], rows)


def spent(cell: dict[str, Any]) -> str:
    m = cell["metrics"]
    seconds, ratio = m["defense_seconds"], m.get("defense_cost_vs_plain")
    if seconds < 1:  # CLP: pruning alone; a ratio would read 0.00x
        return f"{seconds:.2f} s"
    return f"{seconds:,.0f} s" + (f", {ratio:.2f}x" if ratio is not None else "")


def cells_by_cpu(cells: Cells, capability: str, days: tuple[str, ...]) -> dict[str, Cells]:
    """CPU model -> the cells that ran on it with this capability and finished on one of the days."""
    by_cpu: dict[str, Cells] = {}
    for key, c in cells.items():
        environment = c["metrics"].get("environment", {})
        if environment.get("cpu_capability") == capability and (c.get("finished_at") or "").startswith(days):
            by_cpu.setdefault(environment.get("cpu", "unknown CPU"), {})[key] = c
    return by_cpu


def spend_table(mine: Cells) -> str:
    """Each defense's wall time (and its ratio over plain training) in cells of one machine."""
    attacks = {a: name for a, name in ATTACKS.items() if any((a, d) in mine for d in SPEND)}
    rows = [
        [name, *(spent(mine[a, d]) if (a, d) in mine else "·" for a in attacks)]
        for d, name in SPEND.items()
        if any((a, d) in mine for a in attacks)
    ]
    return markdown_table(["defense", *attacks.values()], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path, help="an exported table3-quick-all grid (JSON)")
    parser.add_argument("--spend", action="append", default=[], metavar="CAPABILITY:DAY[,DAY...]")
    args = parser.parse_args()
    spends = []
    for spec in args.spend:
        capability, _, day_list = spec.partition(":")
        days = tuple(day_list.split(","))
        if not capability or not all(days):
            parser.error(f"--spend {spec!r}: expected CAPABILITY:DAY[,DAY...], e.g. AVX512:2026-12-05,2026-12-06")
        spends.append((capability, days))
    cells = finished_cells(args.grid)
    print(f"{len(cells)} finished cells\n")
    print(results_table(cells, NO_CLEAN_DATA), end="\n\n")
    print(results_table(cells, POST_TRAINING), end="\n\n")
    for capability, days in spends:
        for cpu, mine in sorted(cells_by_cpu(cells, capability, days).items()):
            print(f"Spend on {cpu}, {capability}, {', '.join(days)}:\n\n{spend_table(mine)}", end="\n\n")


if __name__ == "__main__":
    main()
