"""The README's quick-profile tables. Every row is one `eigenguard train --profile quick ...` run.

--table ablation: "EigenGuard results", no defense vs EigenGuard and an ablation of EigenGuard's open choices.
--table attacks: every attack, no defense vs EigenGuard (per-sample protocol).
--table defenses: BadNets and Blend against every defense (per-sample protocol).

    python benchmarks/quick_tables.py --table ablation           # all rows, ~100 min on 2 CPU cores
    python benchmarks/quick_tables.py --table attacks --only none-sig guard-sig

Runs are resumable: a row whose run directory already holds metrics.json is read, not re-run. Results go
to bench-results/quick-<table>/ (one run directory per row, results.json, table.md).
"""

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from eigenguard import resolve_config, train

GUARD = {"defense": "eigenguard"}
# (row name, what differs from the quick profile). eval_every=12: ACC/ASR only after the last epoch.
ABLATION: list[tuple[str, dict[str, Any]]] = [
    ("guard-badnets", {**GUARD, "attack": "badnets"}),
    ("none-blend", {"attack": "blend"}),
    ("guard-blend", {**GUARD, "attack": "blend"}),
    ("k5", {**GUARD, "k": 5}),
    ("k40", {**GUARD, "k": 40}),
    ("k10", {**GUARD, "k": 10}),
    ("history-zeros", {**GUARD, "history_init": "zeros"}),
    ("grad-full", {**GUARD, "guard_grad": "full"}),
    ("no-lowest-loss", {**GUARD, "lowest_loss_samples": 0}),
    ("no-lowest-loss-blend", {**GUARD, "attack": "blend", "lowest_loss_samples": 0}),
    ("at-stage2", {**GUARD, "guard_at": "stage2"}),
    ("none-badnets", {"attack": "badnets"}),
]
# Every attack at its defaults (poison rate: 10% of the training set; 80% of the target class for sig, clb).
ATTACK_NAMES = ("badnets", "badnets-all2all", "blend", "sig", "clb", "wanet", "multi-trigger")
STANDARD = {"surrogate_training": "standard"}
ADV16 = {"surrogate_epsilon": 16 / 255}
ADV8 = {"surrogate_epsilon": 8 / 255}
EPS32_ADV8 = {"epsilon": 32 / 255, **ADV8}  # Turner et al.'s larger budget, the default 8/255 surrogate
ATTACKS_TABLE = [
    *[(f"none-{a}", {"attack": a}) for a in ATTACK_NAMES],
    *[(f"guard-{a}", {**GUARD, "attack": a}) for a in ATTACK_NAMES],
    # all-to-all is not learned in 12 epochs (56% ASR): the same run with twice the epochs
    ("none-badnets-all2all-e24", {"attack": "badnets-all2all", "epochs": 24}),
    ("guard-badnets-all2all-e24", {**GUARD, "attack": "badnets-all2all", "epochs": 24}),
    # CLB with a surrogate adversarially trained at 16/255, the attack's own budget (default: half of it)
    ("none-clb-adv16", {"attack": "clb", "attack_options": ADV16}),
    # Turner et al.'s larger budget with the default surrogate (adversarially trained at 8/255, cached)
    ("none-clb-eps32", {"attack": "clb", "attack_options": EPS32_ADV8}),
    # ... and with every target image poisoned and no random crop (the corner trigger always whole)
    ("none-clb-eps32-all-noaug", {"attack": "clb", "attack_options": EPS32_ADV8, "poison_rate": 1.0, "augment": False}),
    (
        "guard-clb-eps32-all-noaug",
        {**GUARD, "attack": "clb", "attack_options": EPS32_ADV8, "poison_rate": 1.0, "augment": False},
    ),
    # ... and that working setting with one of its three changes undone, to see which of them matters
    ("none-clb-eps32-all", {"attack": "clb", "attack_options": EPS32_ADV8, "poison_rate": 1.0}),  # crop back on
    ("none-clb-eps32-noaug", {"attack": "clb", "attack_options": EPS32_ADV8, "augment": False}),  # 80% of class
    ("none-clb-all-noaug", {"attack": "clb", "poison_rate": 1.0, "augment": False}),  # budget back to 16/255
    # only the crop changed (the defaults otherwise), and the control without any PGD perturbation: the
    # trigger alone on 80% of class 0 (the cached 8/255 surrogate is named so it is not retrained)
    ("none-clb-noaug", {"attack": "clb", "augment": False}),
    ("none-clb-eps0-noaug", {"attack": "clb", "attack_options": {"epsilon": 0.0, **ADV8}, "augment": False}),
    # CLB with a standard-trained surrogate (the adversarially trained one is the default) is not learned,
    # at 16/255 (10% ASR) nor at Turner et al.'s larger 32/255, nor with twice the epochs
    *[
        (f"{d}-clb-standard{suffix}", {**extra, "attack": "clb", "attack_options": {**options, **STANDARD}})
        for d, extra, suffix, options in [
            ("none", {}, "", {}),
            ("guard", GUARD, "", {}),
            ("none", {}, "-eps32", {"epsilon": 32 / 255}),
            ("none", {"epochs": 24}, "-eps32-e24", {"epsilon": 32 / 255}),
        ]
    ],
]
# Issue 5's table: BadNets and Blend at 10% against every defense. The none-* rows run first and fill the
# backdoored-model cache, so the post-training defenses (ft, anp, fp, nad) and ss start from those models.
DEFENSE_NAMES = ("none", "ft", "anp", "fp", "nad", "ss", "abl", "eigenguard")
DEFENSES_TABLE = [
    (f"{d}-{a}", {"attack": a, **({"defense": d} if d != "none" else {})})
    for a in ("badnets", "blend")
    for d in DEFENSE_NAMES
] + [
    # ABL's default isolation (20% of 12 epochs = 2) ends before BadNets is learned: isolate after 6 instead
    ("abl-badnets-iso6", {"attack": "badnets", "defense": "abl", "defense_options": {"isolation_epochs": 6}}),
]
TABLES = {"ablation": ABLATION, "attacks": ATTACKS_TABLE, "defenses": DEFENSES_TABLE}


def command(overrides: dict[str, Any]) -> str:
    parts: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, dict):  # attack_options / defense_options -> repeated --attack-option k=v
            flag = key.removesuffix("s").replace("_", "-")
            parts += [f"--{flag} {k}={v}" for k, v in value.items()]
        elif isinstance(value, bool):  # --augment / --no-augment
            parts.append(f"--{'' if value else 'no-'}{key.replace('_', '-')}")
        else:
            parts.append(f"--{key.replace('_', '-')} {value}")
    flags = " ".join(parts)
    return f"eigenguard train --profile quick --eval-every 12 {flags}".strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", choices=sorted(TABLES), default="ablation")
    p.add_argument("--out", type=Path, help="default: bench-results/quick-<table>")
    p.add_argument("--only", nargs="*", help="row names to run (default: all)")
    args = p.parse_args()
    args.out = args.out or Path(f"bench-results/quick-{args.table}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, overrides in TABLES[args.table]:
        run_dir = args.out / name
        if args.only and name not in args.only and not (run_dir / "metrics.json").exists():
            continue
        if not (run_dir / "metrics.json").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished earlier attempt
            config = resolve_config({}, {"profile": "quick", "eval_every": 12, **overrides, "out": str(run_dir)})
            print(f"== {name}: {command(overrides)}", flush=True)
            train(config, progress=False)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        results.append(
            {
                "row": name,
                "command": command(overrides),
                **{
                    k: metrics.get(k)
                    for k in (
                        "acc",
                        "asr",
                        "acc_paper",
                        "asr_paper",
                        "train_seconds",
                        "total_seconds",
                        "defense_seconds",
                        "defense_cost_vs_plain",
                        "defense_report",
                    )
                },
            }
        )
        print(json.dumps(results[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [
        "| row | ACC per-sample | ASR per-sample | ACC paper | ASR paper | train s | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['row']} | {pct(r['acc'])} | {pct(r['asr'])} | {pct(r['acc_paper'])} | "
            f"{pct(r['asr_paper'])} | {r['train_seconds']:.0f} | `{r['command']}` |"
        )
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
