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
from eigenguard.guard import EigenGuard, guard, inference_mode
from eigenguard.models import Backbone, create_model
from eigenguard.run_directory import RunDirectory, check_new_run_dir
from eigenguard.training.augment import Normalize
from eigenguard.training.evaluate import evaluate_protocols, per_sample_loss
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


EVAL_KEYS = ("acc", "asr", "acc_paper", "asr_paper")


def _format_eval(values: dict[str, float | None]) -> str:
    parts = []
    for key, label in (("acc", "ACC"), ("asr", "ASR"), ("acc_paper", "ACC(paper)"), ("asr_paper", "ASR(paper)")):
        if values.get(key) is not None:
            parts.append(f"{label} {100 * values[key]:5.1f}%")
    return "  ".join(parts) if parts else "(not evaluated)"


def _table_rows(guarded: bool) -> list[tuple[str, str]]:
    if not guarded:
        return [("ACC (clean test)", "acc"), ("ASR (triggered non-target test)", "asr")]
    return [
        ("ACC, per-sample protocol (each image alone)", "acc"),
        ("ASR, per-sample protocol (each image alone)", "asr"),
        ("ACC, paper protocol (clean batches)", "acc_paper"),
        ("ASR, paper protocol (all-triggered batches)", "asr_paper"),
    ]


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
    cross_indices = torch.empty(0, dtype=torch.int64)
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
        cross_indices = poisoned.cross_indices.cpu()
        asr_set = attack.asr_test_set(test)

    torch.manual_seed(config.seed + 2)
    model = create_model(
        config.model,
        in_channels=train_set.image_shape[0],
        num_classes=train_set.num_classes,
        width=config.width,
    )
    guards: list[EigenGuard] = []
    if config.defense == "eigenguard":
        guards.append(
            guard(
                model,
                at=config.guard_at,
                k=config.k,
                momentum=config.momentum,
                history_init=config.history_init,
                grad=config.guard_grad,
                precision=config.guard_precision,
            )
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
        model.parameters(), lr=config.lr, momentum=config.sgd_momentum, weight_decay=config.weight_decay
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
            # samples the attack modified without the backdoor (WaNet's noise mode), same indexing
            "cross_indices": split.train[cross_indices],
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
            anchors, anchors_poisoned = None, None
            if guards and config.lowest_loss_samples and epoch > 1:
                # The paper's "100 training samples with the lowest loss", re-chosen before every epoch
                # from the second on (the first has no trained model to rank by). They join every step's
                # decomposition un-augmented and without gradient; the guard returns only the batch rows.
                with inference_mode(guards, "batch"):  # rank as in training; per-sample is 10x slower
                    losses = per_sample_loss(forward, train_set, normalize, config.batch_size, amp)
                chosen = losses.topk(min(config.lowest_loss_samples, len(losses)), largest=False).indices
                anchors = normalize(train_set.images[chosen])
                anchors_poisoned = int(torch.isin(chosen.cpu(), poison_indices).sum())
            for g in guards:
                g.anchor_rows = 0 if anchors is None else len(anchors)
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
                extra_inputs=anchors,
            )
            for g in guards:
                g.anchor_rows = 0
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            row: dict[str, Any] = {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": round(stats["train_loss"], 6),
                "train_acc": round(stats["train_acc"], 6),
            }
            evaluated = {}
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                evaluated = evaluate_protocols(
                    forward,
                    guards,
                    test,
                    asr_set,
                    normalize,
                    eval_batch_size=config.eval_batch_size,
                    paper_batch_size=config.batch_size,
                    amp=amp,
                )
            for key in EVAL_KEYS if guards else EVAL_KEYS[:2]:
                value = evaluated.get(key)
                row[key] = "" if value is None else round(value, 6)
            if guards:
                row["anchors_poisoned"] = "" if anchors_poisoned is None else anchors_poisoned
            row["epoch_seconds"] = round(epoch_seconds, 3)
            history.append(row)
            run.append_log(row)
            bar.console.print(
                f"epoch {epoch:>3}/{config.epochs}  loss {stats['train_loss']:.4f}  "
                f"{_format_eval(evaluated)}  ({epoch_seconds:.1f}s)"
            )

    # -- 4. final record ---------------------------------------------------------------------------
    final = {k: None if v == "" else v for k, v in history[-1].items()}
    metrics: dict[str, Any] = {
        "acc": final["acc"],
        "asr": final["asr"],
        "protocol": "per-sample" if guards else "plain",
        **({"acc_paper": final["acc_paper"], "asr_paper": final["asr_paper"]} if guards else {}),
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
        "defense": config.defense,
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
    for label, key in _table_rows(bool(guards)):
        value = metrics.get(key)
        table.add_row(label, "-" if value is None else f"{100 * value:.2f}%")
    console.print(table)
    return RunResult(run_dir=out, metrics=metrics, model=model, history=history)
