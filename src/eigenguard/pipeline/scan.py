"""`eigenguard scan`: rank the images of a training set by how suspicious they are, and say so in files.

    scan(TrainConfig(profile="quick", attack="badnets", detector="ss"), Path("scans/badnets-ss"))

The data are loaded as `train` loads them (a benchmark dataset with the planted attack the config names,
or a user's image folder as it is); the model trained on them without a defense comes from the cache of
backdoored models (trained once per setting); the detector scores every training image. Written, all at
once (a failed scan leaves nothing):
- suspects.csv: one row per training image, most suspicious first: rank, index (into the training split),
  file (image folders), score, flagged (the detector's own rule), given label, the trained model's class
  and its most likely class other than the given label (for a relabelled poison, often its true class),
  and, with a planted attack, whether it was poisoned;
- detection.json: the detector and its options, counts, seconds, the estimated target class with its
  evidence, and with a planted attack precision and recall of the flagged set, AUROC of the scores and the
  true-positive rate at 5% false positives (the score threshold that 5% of the clean images exceed);
- suspects.png: a contact sheet of each class's top suspects;
- config.yaml: the configuration, the detector in it, to reproduce it.
A grid cell whose config names a detector is a scan (bench/cell.py).
"""

import csv
import io
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from eigenguard.config import ATTACK_NONE, DEFENSE_NONE, DETECTOR_NONE, TrainConfig
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.defenses.base import auroc
from eigenguard.detectors import DETECTORS, Detection, DetectionContext
from eigenguard.detectors.base import TARGET_LIFT, score_lift, share_lift
from eigenguard.errors import EigenguardError
from eigenguard.pipeline.backdoored import backdoored_entry, load_or_train_backdoored
from eigenguard.pipeline.components import resolve
from eigenguard.pipeline.prepare import prepare_data, training_files
from eigenguard.pipeline.run import resolve_device, train
from eigenguard.run_directory import atomic_write_bytes, atomic_write_text, check_new_run_dir
from eigenguard.training.evaluate import eval_logits
from eigenguard.training.trainer import Trainer

SHEET_COLUMNS = 8


@dataclass
class ScanResult:
    out: Path
    report: dict[str, Any]


def scan(config: TrainConfig, out: Path, *, progress: bool = True, console: Console | None = None) -> ScanResult:
    """Scan the training set `config` describes with its detector; write `out` (module docstring)."""
    console = console or Console(stderr=True, quiet=not progress)
    started = time.perf_counter()
    if config.defense.name != DEFENSE_NONE:
        raise EigenguardError(
            f"invalid defense = {config.defense.name!r} for a scan: it scans the data as they are; allowed: none"
        )
    if config.detector.name == DETECTOR_NONE:
        raise EigenguardError(f"a scan needs a detector; allowed: {', '.join(DETECTORS.names())}")
    config = resolve(config)
    detector = config.detector
    instance = DETECTORS.create(detector.name, **detector.options)
    check_new_run_dir(out)
    device = resolve_device(config.device)
    data = prepare_data(config, device, needs_clean_pool=False, say=lambda line: console.print(line, markup=False))
    files = training_files(config, data)
    console.print(
        f"[bold]scan[/] {config.dataset} ({len(data.train_set)} training images"
        + (
            f", {len(data.poison_indices)} poisoned by {config.attack.name}"
            if config.attack.name != ATTACK_NONE
            else ""
        )
        + f") with {detector.name} on {device} -> {out}"
    )
    trainer = Trainer(
        config, device, data.normalize, data.flip, data.test, data.asr_set, console=console, progress=progress
    )
    entry = backdoored_entry(config, data.train_set, device)
    model_info: dict[str, Any] = {}

    def trained() -> torch.nn.Module:
        if "model" not in model_info:
            t0 = time.perf_counter()
            model, metrics, hit = load_or_train_backdoored(
                config, entry, device, trainer.new_model(),
                lambda plain, resume: train(plain, progress=progress, console=console, resume=resume),
            )  # fmt: skip
            model_info.update(model=model, acc=metrics.get("acc"), asr=metrics.get("asr"), cache_hit=hit,
                              seconds=round(time.perf_counter() - t0, 3))  # fmt: skip
        return model_info["model"]

    t0 = time.perf_counter()
    detection = instance.detect(DetectionContext(config, trainer, data.train_set, trained))
    detect_seconds = time.perf_counter() - t0 - model_info.get("seconds", 0.0)
    model = trained()  # its classes for the table, whether or not the detector read it
    with torch.no_grad():
        logits = eval_logits(model, data.train_set, trainer.normalize, config.eval_batch_size).cpu()
    truth = data.poison_indices if config.attack.name != ATTACK_NONE else None
    report = {
        "detector": detector.model_dump(),
        "images": len(data.train_set),
        "flagged": len(detection.flagged),
        "target": estimate_target(detection, data.train_set),
        **({"truth": detection_metrics(detection, truth, len(data.train_set))} if truth is not None else {}),
        "model": {k: v for k, v in model_info.items() if k != "model"},
        "seconds": {"detector": round(detect_seconds, 3), "total": round(time.perf_counter() - started, 3)},
        "found": detection.report,
    }
    if truth is not None:
        report["target"]["true_class"] = config.target
        report["target"]["correct"] = report["target"]["class"] == config.target
    _write(out, config, detection, data.train_set, logits, files, truth, report)
    return ScanResult(out, report)


def estimate_target(detection: Detection, data: ImageDataset) -> dict[str, Any]:
    """The class that looks most like the backdoor's target, with the evidence; class None where it does
    not stand out by TARGET_LIFT times or the detector vetoes it. By the detector's own per-class scores
    (of the class its rule weighs, else the highest) against the median of the other classes' where it has
    them; else by its share of the flagged images against its share of all."""
    if detection.class_scores is not None:
        best, lift, reference = score_lift(detection.class_scores, detection.candidate)
        evidence = (
            f"{detection.class_evidence}: {data.classes[best]!r} "
            f"{float(detection.class_scores[best]):.3g}, the other classes' median {reference:.3g}"
        )
    else:
        top = math.ceil(0.01 * len(data))  # nothing flagged: the 1% most suspicious
        ranked = detection.flagged.cpu() if len(detection.flagged) else detection.scores.argsort(descending=True)[:top]
        best, lift, share_top, share_all = share_lift(ranked, data.labels, data.num_classes)
        evidence = (
            f"{data.classes[best]!r} holds {float(share_top[best]):.0%} of the {len(ranked)} top suspects and "
            f"{float(share_all[best]):.0%} of all images"
        )
    named = lift >= TARGET_LIFT and not detection.veto
    vetoed = f"; not named: {detection.veto}" if lift >= TARGET_LIFT and detection.veto else ""
    return {
        "class": best if named else None,
        "class_name": data.classes[best] if named else None,
        "lift": round(lift, 3) if math.isfinite(lift) else None,
        "evidence": f"{evidence} ({f'{lift:.1f}x' if math.isfinite(lift) else 'no other class scores'}; "
        f"named at >= {TARGET_LIFT:g}x){vetoed}",
    }


def detection_metrics(detection: Detection, poisoned: torch.Tensor, n: int) -> dict[str, Any]:
    """Precision and recall of the flagged set, AUROC of the scores, and the true-positive rate at the
    score threshold that 5% of the clean images exceed."""
    is_poison = torch.zeros(n, dtype=torch.bool)
    is_poison[poisoned.cpu()] = True
    flagged = torch.zeros(n, dtype=torch.bool)
    flagged[detection.flagged.cpu()] = True
    hits = int((flagged & is_poison).sum())
    clean_scores = detection.scores[~is_poison].sort(descending=True).values
    threshold = clean_scores[min(len(clean_scores) - 1, int(0.05 * len(clean_scores)))] if len(clean_scores) else 0
    tpr = float((detection.scores[is_poison] > threshold).double().mean()) if is_poison.any() else None
    return {
        "poisoned": int(is_poison.sum()),
        "flagged_poisoned": hits,
        "precision": round(hits / int(flagged.sum()), 4) if flagged.any() else None,
        "recall": round(hits / int(is_poison.sum()), 4) if is_poison.any() else None,
        "auroc": auroc(detection.scores, poisoned),
        "tpr_at_5fpr": None if tpr is None else round(tpr, 4),
    }


def _write(
    out: Path,
    config: TrainConfig,
    detection: Detection,
    data: ImageDataset,
    logits: torch.Tensor,
    files: list[Path] | None,
    truth: torch.Tensor | None,
    report: dict[str, Any],
) -> None:
    """Every file into a sibling directory, then one rename: a scan directory is complete or absent."""
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        labels = data.labels.cpu()
        other = logits.clone()
        other[torch.arange(len(labels)), labels] = -math.inf
        model_class, runner_up = logits.argmax(1), other.argmax(1)
        flagged = torch.zeros(len(labels), dtype=torch.bool)
        flagged[detection.flagged.cpu()] = True
        poisoned = torch.zeros(len(labels), dtype=torch.bool)
        if truth is not None:
            poisoned[truth.cpu()] = True
        order = detection.scores.argsort(descending=True, stable=True)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["rank", "index", "file", "score", "flagged", "label", "model_class", "runner_up",
                         *(["poisoned"] if truth is not None else [])])  # fmt: skip
        for rank, i in enumerate(order.tolist(), start=1):
            writer.writerow([
                rank, i, str(files[i]) if files else "", f"{float(detection.scores[i]):.6g}", int(flagged[i]),
                data.classes[labels[i]], data.classes[model_class[i]], data.classes[runner_up[i]],
                *([int(poisoned[i])] if truth is not None else []),
            ])  # fmt: skip
        atomic_write_text(partial / "suspects.csv", buffer.getvalue())
        atomic_write_text(partial / "detection.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(
            partial / "config.yaml", yaml.safe_dump({**config.model_dump(), "out": str(out)}, sort_keys=False)
        )
        atomic_write_bytes(partial / "suspects.png", contact_sheet(data, detection.scores, flagged))
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def contact_sheet(
    data: ImageDataset, scores: torch.Tensor, flagged: torch.Tensor, columns: int = SHEET_COLUMNS
) -> bytes:
    """A PNG: one row per class, its `columns` most suspicious images left to right, flagged ones framed red."""
    from PIL import Image, ImageDraw

    tile, label_width, pad = max(48, data.image_shape[1] * 2), 110, 2
    labels = data.labels.cpu()
    sheet = Image.new("RGB", (label_width + columns * (tile + pad), data.num_classes * (tile + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(data.classes):
        members = torch.nonzero(labels == c).flatten()
        top = members[scores[members].argsort(descending=True, stable=True)[:columns]]
        y = c * (tile + pad)
        draw.text((4, y + tile // 2 - 6), name[:16], fill="black")
        for j, i in enumerate(top.tolist()):
            image = data.images[i].cpu()
            image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
            picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((tile, tile), Image.NEAREST)
            x = label_width + j * (tile + pad)
            sheet.paste(picture, (x, y))
            if flagged[i]:
                draw.rectangle((x, y, x + tile - 1, y + tile - 1), outline="red", width=2)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def clean_copy(scan_dir: Path, out: Path, top: int | None = None) -> dict[str, int]:
    """A copy of a scanned image folder without its suspects: the detector's flagged images, or the `top`
    most suspicious. Written as `out`/train/<class>/ (and the test folder as it was) with dropped.csv, all at
    once. Returns the counts kept and dropped."""
    rows = _suspects(scan_dir)
    if not rows[0]["file"]:
        raise EigenguardError(
            f"scan '{scan_dir}' is of a benchmark dataset, not an image folder: there are no files to copy "
            "(suspects.csv lists their indices)"
        )
    if top is not None and not 0 <= top <= len(rows):
        raise EigenguardError(f"invalid --top {top}; allowed: 0..{len(rows)} (the scan's images)")
    dropped = [r for r in rows if (int(r["rank"]) <= top if top is not None else r["flagged"] == "1")]
    gone = {r["file"] for r in dropped}
    check_new_run_dir(out)
    train_dir = Path(rows[0]["file"]).parent.parent
    test_dir = next((train_dir.parent / d for d in ("test", "val") if (train_dir.parent / d).is_dir()), None)
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for r in rows:
            if r["file"] not in gone:
                source = Path(r["file"])
                if not source.is_file():
                    raise EigenguardError(f"{source} (in {scan_dir}/suspects.csv) no longer exists; scan again")
                target = partial / "train" / source.parent.name / source.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        if test_dir is not None:
            shutil.copytree(test_dir, partial / test_dir.name)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(dropped)
        atomic_write_text(partial / "dropped.csv", buffer.getvalue())
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {"kept": len(rows) - len(dropped), "dropped": len(dropped)}


def _suspects(scan_dir: Path) -> list[dict[str, str]]:
    path = scan_dir / "suspects.csv"
    if not path.is_file():
        raise EigenguardError(f"'{scan_dir}' is not a scan directory (no suspects.csv); make one with eigenguard scan")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"rank", "file", "flagged"} <= set(rows[0]):
        raise EigenguardError(f"{path} is not a scan's table (it needs rank, file and flagged columns)")
    return rows
