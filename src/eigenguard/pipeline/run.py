"""The end-to-end run: data -> split -> poison -> defense (which trains) -> ACC / ASR -> run directory.

`train(config)` is what `eigenguard train` calls. Everything that can be wrong with the input is checked
and loaded before the run directory is created, so bad input leaves nothing behind. The seeds of each
purpose are listed in prepare.py and trainer.py.
"""

import functools
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from eigenguard.config import ATTACK_NONE, DEFENSE_NONE, DETECTOR_NONE, TrainConfig
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.defenses import Defense, DefenseContext
from eigenguard.errors import EigenguardError
from eigenguard.guard import find_guards
from eigenguard.models import Backbone
from eigenguard.pipeline.backdoored import (
    backdoored_entry,
    cached_plain_metrics,
    load_or_train_backdoored,
    store_plain_run,
)
from eigenguard.pipeline.components import build_defense, resolve
from eigenguard.pipeline.prepare import PreparedData, prepare_data, training_files
from eigenguard.run_directory import RunDirectory, check_new_run_dir, check_resumable_run_dir, check_same_split
from eigenguard.training.checkpoint import Checkpoints
from eigenguard.training.trainer import Trainer
from eigenguard.version import __version__


@dataclass
class RunResult:
    """What a finished run hands back to Python callers."""

    run_dir: Path
    metrics: dict[str, Any]
    model: Backbone
    history: list[dict[str, Any]] = field(default_factory=list)


def _table_rows(guarded: bool) -> list[tuple[str, str]]:
    if not guarded:
        return [("ACC (clean test)", "acc"), ("ASR (triggered test)", "asr")]
    return [
        ("ACC, per-sample protocol (each image alone)", "acc"),
        ("ASR, per-sample protocol (each image alone)", "asr"),
        ("ACC, paper protocol (clean batches)", "acc_paper"),
        ("ASR, paper protocol (all-triggered batches)", "asr_paper"),
    ]


def data_description(data: ImageDataset) -> dict[str, Any]:
    """What a trained model takes: its classes, image shape and the normalisation it was trained with."""
    return {"classes": list(data.classes), "image_shape": list(data.image_shape), "mean": list(data.mean),
            "std": list(data.std)}  # fmt: skip


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EigenguardError(f"device '{name}' asked for, but CUDA is not available here; allowed: auto, cpu")
    return device


def _run_path(config: TrainConfig) -> Path:
    if config.out:
        return Path(config.out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(config.runs_dir) / f"{config.run_name()}_{stamp}"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during a run: its directory holds the last complete epoch's checkpoint."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def train(
    config: TrainConfig, *, progress: bool = True, console: Console | None = None, resume: bool = False
) -> RunResult:
    """Run one training job as `config` describes and write its run directory.

    resume=True: `config.out` is an interrupted run of this config; it continues from its checkpoints
    (training/checkpoint.py) and ends as the uninterrupted run would have."""
    console = console or Console(stderr=True, quiet=not progress)
    started = time.perf_counter()
    source_commit()  # read (and cached) before training: the code this process runs, not a later checkout

    # -- 1. check and load everything before writing anything --------------------------------------
    if config.detector.name != DETECTOR_NONE:
        raise EigenguardError(f"detector {config.detector.name!r} is set: that is a scan; run eigenguard scan")
    config = resolve(config)  # names checked, every attack and defense option explicit
    device = resolve_device(config.device)
    out = _run_path(config)
    if resume:
        check_resumable_run_dir(out)
        Checkpoints(out).check(device)
    else:
        check_new_run_dir(out)
    defense = build_defense(config)
    say = functools.partial(console.print, markup=False)  # an attack's progress lines are not rich markup
    data = prepare_data(config, device, needs_clean_pool=defense.needs_clean_pool, say=say)

    # -- 2. the run directory: config and split first, so a crashed run still says what it was -----
    run = RunDirectory(out, resume=resume)
    run.set_state("running")
    try:
        result = _train_in(run, config, device, defense, data, console, progress, started, resume)
    except KeyboardInterrupt:
        run.set_state("interrupted")
        raise RunInterrupted(out) from None
    except BaseException as e:
        run.set_state("failed", error=f"{type(e).__name__}: {e}".splitlines()[0])
        raise
    finally:
        run.close()
    run.set_state("finished")
    return result


def _train_in(
    run: RunDirectory,
    config: TrainConfig,
    device: torch.device,
    defense: Defense,
    data: PreparedData,
    console: Console,
    progress: bool,
    started: float,
    resume: bool,
) -> RunResult:
    out = run.path
    if resume:
        check_same_split(out, data.split_record())
    else:
        run.write_config(config.model_dump())
        run.save_split(data.split_record())
    console.print(
        f"[bold]{config.run_name()}[/] on {device}: {len(data.train_set)} training images "
        f"({len(data.poison_indices)} poisoned), {len(data.clean_pool)} clean images for the defender, "
        f"{len(data.test)} test images -> {out}"
    )

    # -- 3. the defense trains (or repairs) the model ----------------------------------------------
    checkpoints = Checkpoints(out, resume=resume)
    trainer = Trainer(
        config, device, data.normalize, data.flip, data.test, data.asr_set,
        log=run.append_log, console=console, progress=progress, checkpoints=checkpoints, restore_log=run.set_log,
    )  # fmt: skip
    if device.type == "cpu" and not resume:  # say what the wait will be before it starts
        epoch = trainer.seconds_per_epoch(data.train_set)
        hint = "; --profile quick is sized for a CPU" if config.profile != "quick" else ""
        epochs = f"{config.epochs} epoch{'s' * (config.epochs != 1)}"
        console.print(
            f"profile {config.profile}: {epochs}, about {_duration(epoch * config.epochs)} of plain training on "
            f"this CPU ({epoch:.0f} s an epoch, timed on two batches; a defense adds its own){hint}"
        )
    # where this setting's no-defense model lives in the cache (hashes the training set: computed once)
    entry = backdoored_entry(config, data.train_set, device)
    backdoored: dict[str, Any] = {}

    def backdoored_model() -> torch.nn.Module:
        t0 = time.perf_counter()

        def train_plain(plain: TrainConfig, resume: bool) -> RunResult:
            return train(plain, progress=progress, console=console, resume=resume)

        model, metrics, hit = load_or_train_backdoored(config, entry, device, trainer.new_model(), train_plain)
        # a defense may ask twice (trigger inversion returns the model it read): the first call says whether
        # it was trained here, and every call's time is the cache's, not the defense's
        backdoored.setdefault("cache_hit", hit)
        backdoored.update(metrics=metrics, seconds=backdoored.get("seconds", 0.0) + time.perf_counter() - t0)
        return model

    context = DefenseContext(config, trainer, data.train_set, data.clean_pool, data.poison_indices, backdoored_model)
    t0 = time.perf_counter()
    model, report = defense.run(context)
    defense_seconds = time.perf_counter() - t0 - backdoored.get("seconds", 0.0)
    if context.set_aside_indices is not None:
        run.write_set_aside(set_aside_rows(config, data, context.set_aside_indices, context.set_aside_how))

    # -- 4. final numbers: the last fit's evaluation, or a fresh one after a post-training repair ----
    last = trainer.history[-1] if trainer.history else {}
    if defense.final_evaluation or last.get("acc") in (None, ""):
        final = trainer.evaluate(model)
        trainer.log({"phase": "final", **{k: "" if v is None else round(v, 6) for k, v in final.items()}})
    else:
        final = {k: None if last.get(k) in (None, "") else last[k] for k in ("acc", "asr", "acc_paper", "asr_paper")}
    guarded = bool(find_guards(model))
    plain = backdoored.get("metrics") or cached_plain_metrics(entry)
    cpu = cpu_name()
    metrics: dict[str, Any] = {
        "acc": final["acc"],
        "asr": final["asr"],
        "protocol": "per-sample" if guarded else "plain",
        **({"acc_paper": final["acc_paper"], "asr_paper": final["asr_paper"]} if guarded else {}),
        "train_loss": next((r["train_loss"] for r in reversed(trainer.history) if "train_loss" in r), None),
        "epochs": config.epochs,
        "train_images": len(data.train_set),
        "poisoned_images": len(data.poison_indices),
        "clean_images": len(data.clean_pool),
        "test_images": len(data.test),
        "asr_images": 0 if data.asr_set is None else len(data.asr_set),
        "train_seconds": round(trainer.train_seconds, 3),
        "train_images_per_second": (
            round(trainer.images_trained / trainer.train_seconds, 1) if trainer.train_seconds else None
        ),
        "total_seconds": round(time.perf_counter() - started, 3),
        "resumed": resume,  # the wall times above count this process only, not the one interrupted
        # what was read, whatever data_root said, and what the model takes (load_model needs no dataset)
        "data": {**data.source, **data_description(data.train_set)},
        "attack": data.attack.describe() if data.attack else None,
        "defense": defense.describe(),
        "defense_report": report,
        # what the defense cost: its own wall time (a cached backdoored model it starts from is not counted)
        # and that time over plain training of the same configuration, when that run is in the cache
        "defense_seconds": round(defense_seconds, 3),
        "plain_train_seconds": None if plain is None else plain["train_seconds"],
        "defense_cost_vs_plain": None if plain is None else round(defense_seconds / plain["train_seconds"], 3),
        **(
            {
                "backdoored_acc": plain["acc"],
                "backdoored_asr": plain["asr"],
                "backdoored_cache_hit": backdoored["cache_hit"],
                "backdoored_run": plain.get("cache_entry"),
            }
            if "metrics" in backdoored
            else {}
        ),
        "environment": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
            # CPU results are bit-identical for a seed on one CPU model, not across models: record which
            "cpu": cpu,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the SIMD kernels torch chose
            "torch": torch.__version__,
            "python": platform.python_version(),
            "eigenguard": __version__,
            "commit": source_commit(),  # which code trained it (read at the start), from a git checkout
            "threads": torch.get_num_threads(),
            "flip": data.flip,
            "amp_bf16": trainer.amp,
        },
    }
    run.save_model(model.state_dict(), config.model_dump())
    run.write_metrics(metrics)
    checkpoints.remove()  # the model and the metrics are written: the run is finished
    if config.defense.name == DEFENSE_NONE:
        # the backdoored model of this setting: post-training defenses of the same config will reuse it
        store_plain_run(entry, out)

    table = Table(title=config.run_name())
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, key in _table_rows(guarded):
        value = metrics.get(key)
        table.add_row(label, "-" if value is None else f"{100 * value:.2f}%")
    console.print(table)
    return RunResult(run_dir=out, metrics=metrics, model=model, history=trainer.history)


def set_aside_rows(config: TrainConfig, data: PreparedData, indices: torch.Tensor, how: str) -> list[list[Any]]:
    """set_aside.csv's rows: each image's index into the training set (as a scan's suspects.csv counts), its
    file (own images), its label, what the defense did with it, and whether it was poisoned (a planted
    attack: the truth, for the reader only)."""
    labels = data.train_set.labels.cpu()[indices]
    files = training_files(config, data, indices)
    poisoned = set(data.poison_indices.cpu().tolist())
    planted = config.attack.name != ATTACK_NONE
    rows: list[list[Any]] = [["index", "file", "label", "set_aside", *(["poisoned"] if planted else [])]]
    for n, (i, label) in enumerate(zip(indices.tolist(), labels.tolist(), strict=True)):
        file = str(files[n]) if files else ""
        rows.append([i, file, data.train_set.classes[label], how, *([int(i in poisoned)] if planted else [])])
    return rows


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC"), from /proc/cpuinfo on Linux, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def source_commit() -> str | None:
    """The git commit of the checkout this package runs from, "+dirty" added when its `src/` has uncommitted
    changes; None for an installed copy or without git. Read once per process (its first run), so a
    long-lived worker reports the checkout its code was imported from, not one committed meanwhile."""
    root = Path(__file__).resolve().parents[3]  # src/eigenguard/pipeline/run.py -> the checkout
    if not (root / ".git").exists():
        return None
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        changes = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if changes.stdout.strip() else "")
