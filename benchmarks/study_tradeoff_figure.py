"""The study's variants on one picture: each EigenGuard variant's cost of clean accuracy against the ASR it
leaves (per-sample protocol), per attack, with the study's goal (cost <= 3 points, ASR <= 10%) as a box.

    python benchmarks/study_tradeoff_figure.py benchmarks/results/study-queue.json \
        benchmarks/results/study-filter.json --out docs/results/study-tradeoff.png

Reads exported grids (`eigenguard export`), any number, and keeps their finished cells at the quick
profile's scale (width 0.25, 12 epochs, 20,000 training images) with no defense or EigenGuard. A variant
is named by the guard options it sets away from the paper's defaults (`paper` when it sets none); its seeds
are averaged (bars: the sample standard deviation where there are two or more). The cost is the mean
no-defense ACC of the same attack over its seeds minus the variant's mean ACC, so every variant of an
attack is measured against the same reference. Prints the points as a table, too.
"""

import argparse
import statistics
import textwrap
from pathlib import Path
from typing import Any

from figure_io import (
    GOAL_ASR,
    GOAL_COST,
    PAPER_GUARD,
    exported_cells,
    option_changes,
    png_bytes,
    rows_of_attacks,
    setting_label,
)

from eigenguard.run_directory import atomic_write_bytes

QUICK_SCALE = {"epochs": 12, "width": 0.25}  # with 20,000 training images: the quick profile


def variant_label(defense: dict[str, Any]) -> str:
    if defense["name"] == "none":
        return "no defense"
    label = option_changes(defense, PAPER_GUARD) or "paper"
    return label + (" (uses clean data)" if defense.get("anchors") == "clean" else "")


def points(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per (attack, variant): means and standard deviations over its seeds, and its cost."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        c, m = cell["config"], cell["metrics"]
        if cell["status"] != "done" or c["dataset"] != "fashion-mnist" or m.get("train_images") != 20000:
            continue
        if any(c[k] != v for k, v in QUICK_SCALE.items()) or c["defense"]["name"] not in ("none", "eigenguard"):
            continue
        runs.setdefault((setting_label(c), variant_label(c["defense"])), []).append(m)
    out = []
    for (attack, variant), metrics in sorted(runs.items()):
        plain = runs.get((attack, "no defense"))
        if variant == "no defense" or not plain:
            continue
        acc, asr = [m["acc"] for m in metrics], [m["asr"] for m in metrics]
        mean_acc, mean_asr = statistics.mean(acc), statistics.mean(asr)
        reference = statistics.mean(m["acc"] for m in plain)
        cost = 100 * (reference - mean_acc)
        out.append(
            {
                "attack": attack,
                "variant": variant,
                "seeds": len(metrics),
                "acc": mean_acc,
                "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "asr": mean_asr,
                "asr_std": statistics.stdev(asr) if len(asr) > 1 else 0.0,
                "acc_none": reference,
                "none_seeds": len(plain),
                "cost_points": cost,
                "meets_goal": cost <= GOAL_COST and mean_asr <= GOAL_ASR,
            }
        )
    return out


def spread(mean: float, std: float) -> str:
    """A fraction as a percentage, with its standard deviation where there is one."""
    return f"{100 * mean:.1f}" + (f" +- {100 * std:.1f}" if std else "") + "%"


PANELS_PER_ROW = 4  # an attack per panel; more attacks wrap onto further rows, so the page stays readable


def figure(rows: list[dict[str, Any]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    attacks = sorted({r["attack"] for r in rows})
    columns = min(len(attacks), PANELS_PER_ROW)
    lines = -(-len(attacks) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, 4.0 * lines), dpi=150, squeeze=False,
                             constrained_layout=True)  # fmt: skip
    for ax in axes.flat[len(attacks) :]:
        ax.set_visible(False)  # the last row's empty places
    top = max(r["cost_points"] + 100 * r["acc_std"] for r in rows) * 1.15
    for ax, attack in zip(axes.flat, attacks, strict=False):
        ax.add_patch(Rectangle((0, 0), 100 * GOAL_ASR, GOAL_COST, color="tab:green", alpha=0.15, linewidth=0))
        ax.annotate("goal", (1, GOAL_COST / 2), fontsize=6, color="tab:green", va="center")
        mine = sorted((r for r in rows if r["attack"] == attack), key=lambda r: (r["cost_points"], r["asr"]))
        for i, r in enumerate(mine):
            ax.errorbar(100 * r["asr"], r["cost_points"], xerr=100 * r["asr_std"], yerr=100 * r["acc_std"],
                        marker="o" if r["variant"] == "paper" else "s", markersize=4, capsize=2,
                        color="tab:red" if r["variant"] == "paper" else "tab:blue", linewidth=0.8)  # fmt: skip
            label = r["variant"] + (f" ({r['seeds']} seeds)" if r["seeds"] > 1 else "")
            ax.annotate(
                label,
                (100 * r["asr"], r["cost_points"]),
                fontsize=5.5,
                xytext=(4, 3 if i % 2 else -7),
                textcoords="offset points",
                ha="right" if r["asr"] > 0.6 else "left",
            )  # neighbours apart
        ax.set_xlim(-3, 103)
        ax.set_ylim(min(0.0, *(r["cost_points"] for r in rows)) - 0.5, top)
        ax.set_xlabel("ASR with the guard, per-sample (%)")
        ax.set_ylabel("ACC cost against no defense (points)")
        ax.set_title(textwrap.fill(attack, 70), fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", type=Path, help="grids written by `eigenguard export`")
    p.add_argument("--attacks", help="comma-separated attack labels to draw (default: every attack with points)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args()
    rows = rows_of_attacks(points(exported_cells(args.exports)), args.attacks, None, "points")
    if not rows:
        raise SystemExit("no attack has both a no-defense cell and an EigenGuard cell at the quick profile's scale")
    print("| attack | variant | seeds | ACC | ASR | ACC cost (points) | meets the goal |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        acc, asr = spread(r["acc"], r["acc_std"]), spread(r["asr"], r["asr_std"])
        goal = "yes" if r["meets_goal"] else "no"
        print(f"| {r['attack']} | {r['variant']} | {r['seeds']} | {acc} | {asr} | {r['cost_points']:.1f} | {goal} |")
    title = "EigenGuard's variants: accuracy cost against ASR (Fashion-MNIST, quick profile)"
    atomic_write_bytes(args.out, figure(rows, title))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
