"""The tables of docs/results/clean-model.md, printed as Markdown from exported grids.

    python benchmarks/clean_model_tables.py benchmarks/results/study-queue.json \
        benchmarks/results/table3-quick-all.json benchmarks/results/clean-model-quick.json \
        benchmarks/results/clean-model-queue.json

Cells of every file are merged by what they ran (attack, and the defense with the options that tell its
variants apart), so a cell run through a queue grid joins the table of its main grid. Four tables, the
first three of seed 0:
- ACC / ASR in %, per-sample protocol, attack x defense (the new defenses beside the none column and the
  no-clean-data defenses of table3-quick-all that stop the most);
- how each new defense split or weighted the training set, against the ground truth (used for reports only);
- what each defense spent per CPU model: its wall time over the training time of the attack's plain model
  on the same machine (`plain_train_seconds`, recorded by any cell that ran once the plain model was in that
  machine's cache), and in parentheses the defense's time from its median epoch times (robust to an epoch
  slowed by other work on the machine) over the same. A sieve that read its guarded model from the cache
  counts that model's training time (`sieve_seconds`) as if it had trained it;
- over seeds 0-2 (study-queue.json holds the no-defense runs of seeds 1 and 2): mean +- sample standard
  deviation of ACC and ASR of no defense and of every new defense with more than one seed.
Then the candidate's three-seed rows, and its seed-0 stress cells (other rates, targets and attacks).
`·` marks a cell that has not run.
"""

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch
from table3_tables import ATTACKS as TABLE3_ATTACKS
from table3_tables import pct

from eigenguard.bench.report import markdown_table
from eigenguard.detectors.inversion import TriggerInversion, named_target
from eigenguard.options import defaults_of

ATTACKS = {**TABLE3_ATTACKS, "clb": "CLB (working setting)"}
RATES = {"sig": 0.8, "clb": 1.0, "none": 0.0}  # the poisoning rate of the quick profile's setting, else 0.1
DEFENSES = {
    "none": "none",
    "eigenguard": "EigenGuard",
    "d-st": "D-ST",
    "pdb": "PDB",
    "pdb-clean": "PDB, clean images",
    "sieve-rate": "sieve, rate rule",
    "sieve": "sieve",
    "sieve-pdb": "sieve + PDB",
    "sieve-outliers": "outlier sieve",
    "sieve-outliers-pdb": "outlier sieve + PDB",
    "sieve-outliers-widen": "outlier sieve, widened",
    "sieve-outliers-widen-6": "outlier sieve, widened, 6-epoch guard",
    "sieve-outliers-widen-6-abl": "the same, ABL's isolation where no class stands out",
    "cbd": "CBD",
    "inversion-first": "trigger inversion, first split",
    "inversion": "trigger inversion, widened",
    "inversion-balanced": "the same, balanced",
    "inversion-principal": "trigger inversion, principal split",
    "inversion-principal-reach": "the same, the cleanest split named",
    "inversion-principal-either": "the same, a class reached 2x any other named first",
    "inversion-principal-either-read4": "the same, `either`, reading a 4-epoch model",
    "inversion-principal-any": "the same, else the class pixel neighbours name",
    "inversion-principal-any-read4": "the same, `any`, reading a 4-epoch model",
    "inversion-principal-any-read6": "the same, `any`, reading a 6-epoch model",
}
SIEVES = (
    "sieve-rate",
    "sieve",
    "sieve-pdb",
    "sieve-outliers",
    "sieve-outliers-pdb",
    "sieve-outliers-widen",
    "sieve-outliers-widen-6",
    "sieve-outliers-widen-6-abl",
)
INVERSIONS = (
    "inversion-first",
    "inversion",
    "inversion-balanced",
    "inversion-principal",
    "inversion-principal-reach",
    "inversion-principal-either",
    "inversion-principal-either-read4",
    "inversion-principal-any",
    "inversion-principal-any-read4",
    "inversion-principal-any-read6",
)
NEW = ("pdb", "pdb-clean", *SIEVES, "cbd", *INVERSIONS)

Cells = dict[tuple[str, str], dict[str, Any]]
STEPS = defaults_of(TriggerInversion)["steps"]  # trigger inversion's gradient steps; others are another column
BUDGET = defaults_of(TriggerInversion)["budget"]  # its perturbations' size; likewise


def variant(defense: dict[str, Any]) -> str:
    """The column a cell's defense belongs in: its name, and the option that makes it another method."""
    name = defense["name"]
    if name == "pdb" and defense.get("source") == "clean":
        return "pdb-clean"
    if name == "sieve" and defense.get("target", "rate") == "rate":  # before the spread rule existed
        return "sieve-rate"
    if name == "sieve":
        rule = "sieve-outliers" if defense.get("rule") == "target-outliers" else "sieve"
        rule += "-widen" if defense.get("widen", "none") != "none" else ""
        rule += f"-{defense['sieve_epochs']}" if defense.get("sieve_epochs") else ""
        rule += f"-{defense['no_target']}" if defense.get("no_target", "flag") != "flag" else ""
        return f"{rule}-pdb" if defense.get("then") == "pdb" else rule
    if name == "inversion":  # widening became an option (default on) after its first cells
        if defense.get("widen", "none") != "trigger":
            return "inversion-first"
        column = inversion_column(defense)
        return f"{column}-balanced" if defense.get("balance", "none") != "none" else column
    return name


def inversion_column(options: dict[str, Any]) -> str:
    """Trigger inversion's column (defense or detector) from its split and naming rule; a cell stored before
    `along` and `confirm` existed ran the direction split and `confirm: split`."""
    column = "inversion-principal" if options.get("along", "direction") != "direction" else "inversion"
    confirm = options.get("confirm", "split")
    column += f"-{confirm}" if confirm in ("reach", "either", "any") else ""
    steps, budget = options.get("steps", STEPS), options.get("budget", BUDGET)
    column += f"-steps{steps}" if steps != STEPS else ""
    column += f"-budget{budget:g}" if budget != BUDGET else ""
    return column + (f"-read{options['read_epochs']}" if options.get("read_epochs") else "")


def trainings(paths: list[Path]) -> list[dict[str, Any]]:
    """The files' finished training cells of the quick profile (a scan is detection.md's), in order."""
    cells = []
    for path in paths:
        for c in json.loads(path.read_text())["cells"]:
            cfg = c["config"]
            if c["status"] != "done" or cfg.get("train_subset") != 20000 or cfg.get("epochs") != 12:
                continue
            if cfg.get("detector", {}).get("name", "none") == "none":
                cells.append(c)
    return cells


def own_setting(cfg: dict[str, Any]) -> bool:
    """Whether a cell ran its attack's own poisoning rate (CLB: its working setting) into class 0."""
    return cfg.get("poison_rate") == RATES.get(cfg["attack"]["name"], 0.1) and cfg.get("target", 0) == 0


def load(paths: list[Path]) -> dict[int, Cells]:
    """seed -> (attack, column) -> finished cell of the quick profile's setting; a later file's cell
    replaces an earlier one's."""
    seeds: dict[int, Cells] = {}
    for c in trainings(paths):
        cfg = c["config"]
        if own_setting(cfg):
            seeds.setdefault(cfg["seed"], {})[cfg["attack"]["name"], variant(cfg["defense"])] = c
    return seeds


def result(cells: Cells, attack: str, defense: str) -> str:
    cell = cells.get((attack, defense))
    return "·" if cell is None else f"{pct(cell['metrics']['acc'])} / {pct(cell['metrics']['asr'])}"


def columns(cells: Cells, wanted: tuple[str, ...]) -> dict[str, str]:
    return {d: DEFENSES[d] for d in wanted if any(key[1] == d for key in cells)}


def attacks_in(cells: Cells) -> dict[str, str]:
    return {a: name for a, name in ATTACKS.items() if any(key[0] == a and key[1] in NEW for key in cells)}


def results_table(cells: Cells) -> str:
    shown = columns(cells, tuple(DEFENSES))
    rows = [[name, *(result(cells, a, d) for d in shown)] for a, name in attacks_in(cells).items()]
    return markdown_table(["attack", *shown.values()], rows)


def split_text(cell: dict[str, Any] | None, defense: str) -> str:
    if cell is None:
        return "·"
    report, target = cell["metrics"]["defense_report"], cell["config"].get("target", 0)
    if defense in ("pdb", "pdb-clean"):
        return f"{report['defensive_poisoned']} of {report['defensive_images']}"
    if defense in SIEVES or defense in INVERSIONS:
        split, guess = report["split"], report["estimated_target"]
        text = f"{split['flagged']:,} flagged, P {pct(split['precision'])} R {pct(split['recall'])}"
        text += f", AUROC {report['loss_auroc']:.3f}" if defense in SIEVES else ""
        text += "" if guess == target else f" (wrong: {guess})"
        return text + (f", {report['outlier_side']} side" if "outlier_side" in report else "")
    if defense == "cbd":
        return (
            f"AUROC {report['weight_auroc']:.3f}, w {report['weight_mean_poisoned']:.2f} on poisons, "
            f"{report['weight_mean_clean']:.2f} on the rest"
        )
    return "·"


def split_table(cells: Cells) -> str:
    shown = columns(cells, NEW)
    heads = {
        "pdb": "PDB: poisons among its defensive images",
        "pdb-clean": "PDB, clean images: the same",
        "sieve-rate": "sieve, rate rule: its split (P, R in %)",
        "sieve": "sieve: its split (P, R in %), target estimate",
        "sieve-pdb": "sieve + PDB: the same",
        "sieve-outliers": "outlier sieve: its split, the side it flagged",
        "sieve-outliers-pdb": "outlier sieve + PDB: the same",
        "sieve-outliers-widen": "outlier sieve, widened by the trigger estimate: the same",
        "sieve-outliers-widen-6": "the same, 6-epoch guard",
        "cbd": "CBD: its final weights",
        "inversion-first": "trigger inversion, first split: its split (P, R in %), target estimate",
        "inversion": "trigger inversion, widened: the same",
        "inversion-principal": "trigger inversion, principal split: the same",
    }
    rows = [[name, *(split_text(cells.get((a, d)), d) for d in shown)] for a, name in attacks_in(cells).items()]
    return markdown_table(["attack", *(heads.get(d, DEFENSES[d]) for d in shown)], rows)  # else its own name


def epoch_seconds(cell: dict[str, Any], phases: tuple[str, ...]) -> list[float]:
    """The timed epochs of the cell's log in those phases."""
    rows = cell.get("log") or []
    return [
        float(r["epoch_seconds"]) for r in rows if r.get("phase") in phases and r.get("epoch_seconds") not in (None, "")
    ]


def median_epoch_seconds(cell: dict[str, Any]) -> float:
    """Each phase's median epoch time times its epochs, summed: the run's time without its outliers."""
    phases: dict[str, list[float]] = {}
    for row in cell.get("log") or []:
        if row.get("epoch_seconds") not in (None, ""):
            phases.setdefault(row["phase"], []).append(float(row["epoch_seconds"]))
    return sum(statistics.median(times) * len(times) for times in phases.values())


def plain_seconds(cells: Cells, attack: str, machine: str) -> float | None:
    """The training time of this attack's no-defense model on this CPU model, as a cell recorded it
    (`plain_train_seconds`: the cached plain run of the same setting on the machine that ran the cell)."""
    for (a, d), cell in cells.items():  # this page's cells only: another day's machine may share the CPU name
        seconds = cell["metrics"].get("plain_train_seconds")
        if a == attack and d in NEW and cpu(cell) == machine and seconds:
            return float(seconds)
    return None


def cpu(cell: dict[str, Any]) -> str:
    """The CPU model and the kernels torch chose on it: one name can hide machines twice as fast as others."""
    env = cell["metrics"].get("environment", {})
    kernels = env.get("cpu_capability")
    return env.get("cpu", "unknown CPU") + (f" ({kernels})" if kernels else "")


def own_pace_plain(cell: dict[str, Any]) -> float | None:
    """The plain training of the cell's setting timed at the cell's own pace: the median epoch time per image
    of its retraining (the plain recipe on the kept images, or on every image where a short reader named
    nothing), times the plain run's epochs and images (one CPU name ran up to 1.4x slower in some hours than
    in others, so a plain run timed in another cell is no yardstick); None without such a training."""
    epochs = epoch_seconds(cell, ("retrain", "train"))
    m = cell["metrics"]
    images = (m.get("defense_report") or {}).get("trained_on")
    return statistics.median(epochs) / images * m["epochs"] * m["train_images"] if epochs and images else None


def resumed(cell: dict[str, Any]) -> bool:
    """Whether the cell was resumed after a kill: its wall times then miss the interrupted process's. Cells
    recorded before runs said so show it in their log: the epochs of the defense's own fits add up to more
    than its wall time, which holds them."""
    if cell["metrics"].get("resumed"):
        return True
    return sum(epoch_seconds(cell, ("read", "retrain"))) > cell["metrics"].get("defense_seconds", math.inf)


def own_pace_cost(cell: dict[str, Any]) -> tuple[float, float] | None:
    """A trigger inversion cell's seconds with the plain training it reads counted at its own pace (a short
    reader it trained itself is in its own seconds already), and their ratio over that plain training; None
    without a retraining."""
    paced = own_pace_plain(cell)
    if paced is None:
        return None
    reads_plain = not (cell["metrics"].get("defense_report") or {}).get("reader")
    total = cell["metrics"]["defense_seconds"] + paced * reads_plain
    return total, total / paced


def spend_tables(cells: Cells) -> str:
    out = []
    for machine in sorted({cpu(c) for (_, d), c in cells.items() if d in NEW}):
        listed = attacks_in(cells)  # a column with cells on clean data alone has no row here
        here = [k[1] for k, c in cells.items() if k[0] in listed and cpu(c) == machine]
        shown = {d: DEFENSES[d] for d in NEW if d in here}
        rows = []
        for a, name in listed.items():
            plain = plain_seconds(cells, a, machine)
            row = [name]
            for d in shown:
                cell = cells.get((a, d))
                if cell is None or cpu(cell) != machine:
                    row.append("·")
                    continue
                seconds, robust = cell["metrics"]["defense_seconds"], median_epoch_seconds(cell)
                report = cell["metrics"].get("defense_report") or {}
                if report.get("sieve_cached"):  # the guard trained in another cell: its time counts here too
                    seconds, robust = seconds + report["sieve_seconds"], robust + report["sieve_seconds"]
                if resumed(cell):
                    row.append("resumed: not timed")
                    continue
                paced = own_pace_cost(cell)
                if d in INVERSIONS and paced is not None:  # it reads the plain model: a user trains it too
                    row.append(f"{paced[0]:,.0f} s, {paced[1]:.2f}x")
                    continue
                if d in INVERSIONS and plain is not None:
                    seconds, robust = seconds + plain, robust + plain
                text = f"{seconds:,.0f} s"
                if plain is not None:
                    text += f", {seconds / plain:.2f}x ({robust / plain:.2f}x)"
                row.append(text)
            rows.append(row)
        out.append(f"Spend on {machine}:\n\n" + markdown_table(["attack", *shown.values()], rows))
    return "\n\n".join(out)


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{pct(statistics.mean(values))} +- {pct(sd)}"


def seeds_table(seeds: dict[int, Cells]) -> str:
    """ACC and ASR over seeds 0-2 where a new defense ran more than one seed."""
    runs = lambda a, d: [seeds[s][a, d] for s in (0, 1, 2) if (a, d) in seeds.get(s, {})]  # noqa: E731
    shown = [d for d in NEW if any(len(runs(a, d)) > 1 for a in ATTACKS)]
    if not shown:
        return "(no new defense has run more than one seed)"
    rows = []
    for a, name in ATTACKS.items():
        if not any(len(runs(a, d)) > 1 for d in shown):
            continue
        row = [name]
        for d in ("none", *shown):
            got = runs(a, d)
            acc = [c["metrics"]["acc"] for c in got]
            asr = [c["metrics"]["asr"] for c in got]
            row.append(f"{mean_sd(acc)} / {mean_sd(asr)} ({len(got)})" if got else "·")
        rows.append(row)
    return markdown_table(["attack", *(DEFENSES[d] for d in ("none", *shown))], rows)


CANDIDATE = "inversion-principal-any"  # the defense the three-seed rows decide on
STAND_INS = ("inversion-principal-either", "inversion-principal-reach", "inversion-principal")  # another rule


def candidate_cell(cells: Cells, attack: str) -> tuple[dict[str, Any], str] | None:
    """The candidate's cell for an attack and the naming rule it ran: its own, else a cell of the same split
    under another rule where `any` names, from that cell's report, the class the cell named (nothing else
    differs: the same class gives the same flagged images and the same retrained model)."""
    if (attack, CANDIDATE) in cells:
        return cells[attack, CANDIDATE], "any"
    for column in STAND_INS:
        cell = cells.get((attack, column))
        if cell is not None and any_agrees(cell["metrics"]["defense_report"]):
            return cell, cell["config"]["defense"].get("confirm", "split")
    return None


def any_agrees(report: dict[str, Any]) -> bool:
    """Whether `confirm: any` names the class a report's rule named, from its success rates, split shares
    and relabelling shares (as the report rounds them); a report without the last agrees only where
    `either` names a class, for `any` reads them only where `either` names none."""
    if "split_shares" not in report:
        return False
    rates = torch.tensor(report["success_rates"], dtype=torch.float64)
    shares = torch.tensor(report["split_shares"], dtype=torch.float64)
    relabels = report.get("relabel_shares")
    relabels = None if relabels is None else torch.tensor(relabels, dtype=torch.float64)
    chosen, _, _, named, _ = named_target(rates, shares, "any", relabels)
    if relabels is None and not named:
        return False
    return (chosen if named else None) == report["estimated_target"]


def candidate_table(seeds: dict[int, Cells]) -> str:
    """The candidate on every seed it ran: ACC / ASR, the same cell's no-defense model (the plain model it
    read), and its cost at its own pace; a cell that ran another naming rule that named the same class says
    which. Clean data is the attack `none`."""
    rows = []
    for a, name in {**ATTACKS, "none": "clean data"}.items():
        row, ran = [name], []
        for s in (0, 1, 2):
            found = candidate_cell(seeds.get(s, {}), a)
            if found is None:
                row.append("·")
                continue
            cell, rule = found
            m = cell["metrics"]
            ran.append(m)
            paced = own_pace_cost(cell)
            cost = "resumed: not timed" if resumed(cell) else f"{paced[1]:.2f}x" if paced else "no retraining"
            cost += f"; ran `{rule}`" if rule != "any" else ""
            both = (lambda acc, asr: pct(acc)) if a == "none" else (lambda acc, asr: f"{pct(acc)} / {pct(asr)}")
            row.append(f"{both(m['acc'], m['asr'])} ({both(m['backdoored_acc'], m['backdoored_asr'])}; {cost})")
        if not ran:
            continue
        acc = mean_sd([m["acc"] for m in ran])
        row.append(f"{acc} ({len(ran)})" if a == "none" else f"{acc} / {mean_sd([m['asr'] for m in ran])} ({len(ran)})")
        # the shipping bar's terms: the largest loss against the plain model of the same cell, the largest ASR
        drop = max(m["backdoored_acc"] - m["acc"] for m in ran)
        row.append(pct(drop) if a == "none" else f"{pct(drop)} / {pct(max(m['asr'] for m in ran))}")
        rows.append(row)
    header = ["attack", "seed 0", "seed 1", "seed 2", "over seeds (n)", "worst: points lost / ASR"]
    return markdown_table(header, rows) if rows else "(the candidate has not run)"


SIX = ("badnets", "blend", "sig", "wanet", "bpp", "input-aware")  # the shipping bar's attacks


def stress_table(paths: list[Path]) -> str:
    """The candidate's seed-0 cells outside the shipping bar's six attacks at their own rate into class 0:
    another rate or target, and the attacks the bar leaves out. ACC / ASR, the plain model it read, the
    class it named and by which test, its split against the truth, its cost at its own pace."""
    rows = []
    for c in trainings(paths):
        cfg, m = c["config"], c["metrics"]
        attack, rate, target = cfg["attack"]["name"], cfg.get("poison_rate"), cfg.get("target", 0)
        if cfg["seed"] != 0 or variant(cfg["defense"]) != CANDIDATE or attack == "none":
            continue
        if attack in SIX and own_setting(cfg):
            continue
        report = m.get("defense_report") or {}
        setting = f"{ATTACKS.get(attack, attack)}, {rate:g}" + (f", into class {target}" if target else "")
        guess = report.get("estimated_target")
        named = "nothing" if guess is None else f"class {guess} ({report.get('named_by')})"
        split = report.get("split") or {}
        text = f"{split['flagged']:,}, P {pct(split['precision'])} R {pct(split['recall'])}" if split else "·"
        paced = own_pace_cost(c)
        cost = "resumed: not timed" if resumed(c) else f"{paced[1]:.2f}x" if paced else "no retraining"
        plain = f"{pct(m['backdoored_acc'])} / {pct(m['backdoored_asr'])}"
        rows.append([setting, plain, f"{pct(m['acc'])} / {pct(m['asr'])}", named, text, cost])
    header = ["attack, rate", "no defense (the model read)", "recommended", "named", "flagged, P, R", "cost"]
    return markdown_table(header, rows) if rows else "(no stress cell has run)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grids", type=Path, nargs="+", help="exported grids (JSON), merged in order")
    args = parser.parse_args()
    for path in args.grids:
        if not path.is_file():
            parser.error(f"{path}: no such file")
    seeds = load(args.grids)
    cells = seeds.get(0, {})
    print(results_table(cells), end="\n\n")
    print(split_table(cells), end="\n\n")
    print(spend_tables(cells), end="\n\n")
    print(seeds_table(seeds), end="\n\n")
    print(candidate_table(seeds), end="\n\n")
    print(stress_table(args.grids))


if __name__ == "__main__":
    main()
