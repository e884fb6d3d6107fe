"""Figure 1: ACC and ASR when training with the top r directions removed, or r small ones lifted.

The sweep is a benchmark grid (bench/): one cell per attack x (mode, r), each an ordinary training run with
`defense: {name: dimension-edit, mode: ..., r: ...}`, so it is resumable, runs on
the local or Ray executor, and its cells sit in the results store with every other run. r = 0 is plain
training, shared by both curves. The figure has four panels like the paper's: ASR when reducing, ASR when
adding, ACC when reducing, ACC when adding, one line per attack. ACC and ASR here are measured batch-wise
(the edit acts on each evaluation batch, as in the paper's experiment): see guard/dimension_edit.py.

That protocol mixes two effects. A test batch made only of triggered images shares one strong direction,
the trigger, and "reduce" removes exactly that direction from the batch at test time, whatever training
learned. So each finished run is also evaluated (`test_time_protocols`) with the edit kept but the
triggered images spread through clean batches at the training poison rate ("mixed", the batches the
model saw in training), and with the edit switched off at test time ("edit off", what training alone
left in the weights). The figure draws all three.
"""

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import torch

from eigenguard.analysis.run_loading import load_run
from eigenguard.bench.grid import Grid, parse_grid
from eigenguard.cache import digest
from eigenguard.config import config_value
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.errors import EigenguardError
from eigenguard.guard.dimension_edit import MODES, DimensionEdit
from eigenguard.run_directory import atomic_write_bytes
from eigenguard.training.evaluate import accuracy, eval_logits

DEFAULT_R = (0, 5, 20, 50)


def dims_grid(attacks: list[str], rs: list[int], modes: list[str], base: dict[str, Any]) -> Grid:
    if not attacks or not rs or not modes:
        raise EigenguardError("dims needs at least one attack, one r and one mode")
    for mode in modes:  # checked here, not only in the cells: an r of 0 alone builds no cell of the mode
        if mode not in MODES:
            raise EigenguardError(f"dimension edit mode '{mode}' unknown; allowed: {', '.join(MODES)}")
    for r in rs:
        if r < 0:
            raise EigenguardError(f"--r {r} must be >= 0 (0: the plain model)")
    if any(r < 0 for r in rs):
        raise EigenguardError(f"r values {rs} must be >= 0")
    edits = [{"label": "plain-0", "defense.mode": "reduce", "defense.r": 0}] if 0 in rs else []
    edits += [{"label": f"{mode}-{r}", "defense.mode": mode, "defense.r": r} for mode in modes for r in rs if r > 0]
    name = "dims-" + digest({"attacks": attacks, "rs": rs, "modes": modes, "base": base}, length=8)
    return parse_grid(
        {
            "name": name,
            "description": f"Figure 1: dimension edit sweep, r in {rs}, modes {modes}",
            "report": {"layout": "flat"},
            "base": {**base, "defense": "dimension-edit"},
            "axes": {"attack": attacks, "edit": edits},
        }
    )


PROTOCOL_COLUMNS = ("acc_mixed", "asr_mixed", "acc_edit_off", "asr_edit_off")


def mixed_batches(
    clean: ImageDataset, triggered: ImageDataset, batch_size: int, rate: float
) -> tuple[ImageDataset, torch.Tensor, torch.Tensor]:
    """Test batches of `batch_size` images, round(rate x batch_size) (at least 1) of them triggered, the rest
    clean, as in a poisoned training batch. Every triggered image appears once; clean images are taken in
    order and wrap around if needed. Returns the dataset (its order is the batch order) and two boolean masks:
    the triggered positions, and the clean positions that hold each clean image's first appearance."""
    n_trig = min(batch_size, max(1, round(rate * batch_size)))
    batches = math.ceil(len(triggered) / n_trig)
    slot = torch.arange(batches * batch_size, device=clean.images.device) % batch_size
    is_trig = slot < n_trig
    trig_idx = torch.arange(int(is_trig.sum()), device=is_trig.device)
    clean_idx = torch.arange(int((~is_trig).sum()), device=is_trig.device)
    images = torch.empty((len(slot), *clean.images.shape[1:]), dtype=torch.uint8, device=clean.images.device)
    labels = torch.empty(len(slot), dtype=torch.int64, device=clean.images.device)
    images[is_trig] = triggered.images[trig_idx % len(triggered)]
    labels[is_trig] = triggered.labels[trig_idx % len(triggered)]
    images[~is_trig] = clean.images[clean_idx % len(clean)]
    labels[~is_trig] = clean.labels[clean_idx % len(clean)]
    trig_first = is_trig.clone()
    trig_first[is_trig] = trig_idx < len(triggered)
    clean_first = ~is_trig
    clean_first[~is_trig] = clean_idx < len(clean)
    return ImageDataset(images, labels, clean.classes, clean.mean, clean.std), trig_first, clean_first


@torch.no_grad()
def test_time_protocols(run_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, float]:
    """ACC and ASR of a finished dimension-edit run under the two extra protocols (module docstring):
    mixed batches at the run's poison rate and eval batch size, and the edit switched off at test time."""
    run = load_run(run_dir, device)
    if run.attack is None:
        raise EigenguardError(f"run '{run_dir}' has no attack: there is no ASR to measure")
    edits = [m for m in run.model.modules() if isinstance(m, DimensionEdit)]
    if not edits:
        raise EigenguardError(f"run '{run_dir}' has no dimension edit (defense: {run.config.defense})")
    batch = run.config.eval_batch_size
    triggered = run.attack.asr_test_set(run.test)
    mixed, trig_mask, clean_mask = mixed_batches(run.test, triggered, batch, run.config.poison_rate or 0.0)
    hits = eval_logits(run.model, mixed, run.normalize, batch).argmax(1) == mixed.labels
    result = {"acc_mixed": hits[clean_mask].float().mean().item(), "asr_mixed": hits[trig_mask].float().mean().item()}
    saved = [m.r for m in edits]
    try:
        for m in edits:
            m.r = 0
        result["acc_edit_off"] = accuracy(run.model, run.test, run.normalize, batch)
        result["asr_edit_off"] = accuracy(run.model, triggered, run.normalize, batch)
    finally:
        for m, r in zip(edits, saved, strict=True):
            m.r = r
    return {k: round(v, 6) for k, v in result.items()}


def add_test_time_protocols(
    records: list[dict[str, Any]], cache_path: Path, device: str | torch.device = "cpu"
) -> list[dict[str, Any]]:
    """Each done record with PROTOCOL_COLUMNS added, measured once per run and kept in `cache_path` (JSON,
    keyed by the cell key; the run directory itself is never written to)."""
    cache: dict[str, dict[str, float]] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    out, changed = [], False
    for rec in records:
        if rec["status"] == "done" and rec.get("run_dir"):
            if rec["key"] not in cache:
                cache[rec["key"]] = test_time_protocols(rec["run_dir"], device)
                changed = True
            rec = {**rec, **cache[rec["key"]]}
        out.append(rec)
    if changed:
        atomic_write_bytes(cache_path, json.dumps(cache, indent=1, sort_keys=True).encode())
    return out


STYLES = {
    "": ("-", "all-triggered / all-clean batches (paper)"),
    "_mixed": ("--", "mixed batches"),
    "_edit_off": (":", "edit off at test time"),
}


def curves(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """(attack, mode, metric) -> [(r, value)], r = 0 (plain) in both modes' curves. Metrics: acc, asr and
    the PROTOCOL_COLUMNS present in the records."""
    out: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for rec, mode, r in _done_edits(records):
        for metric in ("acc", "asr", *PROTOCOL_COLUMNS):
            if rec.get(metric) is None:
                continue
            for m in ("reduce", "add") if mode == "plain" else (mode,):
                out.setdefault((config_value(rec["config"], "attack"), m, metric), []).append((r, rec[metric]))
    return {k: sorted(v) for k, v in out.items()}


def dims_table_csv(records: list[dict[str, Any]]) -> bytes:
    """One row per finished run: attack, mode, r and the metric under each protocol (fractions)."""
    metrics = ["acc", "asr", *PROTOCOL_COLUMNS, "run_dir"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["attack", "mode", "r", *metrics])
    for rec, mode, r in _done_edits(records):
        writer.writerow([config_value(rec["config"], "attack"), mode, r, *(rec.get(c) for c in metrics)])
    return buffer.getvalue().encode()


def _done_edits(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str, int]]:
    """(record, mode, r) of each finished run, from its `edit` label ("plain-0", "reduce-5", ...)."""
    out = []
    for rec in records:
        if rec["status"] == "done":
            mode, _, r = rec["labels"]["edit"].rpartition("-")
            out.append((rec, mode, int(r)))
    return out


def dims_figure(records: list[dict[str, Any]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    lines = curves(records)
    attacks = list(dict.fromkeys(k[0] for k in lines))
    colours = {a: f"C{i}" for i, a in enumerate(attacks)}
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.8), dpi=150, constrained_layout=True, sharey=True)
    panels = [
        ("asr", "reduce", "(a) ASR, reducing dimensions"),
        ("asr", "add", "(b) ASR, adding dimensions"),
        ("acc", "reduce", "(c) ACC, reducing dimensions"),
        ("acc", "add", "(d) ACC, adding dimensions"),
    ]
    styles_used = set()
    for ax, (metric, mode, panel) in zip(axes.flat, panels, strict=True):
        for attack in attacks:
            for suffix, (style, _) in STYLES.items():
                points = lines.get((attack, mode, metric + suffix), [])
                if points:
                    styles_used.add(suffix)
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, [100 * y for y in ys], style, marker="o", markersize=4, color=colours[attack])
        verb = "removed (top singular values set to 0)" if mode == "reduce" else "added (small ones lifted to s_1)"
        ax.set_xlabel(f"r, directions {verb}")
        ax.set_ylabel(f"{metric.upper()} (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[a], marker="o", label=a) for a in attacks]
    handles += [
        Line2D([], [], color="grey", linestyle=style, label=label)
        for suffix, (style, label) in STYLES.items()
        if suffix in styles_used
    ]
    axes.flat[0].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
