"""The tables of docs/results/detection.md, printed as Markdown from an exported detection grid.

    python benchmarks/detection_tables.py benchmarks/results/detection-quick.json

Cells with a detector are scans (pipeline/scan.py); their metrics hold the scores against the planted
attack. Three tables, attack x detector:
- AUROC of the scores and TPR at 5% FPR (the threshold 5% of the clean images exceed);
- precision / recall of the detector's own flagged set;
- the target class it names (right, wrong, or none named), and the scan's seconds (detector only; the
  model it read came from the cache or was trained once per attack).
The clean-data row (attack none) shows how many images a detector flags and whether it names a target
when nothing is poisoned. `·` marks a cell that has not run.
"""

import argparse
import json
from pathlib import Path
from typing import Any

from clean_model_tables import inversion_column
from table3_tables import ATTACKS

from eigenguard.bench.report import markdown_table

ROWS = {**ATTACKS, "none": "clean data"}
DETECTORS = {
    "ss": "SS", "ac": "AC", "spectre": "SPECTRE", "abl": "ABL isolation", "d-br": "D-BR split", "sieve": "sieve (ours)",
    "inversion": "inversion, direction (ours)", "inversion-principal-reach": "inversion, principal, reach (ours)",
    "inversion-principal-either": "inversion, principal, either (ours)",
    "inversion-principal-any": "inversion, principal, any (ours)",
    "inversion-principal-reach-steps30": "the same, 30 steps",
}  # fmt: skip


def scans(paths: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """(attack, detector) -> the scan's metrics, for seed 0 and the default target class (a later file's
    cell wins)."""
    found = {}
    for path in paths:
        for cell in json.loads(path.read_text())["cells"]:
            config = cell.get("config") or {}
            detector = column(config.get("detector") or {})
            chosen = config.get("seed") == 0 and config.get("target", 0) == 0
            if cell.get("status") == "done" and detector != "none" and chosen:
                found[(config["attack"]["name"], detector)] = cell["metrics"]
    return found


def column(detector: dict[str, Any]) -> str:
    """The table's column of a scan's detector: its name, trigger inversion's with its variant."""
    name = detector.get("name", "none")
    return inversion_column(detector) if name == "inversion" else name


def table(found: dict[tuple[str, str], dict[str, Any]], show) -> str:
    """Attack x detector, the detectors that ran at least one scan."""
    shown = {d: label for d, label in DETECTORS.items() if any(key[1] == d for key in found)}
    rows = []
    for attack, label in ROWS.items():
        cells = [show(found[(attack, d)]) if (attack, d) in found else "·" for d in shown]
        rows.append([label, *cells])
    return markdown_table(["attack", *shown.values()], rows)


def ranking(m: dict[str, Any]) -> str:
    t = m.get("truth")
    return f"{m['flagged']} flagged" if t is None else f"{t['auroc']:.3f} / {100 * t['tpr_at_5fpr']:.0f}%"


def flagged(m: dict[str, Any]) -> str:
    t = m.get("truth")
    if t is None:
        return f"{m['flagged']} flagged"
    precision = "-" if t["precision"] is None else f"{100 * t['precision']:.0f}"
    return f"{precision} / {100 * t['recall']:.0f}"


def verdict(m: dict[str, Any]) -> str:
    """The class a scan named: right or wrong against the truth, or just which where there is none."""
    named = m["target"]["class"]
    if "truth" not in m and named is not None:
        return f"names {named}"
    return "none" if named is None else ("right" if m["target"].get("correct", False) else f"wrong ({named})")


def target(m: dict[str, Any]) -> str:
    return f"{verdict(m)}, {m['seconds']['detector']:.0f} s"


def headline(m: dict[str, Any] | None) -> str:
    return "·" if m is None else f"{ranking(m)}, {verdict(m)}"


HEADLINE = ("ss", "ac", "spectre", "abl", "d-br", "sieve")
DEFAULT = ("inversion-principal-any", "inversion-principal-either", "inversion-principal-reach")  # first found


def summary(found: dict[tuple[str, str], dict[str, Any]]) -> str:
    """The page's headline: each detector's AUROC / TPR and the class it names; trigger inversion at its
    defaults (`any`), else a scan of the same split whose rule named what `any` names (the page says which)."""
    shown = [d for d in HEADLINE if any(key[1] == d for key in found)]  # the detectors that ran
    heads = [DETECTORS[d] for d in shown] + ["trigger inversion (ours)"]
    rows = []
    for attack, label in ROWS.items():
        default = next((found[(attack, d)] for d in DEFAULT if (attack, d) in found), None)
        rows.append([label, *(headline(found.get((attack, d))) for d in shown), headline(default)])
    return markdown_table(["attack", *heads], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", type=Path)
    found = scans(parser.parse_args().exports)
    print("summary: AUROC / TPR at 5% FPR, the target class named\n\n" + summary(found))
    print("\nAUROC / TPR at 5% FPR\n\n" + table(found, ranking))
    print("\nprecision / recall of the flagged set, %\n\n" + table(found, flagged))
    print("\ntarget class named, detector seconds\n\n" + table(found, target))


if __name__ == "__main__":
    main()
