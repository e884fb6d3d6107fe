"""The study's question 1 as a figure: EigenGuard's cost of clean accuracy and its ASR (per-sample protocol)
against the training compute of each rung of the scale ladder.

    python benchmarks/study_scale_figure.py benchmarks/results/study-queue.json --out docs/results/study-scale.png

Reads exported grids (`eigenguard export`), any number, and pairs their finished cells by rung (epochs,
width, training images) and attack (its name and the options it sets away from their defaults, so the
multi-trigger attack's patch and blend forms are two attacks): the no-defense cell with the cell of the
paper's EigenGuard (every guard option at its default). Compute is the forward multiply-accumulates of one
image through the model, times the images trained (epochs x training images), relative to the quick
profile's (width 0.25, 12 epochs, 20,000 images); the guard's own arithmetic is left out, so the x axis is
the same for both cells of a pair. Draws question 1's ladder, BadNets and Blend, unless `--attacks` names
others (the other attacks' base-rung cells are in the same exports). One line per attack and knob, from the
quick profile's rung out along that knob (solid: epochs, dashed: width, dotted: training images), so that
rungs of different knobs are never joined. Prints the pairs as a table, too.
"""

import argparse
from functools import cache
from pathlib import Path
from typing import Any

import torch
from figure_io import GOAL_ASR, GOAL_COST, PAPER_GUARD, exported_cells, png_bytes, rows_of_attacks, setting_label

from eigenguard.config import TrainConfig
from eigenguard.models import create_model
from eigenguard.run_directory import atomic_write_bytes

LADDER_ATTACKS = ("badnets", "blend")  # question 1's pairs; the exports hold other attacks' base-rung cells too
KNOBS = ("epochs", "width", "images")  # the ladder's knobs; a line per knob runs from the quick profile's rung
QUICK = TrainConfig(profile="quick")  # the ladder's first rung, which compute is counted against
BASE_RUNG = (QUICK.epochs, QUICK.width, QUICK.train_subset)  # its epochs, width and training images
KNOB_STYLES = {"": "-", "epochs": "-", "width": "--", "images": ":"}


@cache
def forward_macs(model: str, width: float, in_channels: int, image_size: int, classes: int) -> int:
    """Multiply-accumulates of one image's forward pass (convolutions and linear layers)."""
    net = create_model(model, in_channels=in_channels, num_classes=classes, width=width).eval()
    total = 0

    def count(module: torch.nn.Module, _: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += out.numel() * per_output
        elif isinstance(module, torch.nn.Linear):
            total += out.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    with torch.no_grad():
        net(torch.zeros(1, in_channels, image_size, image_size))
    for h in hooks:
        h.remove()
    return total


def compute_of(config: dict[str, Any], images: int) -> float:
    # Fashion-MNIST: 1 channel, 10 classes (the only dataset the ladder runs on)
    return forward_macs(config["model"], config["width"], 1, config["image_size"], 10) * images * config["epochs"]


def pairs(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_rung: dict[tuple, dict[str, dict[str, Any]]] = {}
    for cell in cells:
        if cell["status"] != "done":
            continue
        c, m = cell["config"], cell["metrics"]
        if c["dataset"] != "fashion-mnist" or c["seed"] != 0:
            continue
        defense = c["defense"]["name"]
        if defense == "eigenguard" and c["defense"] != PAPER_GUARD:
            continue
        if defense not in ("none", "eigenguard"):
            continue
        rung = (setting_label(c), c["epochs"], c["width"], m["train_images"])
        by_rung.setdefault(rung, {})[defense] = cell
    out = []
    quick = compute_of(QUICK.model_dump(), QUICK.train_subset)
    for (attack, epochs, width, images), both in sorted(by_rung.items()):
        if set(both) != {"none", "eigenguard"}:
            continue
        plain, guard = both["none"]["metrics"], both["eigenguard"]["metrics"]
        moved = [
            name for name, value, base in zip(KNOBS, (epochs, width, images), BASE_RUNG, strict=True) if value != base
        ]
        out.append(
            {
                "attack": attack,
                "knob": "+".join(moved),  # "" for the quick profile's own rung, which starts every knob's line
                "rung": f"w{width:g} {images // 1000}k e{epochs}",
                "compute": compute_of(both["none"]["config"], images) / quick,
                "acc_none": plain["acc"],
                "acc_guard": guard["acc"],
                "cost_points": 100 * (plain["acc"] - guard["acc"]),
                "asr_guard": guard["asr"],
                "asr_none": plain["asr"],
            }
        )
    return out


def figure(rows: list[dict[str, Any]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=150, constrained_layout=True)
    panels = ((axes[0], "cost_points", 1), (axes[1], "asr_guard", 100))  # (axis, row key, to percent)
    for colour, attack in enumerate(sorted({r["attack"] for r in rows})):
        mine = [r for r in rows if r["attack"] == attack]
        base = [r for r in mine if not r["knob"]]
        knobs = sorted({r["knob"] for r in mine if r["knob"]})
        # one line per knob from the quick profile's rung, so that rungs of different knobs are never joined
        for knob in knobs or [""]:
            style = KNOB_STYLES.get(knob, "-.")  # a rung that moves two knobs at once (the paper's setting)
            line = sorted(base + [r for r in mine if r["knob"] == knob and knob], key=lambda r: r["compute"])
            for ax, key, scale in panels:
                ax.plot([r["compute"] for r in line], [scale * r[key] for r in line], marker="o", color=f"C{colour}",
                        linestyle=style, label=f"{attack}, {knob}" if knob else attack)  # fmt: skip
        for r in mine:
            for ax, key, scale in panels:
                ax.annotate(r["rung"], (r["compute"], scale * r[key]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
    axes[0].set_ylabel("ACC cost of EigenGuard (points)")
    axes[1].set_ylabel("ASR with EigenGuard, per-sample (%)")
    axes[0].set_ylim(0, max(r["cost_points"] for r in rows) * 1.15)  # from zero: the goal and the gap to it
    axes[1].set_ylim(-3, 103)
    for ax, goal, text in ((axes[0], GOAL_COST, "goal: <= 3 points"), (axes[1], 100 * GOAL_ASR, "goal: <= 10%")):
        ax.axhline(goal, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(text, (0.4, goal), xycoords=("axes fraction", "data"), fontsize=6, color="grey",
                    xytext=(0, 2), textcoords="offset points")  # fmt: skip
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training compute (x the quick profile)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", type=Path, help="grids written by `eigenguard export`")
    p.add_argument("--attacks", help="comma-separated attack labels, as the table prints them (default: badnets,blend)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args()
    rows = rows_of_attacks(pairs(exported_cells(args.exports)), args.attacks, LADDER_ATTACKS, "finished pairs")
    print("| attack | rung | compute | ACC none | ACC guard | cost (points) | ASR guard |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attack']} | {r['rung']} | {r['compute']:.2f}x | {100 * r['acc_none']:.1f}% | "
              f"{100 * r['acc_guard']:.1f}% | {r['cost_points']:.1f} | {100 * r['asr_guard']:.1f}% |")  # fmt: skip
    atomic_write_bytes(args.out, figure(rows, "EigenGuard's cost against scale (Fashion-MNIST, seed 0)"))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
