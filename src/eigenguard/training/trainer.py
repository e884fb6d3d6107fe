"""The run's trainer: how this run trains and evaluates a model, shared by every defense.

`fit` is the recipe of the config (SGD with momentum, its schedule and warm-up, device-side crop and flip)
with the knobs defenses need: another lr, schedule or epoch count (fine-tuning), another loss (ABL,
NAD), extra rows per batch and a hook around each epoch (EigenGuard's lowest-loss samples). Every epoch
is one row of the run's log.csv, tagged with its phase; ACC and ASR are measured every `eval_every`
epochs and at the end of every fit.
"""

import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from eigenguard.config import TrainConfig
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.guard import find_guards
from eigenguard.models import Backbone, create_model
from eigenguard.training.augment import Normalize
from eigenguard.training.evaluate import evaluate_protocols
from eigenguard.training.loop import LossFn, train_one_epoch
from eigenguard.training.schedule import lr_multiplier

CROP_PAD = 4


class EpochHook(Protocol):
    """Runs around each training epoch (EigenGuard uses it to choose and attach its lowest-loss samples)."""

    def before_epoch(self, epoch: int, model: nn.Module) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """Extra normalised rows to append to every batch (or None), and extra log fields."""
        ...

    def after_epoch(self, epoch: int) -> None: ...


def format_eval(values: dict[str, Any]) -> str:
    parts = []
    for key, label in (("acc", "ACC"), ("asr", "ASR"), ("acc_paper", "ACC(paper)"), ("asr_paper", "ASR(paper)")):
        if values.get(key) not in (None, ""):
            parts.append(f"{label} {100 * values[key]:5.1f}%")
    return "  ".join(parts) if parts else "(not evaluated)"


class Trainer:
    """Training and evaluation for one run. `log` receives every epoch row (the run directory's log)."""

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        normalize: Normalize,
        flip: bool,
        test: ImageDataset,
        asr_set: ImageDataset | None,
        *,
        log: Callable[[dict[str, Any]], None] | None = None,
        console: Console | None = None,
        progress: bool = True,
    ) -> None:
        self.config, self.device, self.normalize, self.flip = config, device, normalize, flip
        self.test, self.asr_set = test, asr_set
        self.amp = device.type == "cuda"  # bf16 autocast + channels_last on CUDA; plain float32 on CPU
        self.generator = torch.Generator(device=device).manual_seed(config.seed + 3)  # batches, augmentation
        self.console = console or Console(stderr=True, quiet=not progress)
        self.progress = progress
        self._log = log
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0  # every fit of this run, summed
        self.images_trained = 0  # images through the training loop (augmented batches), every fit summed

    # -- models ----------------------------------------------------------------------------------

    def new_model(self, num_classes: int | None = None, seed_offset: int = 2) -> Backbone:
        """A freshly initialised model of the config's architecture (weights seeded by seed + 2)."""
        torch.manual_seed(self.config.seed + seed_offset)
        model = create_model(
            self.config.model,
            in_channels=self.test.image_shape[0],
            num_classes=num_classes or self.test.num_classes,
            width=self.config.width,
        )
        return self.place(model)

    def place(self, model: nn.Module) -> Any:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.amp else model

    def forward_of(self, model: nn.Module) -> nn.Module:
        return torch.compile(model) if self.config.compile else model

    # -- evaluation -------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module) -> dict[str, float | None]:
        """ACC and ASR (both protocols when the model holds EigenGuards)."""
        return evaluate_protocols(
            self.forward_of(model),
            find_guards(model),
            self.test,
            self.asr_set,
            self.normalize,
            eval_batch_size=self.config.eval_batch_size,
            paper_batch_size=self.config.batch_size,
            amp=self.amp,
        )

    def log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self._log is not None:
            self._log(row)

    # -- training ---------------------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        data: ImageDataset,
        *,
        epochs: int,
        phase: str = "train",
        lr: float | None = None,
        schedule: str | None = None,
        warmup_epochs: float | None = None,
        weight_decay: float | None = None,
        batch_size: int | None = None,
        augment: bool | None = None,
        loss_fn: LossFn | None = None,
        hook: EpochHook | None = None,
    ) -> list[dict[str, Any]]:
        """Train `model` on `data` for `epochs`; unset knobs take the config's values. Returns this fit's rows."""
        cfg = self.config
        batch_size = batch_size or cfg.batch_size
        augment = cfg.augment if augment is None else augment
        steps_per_epoch = max(len(data) // batch_size, 1)
        total_steps = steps_per_epoch * epochs
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr if lr is None else lr,
            momentum=cfg.sgd_momentum,
            weight_decay=cfg.weight_decay if weight_decay is None else weight_decay,
        )
        warmup = cfg.warmup_epochs if warmup_epochs is None else warmup_epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multiplier(schedule or cfg.schedule, total_steps, round(warmup * steps_per_epoch))
        )
        forward = self.forward_of(model)
        rows: list[dict[str, Any]] = []
        columns = (
            TextColumn(f"{phase} {{task.fields[epoch]}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, disable=not self.progress) as bar:
            task = bar.add_task(phase, total=total_steps, epoch=f"1/{epochs}", loss=float("nan"))
            for epoch in range(1, epochs + 1):
                done_before = (epoch - 1) * steps_per_epoch

                def on_step(step: int, loss: float, done_before: int = done_before, epoch: int = epoch) -> None:
                    bar.update(task, completed=done_before + step, loss=loss, epoch=f"{epoch}/{epochs}")

                t0 = time.perf_counter()
                extra, fields = hook.before_epoch(epoch, forward) if hook else (None, {})
                stats = train_one_epoch(
                    forward,
                    optimizer,
                    scheduler,
                    data.images,
                    data.labels,
                    batch_size=batch_size,
                    normalize=self.normalize,
                    generator=self.generator,
                    crop_pad=CROP_PAD if augment else 0,
                    flip=self.flip and augment,
                    amp=self.amp,
                    on_step=on_step,
                    extra_inputs=extra,
                    loss_fn=loss_fn,
                )
                if hook:
                    hook.after_epoch(epoch)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds = time.perf_counter() - t0
                self.train_seconds += seconds
                self.images_trained += min(steps_per_epoch * batch_size, len(data))
                row: dict[str, Any] = {
                    "phase": phase,
                    "epoch": epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": round(stats["train_loss"], 6),
                    "train_acc": round(stats["train_acc"], 6),
                }
                evaluated: dict[str, Any] = {}
                if epoch % cfg.eval_every == 0 or epoch == epochs:
                    evaluated = self.evaluate(model)
                row.update({k: "" if v is None else round(v, 6) for k, v in evaluated.items()})
                row.update(fields)
                row["epoch_seconds"] = round(seconds, 3)
                rows.append(row)
                self.log(row)
                bar.console.print(
                    f"{phase} {epoch:>3}/{epochs}  loss {stats['train_loss']:.4f}  "
                    f"{format_eval(evaluated)}  ({seconds:.1f}s)"
                )
        return rows
