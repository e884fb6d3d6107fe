"""The practitioner's commands: `scan` a training set for suspicious images, `clean` a folder of them,
`predict` with a trained run."""

import csv
import io
from pathlib import Path
from typing import Annotated

import typer

from eigenguard.cli.common import Opt, parse_settings

# the detector that found every attack's poisons and named every target in docs/results/detection.md
DEFAULT_DETECTOR = "inversion"


def scan(
    out: Annotated[Path, Opt("--out", "-o", help="scan directory to create")],
    detector: Annotated[str | None, Opt(help=f"detector name (eigenguard list; default {DEFAULT_DETECTOR})")] = None,
    config: Annotated[Path | None, Opt("--config", "-c", help="YAML file of settings")] = None,
    profile: Annotated[str | None, Opt(help="defaults: paper (GPU) or quick (CPU)")] = None,
    dataset: Annotated[str | None, Opt(help="imagefolder (your images), or e.g. fashion-mnist")] = None,
    data_root: Annotated[str | None, Opt(help="dataset directory (imagefolder: holds train/<class>/)")] = None,
    attack: Annotated[str | None, Opt(help="an attack to plant (benchmark datasets), or none")] = None,
    poison_rate: Annotated[float | None, Opt(help="poisoned fraction of the planted attack")] = None,
    seed: Annotated[int | None, Opt(help="master seed")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu, cuda, cuda:N")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="any setting KEY=VALUE, detector.KEY=VALUE too")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress output")] = False,
) -> None:
    """Rank a training set's images by how suspicious they are: suspects.csv, detection.json, suspects.png.

    The model trained on the data (no defense) comes from the cache, or is trained once. With a planted
    attack the scan also scores itself against the truth (precision, recall, AUROC, TPR at 5% FPR).
    """
    from eigenguard.config import load_yaml, make_config, merge_settings
    from eigenguard.pipeline.scan import scan as run_scan

    flags = {k: v for k, v in locals().items() if k in SETTING_FLAGS and v is not None}
    values = merge_settings({"detector": DEFAULT_DETECTOR, **(load_yaml(config) if config else {})}, flags)
    values = merge_settings(values, parse_settings(set_))
    result = run_scan(make_config(values), out, progress=not quiet)
    typer.echo(summary(result.report, out))


SETTING_FLAGS = ("detector", "profile", "dataset", "data_root", "attack", "poison_rate", "seed", "device")


def summary(report: dict, out: Path) -> str:
    """The one-screen summary of a scan."""
    target = report["target"]
    lines = [
        f"{report['detector']['name']}: {report['flagged']} of {report['images']} images flagged "
        f"({report['seconds']['total']:.0f} s)",
        f"target class: {target['class_name'] if target['class'] is not None else 'none stands out'} "
        f"- {target['evidence']}",
    ]
    if "truth" in report:
        t = report["truth"]
        lines.append(
            f"against the planted attack ({t['poisoned']} poisoned): precision {t['precision']}, recall "
            f"{t['recall']}, AUROC {t['auroc']}, TPR at 5% FPR {t['tpr_at_5fpr']}; target "
            f"{'right' if target.get('correct') else 'wrong'}"
        )
    lines += [f"{out / name}" for name in ("suspects.csv", "detection.json", "suspects.png")]
    return "\n".join(lines)


def predict(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory (eigenguard train)")],
    images: Annotated[list[Path], typer.Argument(help="image files, or folders of them")],
    out: Annotated[Path | None, Opt("--out", "-o", help="write a CSV here instead of the table")] = None,
    device: Annotated[str, Opt(help="auto, cpu, cuda, cuda:N")] = "cpu",
) -> None:
    """Classify images with a trained run: file, class, confidence (the run's defense included)."""
    from rich.console import Console
    from rich.table import Table

    from eigenguard.pipeline.predict import image_files, load_model
    from eigenguard.pipeline.predict import predict as classify
    from eigenguard.run_directory import atomic_write_text, check_output_dir

    if out is not None:
        check_output_dir(out.parent, "--out")
    rows = classify(load_model(run_dir, device), image_files(images))
    if out is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["file", "class", "confidence"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out, buffer.getvalue())
        typer.echo(f"{len(rows)} images -> {out}")
        return
    table = Table("file", "class", "confidence")
    for r in rows:
        table.add_row(r["file"], r["class"], f"{r['confidence']:.3f}")
    Console(width=200).print(table)


def clean(
    scan_dir: Annotated[Path, typer.Argument(help="a scan directory of an image folder (eigenguard scan)")],
    out: Annotated[Path, Opt("--out", "-o", help="the new image folder to create")],
    top: Annotated[int | None, Opt(help="drop the N most suspicious images instead of the flagged ones")] = None,
) -> None:
    """Copy a scanned image folder without its suspects (train/ filtered, test/ as it was, dropped.csv)."""
    from eigenguard.pipeline.scan import clean_copy

    counts = clean_copy(scan_dir, out, top)
    typer.echo(f"{counts['kept']} training images kept, {counts['dropped']} dropped -> {out} (see dropped.csv)")
