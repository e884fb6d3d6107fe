"""The end-to-end run: data -> split -> poison -> model -> train -> ACC / ASR -> run directory.

`train(config)` is what `eigenguard train` calls. Everything that can be wrong with the input is checked
and loaded before the run directory is created, so bad input leaves nothing behind.

Seeds: one master seed, and one derived stream per purpose, so changing e.g. the model does not change
which samples are poisoned: split = seed, poison choice = seed + 1, trigger = seed, weights = seed + 2,
batch order and augmentation = seed + 3.
"""

import platform
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import eigenguard
from eigenguard.attacks import create_attack
from eigenguard.config import ATTACK_NONE, TrainConfig
from eigenguard.data import load_dataset
from eigenguard.data.split import defense_split
from eigenguard.errors import EigenguardError
from eigenguard.models import Backbone, create_model
from eigenguard.run_directory import RunDirectory, check_new_run_dir
from eigenguard.training.augment import Normalize
from eigenguard.training.evaluate import accuracy
from eigenguard.training.loop import train_one_epoch
from eigenguard.training.schedule import lr_multiplier

# Flipping a digit or a traffic sign changes its meaning; these datasets train without it.
NO_FLIP_DATASETS = frozenset({"mnist", "gtsrb"})
CROP_PAD = 4


@dataclass
class RunResult:
    """What a finished run hands back to Python callers."""

    run_dir: Path
    metrics: dict[str, Any]
    model: Backbone
    history: list[dict[str, Any]] = field(default_factory=list)


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


def train(config: TrainConfig, *, progress: bool = True, console: Console | None = None) -> RunResult:
    """Run one training job as `config` describes and write its run directory."""
    console = console or Console(stderr=True, quiet=not progress)
    started = time.perf_counter()

    # -- 1. check and load everything before writing anything --------------------------------------
    device = resolve_device(config.device)
    out = _run_path(config)
    check_new_run_dir(out)
    train_full, test = load_dataset(config.dataset, config.data_root, config.download, config.image_size)
    split = defense_split(len(train_full), config.defense_fraction, config.seed, config.train_subset)
    train_set = train_full.subset(split.train).to(device)
    test = test.to(device)

    attack, asr_set = None, None
    poison_indices = torch.empty(0, dtype=torch.int64)
    if config.attack != ATTACK_NONE:
        attack = create_attack(
            config.attack,
            train_set.image_shape,
            target=config.target,
            seed=config.seed,
            **config.attack_options,
        )
        poisoned = attack.poison(train_set, config.poison_rate, torch.Generator().manual_seed(config.seed + 1))
        train_set = poisoned.dataset
        poison_indices = poisoned.poison_indices.cpu()
        asr_set = attack.asr_test_set(test)

    torch.manual_seed(config.seed + 2)
    model = create_model(
        config.model,
        in_channels=train_set.image_shape[0],
        num_classes=train_set.num_classes,
        width=config.width,
    )
    model = model.to(device)
    amp = device.type == "cuda"
    if amp:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if config.compile else model

    flip = config.flip if config.flip is not None else config.dataset not in NO_FLIP_DATASETS
    normalize = Normalize(train_set.mean, train_set.std, device)
    steps_per_epoch = max(len(train_set) // config.batch_size, 1)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(config.schedule, total_steps, round(config.warmup_epochs * steps_per_epoch))
    )
    generator = torch.Generator(device=device).manual_seed(config.seed + 3)

    # -- 2. the run directory: config and split first, so a crashed run still says what it was -----
    run = RunDirectory(out)
    run.write_config(config.model_dump())
    run.save_split(
        {
            "train_indices": split.train,
            "defense_indices": split.defense,
            # indices into the original training set of the samples that were poisoned
            "poison_indices": split.train[poison_indices],
        }
    )
    console.print(
        f"[bold]{config.run_name()}[/] on {device}: {len(train_set)} training images "
        f"({len(poison_indices)} poisoned), {len(test)} test images -> {out}"
    )

    # -- 3. train, evaluating ACC and ASR after every epoch ----------------------------------------
    history: list[dict[str, Any]] = []
    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    )
    train_seconds = 0.0
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("train", total=total_steps, epoch=f"1/{config.epochs}", loss=float("nan"))
        for epoch in range(1, config.epochs + 1):
            done_before = (epoch - 1) * steps_per_epoch

            def on_step(step: int, loss: float, done_before: int = done_before, epoch: int = epoch) -> None:
                bar.update(task, completed=done_before + step, loss=loss, epoch=f"{epoch}/{config.epochs}")

            t0 = time.perf_counter()
            stats = train_one_epoch(
                forward,
                optimizer,
                scheduler,
                train_set.images,
                train_set.labels,
                batch_size=config.batch_size,
                normalize=normalize,
                generator=generator,
                crop_pad=CROP_PAD if config.augment else 0,
                flip=flip and config.augment,
                amp=amp,
                on_step=on_step,
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            acc = accuracy(forward, test, normalize, config.eval_batch_size, amp)
            asr = None if asr_set is None else accuracy(forward, asr_set, normalize, config.eval_batch_size, amp)
            row = {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": round(stats["train_loss"], 6),
                "train_acc": round(stats["train_acc"], 6),
                "acc": round(acc, 6),
                "asr": "" if asr is None else round(asr, 6),
                "epoch_seconds": round(epoch_seconds, 3),
            }
            history.append(row)
            run.append_log(row)
            asr_text = "" if asr is None else f"  ASR {100 * asr:5.1f}%"
            bar.console.print(
                f"epoch {epoch:>3}/{config.epochs}  loss {stats['train_loss']:.4f}  "
                f"ACC {100 * acc:5.1f}%{asr_text}  ({epoch_seconds:.1f}s)"
            )

    # -- 4. final record ---------------------------------------------------------------------------
    final = history[-1]
    metrics: dict[str, Any] = {
        "acc": final["acc"],
        "asr": None if attack is None else final["asr"],
        "train_loss": final["train_loss"],
        "epochs": config.epochs,
        "train_images": len(train_set),
        "poisoned_images": len(poison_indices),
        "test_images": len(test),
        "asr_images": 0 if asr_set is None else len(asr_set),
        "train_seconds": round(train_seconds, 3),
        "train_images_per_second": round(steps_per_epoch * config.batch_size * config.epochs / train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 3),
        "attack": attack.describe() if attack else None,
        "environment": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "eigenguard": eigenguard.__version__,
            "threads": torch.get_num_threads(),
            "flip": flip,
            "amp_bf16": amp,
        },
    }
    run.save_model(model.state_dict(), config.model_dump())
    run.write_metrics(metrics)

    table = Table(title=config.run_name())
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("ACC (clean test)", f"{100 * metrics['acc']:.2f}%")
    table.add_row("ASR (triggered non-target test)", "-" if attack is None else f"{100 * metrics['asr']:.2f}%")
    console.print(table)
    return RunResult(run_dir=out, metrics=metrics, model=model, history=history)
