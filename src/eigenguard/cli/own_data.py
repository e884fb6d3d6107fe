"""The practitioner's commands: `scan` a training set for suspicious images."""

from pathlib import Path
from typing import Annotated

import typer

from eigenguard.cli.common import Opt, parse_settings


def scan(
    out: Annotated[Path, Opt("--out", "-o", help="scan directory to create")],
    detector: Annotated[str, Opt(help="detector name (eigenguard list)")] = "ss",
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
    from eigenguard.config import Component, load_yaml, make_config, merge_settings
    from eigenguard.pipeline.scan import scan as run_scan

    flags = {k: v for k, v in locals().items() if k in SETTING_FLAGS and v is not None}
    settings = parse_settings(set_, example="detector.epsilon=0.05")
    detector_options = {k.partition(".")[2]: v for k, v in settings.items() if k.startswith("detector.")}
    settings = {k: v for k, v in settings.items() if not k.startswith("detector.")}
    values = merge_settings(merge_settings(load_yaml(config) if config else {}, flags), settings)
    result = run_scan(make_config(values), Component(name=detector, **detector_options), out, progress=not quiet)
    typer.echo(summary(result.report, out))


SETTING_FLAGS = ("profile", "dataset", "data_root", "attack", "poison_rate", "seed", "device")


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
