"""The benchmark scripts that travel to a GPU machine run end to end here, at tiny sizes, on CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_gpu_suite_smoke(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--dataset", "mnist"]
    proc = subprocess.run([*command, "--data-root", str(mnist_root), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    assert record["smoke"] and list(record["parts"]) == ["pipeline", "guard_step", "filter", "inference", "pair"]
    parts = record["parts"]
    assert all(p["ok"] for p in parts.values()), {n: p.get("error") for n, p in parts.items()}
    assert parts["pipeline"]["device_train_images_per_s"] > 0 and parts["pipeline"]["loader_train_images_per_s"] > 0
    assert parts["guard_step"]["guarded_step_s"] > 0 and parts["filter"]["speedup"] > 0
    assert parts["inference"]["per_sample_ratio"] > 0 and parts["inference"]["per_sample_eigh_ratio"] > 0
    assert 0 <= parts["pair"]["eigenguard"]["acc"] <= 1 and parts["pair"]["none"]["train_seconds"] > 0


def test_gpu_suite_refuses_an_unknown_part(tmp_path: Path) -> None:
    script = str(ROOT / "benchmarks" / "gpu_suite.py")
    proc = subprocess.run(
        [sys.executable, script, "--parts", "pipeline,warp"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2 and "unknown parts warp; allowed: pipeline" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_study_scale_figure_pairs_rungs_and_counts_compute(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import study_scale_figure as figure
    finally:
        sys.path.pop(0)
    base = {"dataset": "fashion-mnist", "seed": 0, "model": "resnet18", "image_size": 32, "attack": {"name": "badnets"}}

    def cell(key: str, defense: dict, acc: float, asr: float, **config: object) -> dict:
        c = {**base, "epochs": 12, "width": 0.25, "defense": defense, **config}
        return {"key": key, "status": "done", "config": c, "metrics": {"acc": acc, "asr": asr, "train_images": 20000}}

    guard, other = dict(figure.PAPER_GUARD), {**figure.PAPER_GUARD, "floor": 0.1}
    cells = [
        cell("a", {"name": "none"}, 0.9, 1.0),
        cell("b", guard, 0.75, 0.08),
        cell("c", other, 0.8, 0.4),  # a variant: not the paper's guard, left out
        cell("d", {"name": "none"}, 0.91, 1.0, width=0.5),
        cell("e", guard, 0.86, 0.05, width=0.5),
        cell("f", guard, 0.7, 0.1, epochs=24),  # no no-defense partner: left out
    ]
    rows = figure.pairs(cells)
    assert [r["rung"] for r in rows] == ["w0.25 20k e12", "w0.5 20k e12"]
    assert abs(rows[0]["cost_points"] - 15.0) < 1e-9 and rows[0]["compute"] == 1.0
    assert 3.5 < rows[1]["compute"] < 4.1  # twice the width: about four times the multiply-accumulates
    assert [r["knob"] for r in rows] == ["", "width"]  # the quick profile's rung starts every knob's line
    both = [
        cell("g", {"name": "none"}, 0.9, 1.0, epochs=24, width=0.5),
        cell("h", guard, 0.8, 0.1, epochs=24, width=0.5),
    ]
    assert [r["knob"] for r in figure.pairs(both)] == ["epochs+width"]
    png = figure.figure(rows, "test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # one attack's two forms are two attacks: the multi-trigger patch cells never pair with its blend cells
    patch, blend = {"name": "multi-trigger"}, {"name": "multi-trigger", "kind": "blend"}
    forms = [cell("p", {"name": "none"}, 0.9, 1.0, attack=patch), cell("q", guard, 0.8, 0.1, attack=blend)]
    assert figure.pairs(forms) == []
    forms += [cell("r", {"name": "none"}, 0.89, 1.0, attack=blend)]
    assert [r["attack"] for r in figure.pairs(forms)] == ["multi-trigger (kind=blend)"]

    # the command line draws question 1's attacks unless told otherwise, and refuses an attack with no pairs
    sig = [{**c, "key": c["key"] + "-sig", "config": {**c["config"], "attack": {"name": "sig"}}} for c in cells[:2]]
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"cells": cells + sig}))
    script = [sys.executable, str(ROOT / "benchmarks" / "study_scale_figure.py"), str(export)]
    drawn = subprocess.run([*script, "--out", str(tmp_path / "a.png")], capture_output=True, text=True)
    assert drawn.returncode == 0 and "| badnets |" in drawn.stdout and "| sig |" not in drawn.stdout
    refused = subprocess.run(
        [*script, "--attacks", "cifar", "--out", str(tmp_path / "b.png")], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "cifar" in refused.stderr and "allowed: badnets, sig" in refused.stderr
    assert not (tmp_path / "b.png").exists()


def test_study_tradeoff_figure_names_variants_and_measures_cost_against_the_seeds_mean() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import study_tradeoff_figure as figure
    finally:
        sys.path.pop(0)
    paper = dict(figure.PAPER_GUARD)
    base = {"dataset": "fashion-mnist", "epochs": 12, "width": 0.25, "attack": {"name": "badnets"}}

    def cell(key: str, defense: dict, acc: float, asr: float, images: int = 20000, **config: object) -> dict:
        c = {**base, "defense": defense, **config}
        return {"key": key, "status": "done", "config": c, "metrics": {"acc": acc, "asr": asr, "train_images": images}}

    cells = [
        cell("a", {"name": "none"}, 0.90, 1.0),
        cell("b", {"name": "none"}, 0.92, 1.0, seed=1),
        cell("c", paper, 0.75, 0.08),
        cell("d", paper, 0.77, 0.04, seed=1),
        cell("e", {**paper, "floor": 0.1, "k": 40}, 0.895, 0.05),
        cell("f", {**paper, "anchors": "clean"}, 0.8, 0.5),
        cell("g", paper, 0.5, 0.5, epochs=24),  # another scale: left out
        cell("h", paper, 0.5, 0.5, images=60000),  # another training split: left out
        cell("i", paper, 0.8, 0.9, attack={"name": "blend"}),  # no no-defense blend cell: no point
        {**cell("j", paper, 0.1, 0.1), "status": "failed"},
    ]
    rows = {r["variant"]: r for r in figure.points(cells)}
    assert set(rows) == {"paper", "k=40, floor=0.1", "anchors=clean (uses clean data)"}
    p = rows["paper"]
    assert p["seeds"] == 2 and abs(p["acc"] - 0.76) < 1e-9 and abs(p["asr"] - 0.06) < 1e-9
    assert abs(p["cost_points"] - 15.0) < 1e-9 and p["none_seeds"] == 2 and p["acc_std"] > 0 and not p["meets_goal"]
    assert rows["k=40, floor=0.1"]["meets_goal"] and abs(rows["k=40, floor=0.1"]["cost_points"] - 1.5) < 1e-9
    png = figure.figure(list(rows.values()), "test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # a cell trained otherwise (here without the crop) is its own setting, never one more seed of the attack
    plain = [cell("k", {"name": "none"}, 0.9, 1.0, augment=False), cell("l", paper, 0.8, 1.0, augment=False)]
    clb = {"name": "clb", "epsilon": 0.0}
    plain += [cell("m", {"name": "none"}, 0.85, 0.8, attack=clb), cell("n", paper, 0.8, 1.0, attack=clb)]
    sig = {"attack": {"name": "sig"}, "poison_rate": 0.8}  # SIG's own rate is the profile's, not a variant
    plain += [cell("o", {"name": "none"}, 0.9, 0.9, **sig), cell("p", paper, 0.8, 0.2, **sig)]
    rows = {(r["attack"], r["variant"]): r for r in figure.points(cells + plain)}
    assert rows["badnets", "paper"]["seeds"] == 2 and rows["badnets; augment=False", "paper"]["seeds"] == 1
    assert abs(rows["badnets; augment=False", "paper"]["cost_points"] - 10.0) < 1e-9
    assert ("clb (epsilon=0)", "paper") in rows and ("sig", "paper") in rows


def test_figure_attack_choice_refuses_what_has_no_rows(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from figure_io import rows_of_attacks
    finally:
        sys.path.pop(0)
    rows = [{"attack": "badnets"}, {"attack": "sig"}]
    assert rows_of_attacks(rows, None, None, "points") == rows
    assert rows_of_attacks(rows, None, ("badnets", "blend"), "points") == rows[:1]
    assert rows_of_attacks(rows, "sig", ("badnets",), "points") == rows[1:]
    for requested, default in (("sig,cifar", None), (None, ("blend",))):
        with pytest.raises(SystemExit) as stop:
            rows_of_attacks(rows, requested, default, "points")
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().endswith("allowed: badnets, sig")


@pytest.mark.slow
def test_table3_tables_prints_brackets_protocols_and_spend_per_machine(tmp_path: Path) -> None:
    def cell(
        attack: str, defense: str, acc: float, asr: float, seconds: float, ratio: float | None, **m: object
    ) -> dict:
        metrics = {"acc": acc, "asr": asr, "defense_seconds": seconds, "defense_cost_vs_plain": ratio, **m}
        cpu = "Intel Xeon" if attack == "adap-patch" else "AMD EPYC"  # same capability, another CPU model
        metrics["environment"] = {"cpu": cpu, "cpu_capability": "AVX512" if attack != "sig" else "AVX2"}
        labels = {"attack": attack, "defense": defense, "seed": "0"}
        return {"labels": labels, "status": "done", "metrics": metrics, "finished_at": "2026-12-05T10:00:00+00:00"}

    cells = [
        cell("badnets", "none", 0.9, 1.0, 300, None),
        cell("badnets", "clp", 0.893, 0.78, 0.031, 0.0001, backdoored_acc=0.898, backdoored_asr=0.985),
        cell("badnets", "eigenguard", 0.742, 0.083, 600, 2.0, acc_paper=0.741, asr_paper=0.07),
        cell("badnets", "ft", 0.881, 0.835, 12.4, 0.04, backdoored_acc=0.9, backdoored_asr=0.988),
        cell("sig", "asd", 0.7, 0.1, 1234.6, None),  # another machine: its own spend table
        {**cell("wanet", "ss", 0.8, 0.7, 320, 0.9), "finished_at": "2026-12-06T01:00:00+00:00"},  # the next day
        {**cell("wanet", "abl", 0.8, 0.9, 330, 1.0), "finished_at": "2026-12-07T01:00:00+00:00"},  # a day not asked
        {**cell("blend", "ss", 0.1, 0.1, 1, 1.0), "status": "failed"},
        cell("adap-patch", "d-br", 0.8, 0.2, 540, 1.5, backdoored_acc=0.85, backdoored_asr=0.03),
    ]
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"grid": "table3-quick-all", "cells": cells}))
    script = [sys.executable, str(ROOT / "benchmarks" / "table3_tables.py"), str(grid)]
    proc = subprocess.run(
        [*script, "--spend", "AVX512:2026-12-05,2026-12-06", "--spend", "AVX2:2026-12"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("8 finished cells")
    row = "| BadNets | 90.0 / 100.0 | · | · | 89.3 / 78.0 [89.8 / 98.5] | · | · | · | 74.2 / 8.3 (74.1 / 7.0) |"
    assert row in out and "| Blend | · | · | · |" in out  # the failed SS cell is not a result
    assert "| BadNets | 88.1 / 83.5 [90.0 / 98.8] | · | · | · |" in out
    assert "| CLP | 0.03 s |" in out and "| EigenGuard | 600 s, 2.00x |" in out and "| FT | 12 s, 0.04x |" in out
    spend = out.split("Spend on AMD EPYC, AVX512, 2026-12-05, 2026-12-06:")[1]
    avx512, rest = spend.split("Spend on Intel Xeon, AVX512, 2026-12-05, 2026-12-06:")
    intel, avx2 = rest.split("Spend on AMD EPYC, AVX2, 2026-12:")
    assert "| SS | · | 320 s, 0.90x |" in avx512 and "ABL" not in avx512  # 2026-12-07 was not asked for
    assert "Adap-Patch" not in avx512 and "| defense | Adap-Patch |" in intel and "| D-BR | 540 s, 1.50x |" in intel
    assert "| defense | SIG |" in avx2 and "| ASD | 1,235 s |" in avx2 and "CLP" not in avx2

    for bad in ("AVX512", "AVX512:2026-12-05,"):
        refused = subprocess.run([*script, "--spend", bad], capture_output=True, text=True)
        assert refused.returncode == 2 and f"{bad!r}: expected CAPABILITY:DAY" in refused.stderr


def test_clean_model_tables_merge_variants_splits_and_spend(tmp_path: Path) -> None:
    def cell(
        attack: str,
        defense: dict,
        acc: float,
        asr: float,
        report: dict,
        cpu: str = "AMD EPYC",
        seed: int = 0,
        rate: float = 0.1,
        **m: object,
    ) -> dict:
        metrics = {"acc": acc, "asr": asr, "defense_seconds": 600.0, "defense_report": report, **m}
        metrics["environment"] = {"cpu": cpu}
        log = [{"phase": "train", "epoch_seconds": s} for s in ("50", "50", "150")]  # one slow epoch
        config = {"attack": {"name": attack}, "defense": defense, "target": 0, "seed": seed, "poison_rate": rate}
        config |= {"train_subset": 20000, "epochs": 12}
        return {"labels": {}, "status": "done", "config": config, "metrics": metrics, "log": log}

    sieve_report = {"split": {"flagged": 2100, "precision": 0.9, "recall": 0.95}, "estimated_target": 0}
    main = [
        cell("badnets", {"name": "none"}, 0.9, 1.0, {}),
        cell(
            "badnets",
            {"name": "pdb", "source": "training"},
            0.886,
            0.985,
            {"defensive_poisoned": 104, "defensive_images": 2000},
            plain_train_seconds=300.0,
        ),
        cell(
            "badnets",
            {"name": "sieve", "then": "none", "target": "spread"},
            0.88,
            0.02,
            {**sieve_report, "loss_auroc": 0.9},
        ),
        {**cell("blend", {"name": "cbd"}, 0.1, 0.1, {}), "status": "failed"},
    ]
    widened = {"name": "sieve", "target": "bimodal", "rule": "target-outliers", "widen": "trigger", "sieve_epochs": 6}
    queue = [
        cell(
            "badnets",
            {"name": "pdb", "source": "clean"},
            0.894,
            0.0,
            {"defensive_poisoned": 0, "defensive_images": 1937},
            cpu="Intel Xeon",
        ),
        cell("badnets", {"name": "sieve"}, 0.864, 0.978, {**sieve_report, "estimated_target": 6, "loss_auroc": 0.897}),
        cell(
            "badnets",
            {"name": "sieve", "target": "bimodal", "rule": "target-outliers", "then": "none"},
            0.89,
            0.01,
            {**sieve_report, "loss_auroc": 0.897, "outlier_side": "high"},
        ),
        cell("badnets", widened, 0.88, 0.007, {**sieve_report, "loss_auroc": 0.899, "outlier_side": "high"}),
        # a second seed of no defense and of the 6-epoch widened sieve, and a stress cell at 1% (not seed 0's)
        cell("badnets", {"name": "none"}, 0.8, 0.9, {}, seed=1),
        cell("badnets", widened, 0.86, 0.009, {**sieve_report, "loss_auroc": 0.9, "outlier_side": "high"}, seed=1),
        cell("badnets", {"name": "sieve", "target": "bimodal", "rule": "target-outliers"}, 0.5, 0.5, {}, rate=0.01),
    ]
    # trigger inversion, principal split, cleanest split named: its plain run timed in another hour (900 s) is
    # no yardstick; its own retraining pace is (40 s an epoch for 15,000 images: 640 s for the plain run)
    reach = {"name": "inversion", "widen": "trigger", "along": "principal", "confirm": "reach"}
    # its report: class 0 reached 4x any other and the cleanest split, so `either` names it too and the cell
    # stands for the candidate (`confirm: either`)
    found = {"success_rates": [0.8] + [0.2] * 9, "split_shares": [0.9] + [0.6] * 9}
    inverted = cell("badnets", reach, 0.887, 0.01, {**sieve_report, **found, "trained_on": 15000})
    inverted["metrics"] |= {"plain_train_seconds": 900.0, "epochs": 12, "train_images": 20000}
    inverted["metrics"] |= {"backdoored_acc": 0.9, "backdoored_asr": 1.0}
    inverted["log"] = [{"phase": "retrain", "epoch_seconds": s} for s in ("40", "40", "120")]
    # WaNet: class 0 reached 4x any other but not the cleanest split; `reach` named nothing, `either` would
    # name class 0: the cell is no stand-in; the candidate's own cell on seed 1 is
    missed = {"success_rates": [0.8] + [0.2] * 9, "split_shares": [0.6] + [0.9] + [0.6] * 8, "estimated_target": None}
    nothing = {"split": {"flagged": 0, "precision": 0.0, "recall": 0.0}}
    kept = cell("wanet", reach, 0.88, 0.585, {**missed, **nothing})
    either = cell("wanet", {**reach, "confirm": "either"}, 0.87, 0.02, {**sieve_report, **missed}, seed=1)
    either["metrics"]["defense_report"]["estimated_target"] = 0
    for c in (kept, either):
        c["metrics"] |= {"backdoored_acc": 0.88, "backdoored_asr": 0.585, "epochs": 12, "train_images": 20000}
    # reading a 4-epoch model it trains itself: its 600 s hold that training, no plain run is added to them
    short = cell(
        "badnets", {**reach, "confirm": "either", "read_epochs": 4}, 0.885, 0.01, inverted["metrics"]["defense_report"]
    )
    short["metrics"]["defense_report"] = {**inverted["metrics"]["defense_report"], "reader": {"epochs": 4}}
    short["metrics"] |= {"epochs": 12, "train_images": 20000}
    short["log"] = [{"phase": "read", "epoch_seconds": "40"}] * 4 + inverted["log"]
    # clean data under `either`: nothing named and no relabelling shares reported, so no stand-in for `any`;
    # Input-aware under `any`: the model's tests name nothing, the pixel neighbours the T-shirts
    unnamed = {"success_rates": [0.2] * 10, "split_shares": [0.6] * 10, "estimated_target": None}
    clean = cell("none", {**reach, "confirm": "either"}, 0.9, None, {**unnamed, **nothing}, rate=0.0)
    pixels = {**unnamed, "relabel_shares": [0.07] + [0.01] * 9, "estimated_target": 0}
    named = cell("input-aware", {**reach, "confirm": "any"}, 0.89, 0.012, {**sieve_report, **pixels}, seed=1)
    for c in (clean, named):
        c["metrics"] |= {"backdoored_acc": 0.9, "backdoored_asr": 0.8, "epochs": 12, "train_images": 20000}
    # killed and resumed: its wall time misses the first process's, so no cost is shown
    again = {**short, "config": {**short["config"], "attack": {"name": "bpp"}}}
    again["metrics"] = {**short["metrics"], "resumed": True}
    # recorded before runs said so: its own fits' epochs (360 s) outlast its wall time, as only a resumed run's do
    old = {**short, "config": {**short["config"], "attack": {"name": "sig"}, "poison_rate": 0.8}}
    old["metrics"] = {**short["metrics"], "defense_seconds": 300.0}
    # the candidate at 25% poisoning: a stress cell, in its own table only
    heavy = cell("badnets", {**reach, "confirm": "any"}, 0.86, 0.03, {**sieve_report, "named_by": "reach"}, rate=0.25)
    heavy["metrics"]["defense_report"]["trained_on"] = 15000
    heavy["metrics"] |= {"backdoored_acc": 0.89, "backdoored_asr": 1.0, "epochs": 12, "train_images": 20000}
    heavy["log"] = inverted["log"]
    queue += [inverted, kept, either, short, clean, named, again, old, heavy]
    paths = []
    for name, cells in (("main", main), ("queue", queue)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"grid": name, "cells": cells}))
    script = [sys.executable, str(ROOT / "benchmarks" / "clean_model_tables.py")]
    proc = subprocess.run([*script, *map(str, paths)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "| attack | none | PDB | PDB, clean images | sieve, rate rule | sieve | outlier sieve |" in out
    assert "| BadNets | 90.0 / 100.0 | 88.6 / 98.5 | 89.4 / 0.0 | 86.4 / 97.8 | 88.0 / 2.0 | 89.0 / 1.0 |" in out
    assert "AUROC 0.897, high side |" in out and "| outlier sieve, widened, 6-epoch guard |" in out
    assert "| 89.0 / 1.0 | 88.0 / 0.7 |" in out  # its own column beside the 12-epoch outlier sieve
    assert "Blend" not in out  # its only cell failed
    assert "104 of 2000" in out and "0 of 1937" in out
    assert "2,100 flagged, P 90.0 R 95.0, AUROC 0.897 (wrong: 6)" in out and "AUROC 0.900 |" in out
    amd = out.split("Spend on AMD EPYC:")[1].split("Spend on Intel Xeon:")[0]
    assert "| BadNets | 600 s, 2.00x (0.50x) |" in amd  # 3 epochs at the 50 s median: 150 s over 300 s of plain
    assert "| the same, the cleanest split named |" in out and "| 88.7 / 1.0 |" in out
    assert "| 1,240 s, 1.94x |" in amd  # 600 s of its own over 640 s of plain training at its pace
    assert "| the same, `either`, reading a 4-epoch model |" in out and "| 600 s, 0.94x |" in amd  # 600 s over 640 s
    assert "| BppAttack | · | · | · | · | · | · | resumed: not timed |" in amd
    assert "| SIG | · | · | · | · | · | · | resumed: not timed |" in amd
    candidate = out.split("| attack | seed 0 | seed 1 | seed 2 | over seeds (n) | worst: points lost / ASR |")[1]
    assert (
        "| BadNets | 88.7 / 1.0 (90.0 / 100.0; 1.94x; ran `reach`) | · | · | 88.7 +- 0.0 / 1.0 +- 0.0 (1) |"
        in candidate
    )
    assert "| WaNet | · | 87.0 / 2.0 (88.0 / 58.5; no retraining; ran `either`) | · |" in candidate
    assert "| Input-aware | · | 89.0 / 1.2 (90.0 / 80.0; no retraining) | · |" in candidate  # its own rule
    assert "| 88.7 +- 0.0 / 1.0 +- 0.0 (1) | 1.3 / 1.0 |" in candidate  # 90.0 - 88.7 points, 1.0% ASR
    assert "clean data" not in candidate
    intel = out.split("Spend on Intel Xeon:")[1]
    assert "| BadNets | 600 s |" in intel  # no plain run on that machine: no ratio
    seeds = out.split("| attack | none | outlier sieve, widened, 6-epoch guard |")[1]
    assert "| BadNets | 85.0 +- 7.1 / 95.0 +- 7.1 (2) | 87.0 +- 1.4 / 0.8 +- 0.1 (2) |" in seeds
    assert "50.0" not in out  # the 1% cell is not the quick profile's setting
    stress = out.split("| attack, rate | no defense (the model read) | recommended | named | flagged, P, R | cost |")[1]
    assert "| BadNets, 0.25 | 89.0 / 100.0 | 86.0 / 3.0 | class 0 (reach) | 2,100, P 90.0 R 95.0 | 1.94x |" in stress
    assert out.count("86.0 / 3.0") == 1 and "Input-aware" not in stress  # seed 1's cell: not a stress cell
    missing = subprocess.run([*script, str(tmp_path / "nowhere.json")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_detection_tables_read_scans_of_an_export(tmp_path: Path) -> None:
    def scan(attack: str, detector: str, auroc: float | None = None, named: int | None = 0) -> dict:
        metrics = {"acc": 0.9, "asr": 1.0, "flagged": 300, "seconds": {"detector": 42.4},
                   "target": {"class": named, **({"correct": named == 0} if auroc is not None else {})}}  # fmt: skip
        if auroc is not None:
            metrics["truth"] = {"auroc": auroc, "tpr_at_5fpr": 0.91, "precision": 0.5, "recall": 0.75}
        config = {"attack": {"name": attack}, "detector": {"name": detector}, "seed": 0}
        return {"status": "done", "config": config, "metrics": metrics}

    cells = [scan("badnets", "ss", 0.987), scan("blend", "spectre", 0.5, named=3), scan("none", "ac", named=None)]
    recommended = scan("badnets", "inversion", 0.999)
    recommended["config"]["detector"] |= {"along": "principal", "confirm": "reach"}
    trousers = scan("badnets", "inversion", 0.111)  # another target class: not this table's setting
    trousers["config"]["target"] = 1
    halved = scan("badnets", "inversion", 0.990)  # half the inversion's steps: a column of its own
    halved["config"]["detector"] |= {"along": "principal", "confirm": "reach", "steps": 30}
    cells += [scan("badnets", "inversion", 0.998), recommended, trousers, halved]
    cells.append(
        {
            "status": "done",
            "config": {"attack": {"name": "badnets"}, "detector": {"name": "none"}, "seed": 0},
            "metrics": {"acc": 0.9},
        }
    )  # fmt: skip  (a training cell: not a scan)
    path = tmp_path / "detection.json"
    path.write_text(json.dumps({"grid": "detection-quick", "cells": cells}))
    script = [sys.executable, str(ROOT / "benchmarks" / "detection_tables.py"), str(path)]
    proc = subprocess.run(script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    header = "| attack | SS | AC | SPECTRE | inversion, direction (ours) | inversion, principal, reach (ours) |"
    assert header + " the same, 30 steps |" in out and "ABL" not in out  # only the detectors that ran
    assert "| BadNets | 0.987 / 91% | · | · | 0.998 / 91% | 0.999 / 91% | 0.990 / 91% |" in out
    assert "| BadNets | 50 / 75 | · |" in out and "| BadNets | right, 42 s |" in out
    assert "| Blend | · | · | wrong (3), 42 s |" in out
    assert "| clean data | · | 300 flagged |" in out and "| clean data | · | none, 42 s |" in out
    assert "0.111" not in out
    headline = out.split("AUROC / TPR at 5% FPR\n")[0]  # its defaults' column: the principal split's scan
    assert "| attack | SS | AC | SPECTRE | trigger inversion (ours) |" in headline
    assert "| BadNets | 0.987 / 91%, right | · | · | 0.999 / 91%, right |" in headline
