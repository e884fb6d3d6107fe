"""What `eigenguard analyze ...` does, callable from Python: each function writes its files and returns them.

Outputs go to `out` (default bench-results/analysis/), named after the run directory, written atomically.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eigenguard.analysis.effective_rank import DEFINITIONS, effective_rank
from eigenguard.analysis.eigen_bands import PAPER_BANDS, band_coordinates, neighbour_purity, tsne_2d, tsne_figure
from eigenguard.analysis.guard_after_training import guard_after_training
from eigenguard.analysis.run_loading import clean_and_triggered, features_at, load_run, poison_step, poisoned_share
from eigenguard.analysis.trigger_survival import survival
from eigenguard.defenses import DEFENSES
from eigenguard.errors import EigenguardError
from eigenguard.guard import find_guards, inference_mode
from eigenguard.run_directory import atomic_write_bytes, atomic_write_text


def _point(run: Any, at: str | None) -> str:
    point = at or run.config.defense.options.get("at", "stage1")  # where the run's guard (if any) sits
    if point not in run.model.insertion_points:
        allowed = ", ".join(run.model.insertion_points)
        raise EigenguardError(f"insertion point '{point}' unknown for {run.config.model}; allowed: {allowed}")
    return point


def _write_table(out: Path, stem: str, text: str, rows: list[dict[str, Any]]) -> list[Path]:
    """A table command's two files: `<stem>.md` (the table) and `<stem>.json` (its rows), written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.md", out / f"{stem}.json"]
    atomic_write_text(paths[0], text)
    atomic_write_text(paths[1], json.dumps(rows, indent=2) + "\n")
    return paths


def erank_table(
    run_dirs: list[Path], out: Path, *, at: str | None = None, samples: int = 1000, device: str = "cpu"
) -> tuple[str, list[Path]]:
    """Table 2: effective rank of triggered vs clean features, one column per run, both definitions."""
    if samples < 2:
        raise EigenguardError(f"samples {samples} must be >= 2")
    columns = []
    for run_dir in run_dirs:
        run = load_run(run_dir, device)
        point = _point(run, at)
        clean, triggered = clean_and_triggered(run, samples)
        column: dict[str, Any] = {
            "run": str(run_dir),
            "attack": run.config.attack.name,
            "defense": run.config.defense.name,
            "point": point,
        }
        for name, data in (("backdoor", triggered), ("clean", clean)):
            feats = features_at(run, data.images, point)
            column[f"{name}_matrix"] = list(feats.shape)
            for definition in DEFINITIONS:
                column[f"{name}_{definition}"] = round(effective_rank(feats, definition), 4)
        columns.append(column)
    header = [f"{c['attack']} ({c['defense']})" for c in columns]
    lines = [
        "Effective rank of the features at "
        + ", ".join(sorted({c["point"] for c in columns}))
        + f": each matrix is {columns[0]['clean_matrix'][0]} test images (the same images, clean or with the "
        f"trigger) x {columns[0]['clean_matrix'][1]} flattened features, not centred.",
        "",
        "| inputs | definition | " + " | ".join(header) + " |",
        "|---|---|" + "---|" * len(header),
    ]
    for name, title in (("backdoor", "Backdoor"), ("clean", "Clean")):
        for definition, meaning in DEFINITIONS.items():
            values = " | ".join(f"{c[f'{name}_{definition}']:.2f}" for c in columns)
            lines.append(f"| {title} | {meaning} | {values} |")
    text = "\n".join(lines) + "\n"
    return text, _write_table(out, "erank_" + "_".join(Path(r).name for r in run_dirs)[:150], text, columns)


def tsne_map(
    run_dir: Path,
    out: Path,
    *,
    at: str | None = None,
    samples: int = 1000,
    triggered_samples: int = 200,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[dict[str, Any], list[Path]]:
    """Figures 2 and 4: t-SNE of the top-10 / next-90 / rest bands, triggered images in pink; plus purity."""
    run = load_run(run_dir, device)
    point = _point(run, at)
    if samples < 110 or triggered_samples < 1:
        raise EigenguardError(f"samples {samples} must be >= 110 (the bands reach 100) and triggered >= 1")
    # clean images of every class (the first `samples` test images), triggered ones from the non-target classes
    clean_images, clean_labels = run.test.images[:samples], run.test.labels[:samples]
    _, trig = clean_and_triggered(run, triggered_samples)
    feats = torch.cat([features_at(run, clean_images, point), features_at(run, trig.images, point)])
    labels = torch.cat([clean_labels.cpu(), trig.labels.cpu()]).numpy()
    triggered = np.r_[np.zeros(len(clean_images), bool), np.ones(len(trig), bool)]
    groups = np.where(triggered, -1, labels)  # triggered images form their own group
    bands = band_coordinates(feats, PAPER_BANDS)
    summary: dict[str, Any] = {"run": str(run_dir), "point": point, "matrix": list(feats.shape), "bands": []}
    maps, titles = [], []
    for band in bands:
        purity = neighbour_purity(band.coordinates, groups, triggered)
        summary["bands"].append({"band": band.label, **purity})
        maps.append(tsne_2d(band.coordinates, seed))
        titles.append(f"{band.label}\n10-NN purity: triggered {purity['triggered_purity']:.2f}, "
                      f"clean {purity['clean_purity']:.2f}")  # fmt: skip
    title = (
        f"{run.name}: features at {point} ({feats.shape[0]} images x {feats.shape[1]}), "
        f"t-SNE of each band of singular directions"
    )
    png = tsne_figure(maps, titles, labels, triggered, list(run.test.classes), title)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"tsne_{Path(run_dir).name}_{point}"
    paths = [out / f"{stem}.png", out / f"{stem}.json"]
    atomic_write_bytes(paths[0], png)
    atomic_write_text(paths[1], json.dumps(summary, indent=2) + "\n")
    return summary, paths


def survival_table(
    run_dirs: list[Path], out: Path, *, samples: int = 1000, device: str = "cpu", other_ks: tuple[int, ...] = ()
) -> tuple[str, list[Path]]:
    """How much of the trigger gets through each guarded run's EigenGuard, against the clean content
    (analysis/trigger_survival.py), one row per run."""
    if samples < 2:
        raise EigenguardError(f"samples {samples} must be >= 2")
    rows, defaults = [], DEFENSES.options("eigenguard")
    for run_dir in run_dirs:
        run = load_run(run_dir, device)
        guards = find_guards(run.model)
        if run.config.defense.name != "eigenguard" or len(guards) != 1:
            raise EigenguardError(f"run '{run_dir}' has no EigenGuard (defense: {run.config.defense.name})")
        point = _point(run, None)
        clean, triggered = clean_and_triggered(run, samples)
        # training's view: batches of the run's size, the training set's poisoned share of their rows triggered
        mixed_rows = torch.arange(0, len(clean), poison_step(len(clean), poisoned_share(run)))
        mixed = clean.images.clone()
        mixed[mixed_rows] = triggered.images[mixed_rows]
        batch_size = run.config.batch_size
        with inference_mode(guards, "batch"):
            batch_clean = features_at(run, clean.images, point, batch_size=batch_size)
            batch_mixed = features_at(run, mixed, point, batch_size=batch_size)
        measured = survival(
            features_at(run, clean.images, point, through_point=False),
            features_at(run, triggered.images, point, through_point=False),
            features_at(run, clean.images, point),
            features_at(run, triggered.images, point),
            guards[0].history.cpu(),
            guards[0].options.k,
            batch_clean,
            batch_mixed,
            mixed_rows,
            other_ks,
        )
        changed = {k: v for k, v in run.config.defense.options.items() if k in defaults and v != defaults[k]}
        rows.append(
            {
                "run": str(run_dir),
                "attack": run.config.attack.name,
                "defense_options": changed,
                "point": point,
                "images": len(clean),
                **measured,
            }
        )
    lines = [
        "What of the trigger gets through EigenGuard (per-sample inference), against the clean images' variation: "
        "shares of squared norm, summed over the images (analysis/trigger_survival.py).",
        "",
        "| run | attack | guard options | trigger in His's top k | clean in top k | per-sample: trigger passed "
        "| clean passed | gain | in training batches: trigger passed | clean passed | gain |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r["defense_options"].items()) or "the paper's"
        lines.append(
            f"| {Path(r['run']).name[:16]} | {r['attack']} | {options} | {r['trigger_share_in_top_k']:.3f} "
            f"| {r['clean_share_in_top_k']:.3f} | {r['trigger_passed']:.3g} | {r['clean_passed']:.3g} "
            f"| {r['trigger_vs_clean_gain']:.3f} | {r['batch_trigger_passed']:.3g} | {r['batch_clean_passed']:.3g} "
            f"| {r['batch_trigger_vs_clean_gain']:.3f} |"
        )
    if other_ks:
        lines += ["", "Share of the trigger's (and the clean variation's) squared norm in His's top K:", ""]
        lines += ["| run | attack | " + " | ".join(f"K = {kk}" for kk in other_ks) + " |"]
        lines += ["|---|---|" + "---|" * len(other_ks)]
        for r in rows:
            cells = (r["shares_in_top"][str(kk)] for kk in other_ks)
            shares = " | ".join(f"{c['trigger']:.3f} ({c['clean']:.3f})" for c in cells)
            lines.append(f"| {Path(r['run']).name[:16]} | {r['attack']} | {shares} |")
    text = "\n".join(lines) + "\n"
    return text, _write_table(out, "survival_" + "_".join(Path(r).name[:16] for r in run_dirs)[:150], text, rows)


def guard_after_training_table(
    run_dirs: list[Path], out: Path, *, k: int = 20, history_images: int = 5120, device: str = "cpu"
) -> tuple[str, list[Path]]:
    """EigenGuard inserted into runs trained without it (analysis/guard_after_training.py), one row per run."""
    rows = [guard_after_training(r, k=k, history_images=history_images, device=device) for r in run_dirs]
    lines = [
        f"EigenGuard (k = {k}) inserted after training, nothing retrained; His from {history_images} training "
        "images (analysis/guard_after_training.py).",
        "",
        "| run | attack | ACC without | ASR without | ACC per-sample | ASR per-sample | ACC paper protocol "
        "| ASR paper protocol |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["without_guard"], r["with_test_time_guard"]
        lines.append(
            f"| {Path(r['run']).name[:16]} | {r['attack']} | {a['acc']:.4f} | {a['asr']:.4f} | {b['acc']:.4f} "
            f"| {b['asr']:.4f} | {b['acc_paper']:.4f} | {b['asr_paper']:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    stem = "test_time_guard_" + "_".join(Path(r).name[:16] for r in run_dirs)[:150]
    return text, _write_table(out, stem, text, rows)
