"""The run's trainer: how this run trains and evaluates a model, shared by every defense.

`recipe` is the config's training recipe (training/fit.py) with the knobs defenses turn: another lr,
schedule or epoch count (fine-tuning), no augmentation (ABL's unlearning). `fit` trains with it and adds
another loss (ABL, NAD) and a hook around each epoch (EigenGuard's lowest-loss samples). Every epoch
is one row of the run's log.csv, tagged with its phase; ACC and ASR are measured every `eval_every`
epochs and at the end of every fit.
"""

import json
import math
import time
from collections.abc import Callable
from typing import Any, Protocol, TypedDict, Unpack

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from eigenguard.config import TrainConfig
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import Normalize, augment
from eigenguard.errors import EigenguardError
from eigenguard.guard import find_guards
from eigenguard.models import Backbone, create_model
from eigenguard.training.checkpoint import Checkpoints
from eigenguard.training.evaluate import evaluate_protocols
from eigenguard.training.fit import CROP_PAD, Fit, Recipe
from eigenguard.training.loop import BatchFn, LossFn


class RecipeKnobs(TypedDict, total=False):
    """What a defense may change of the config's recipe for one fit (None or absent: the config's value)."""

    lr: float | None
    schedule: str | None
    warmup_epochs: float | None
    weight_decay: float | None
    batch_size: int | None
    augment: bool | None


class EpochHook(Protocol):
    """Runs around each epoch of a fit (EigenGuard's: choose the epoch's anchors, attach them to the guard)."""

    def before_epoch(self, epoch: int, model: nn.Module) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """Normalised rows to append to every batch of the epoch (or None), and extra log fields."""
        ...

    def after_epoch(self, epoch: int) -> None: ...

    def generators(self) -> dict[str, torch.Generator]:
        """The random streams the hook draws from (checkpointed and restored with the fit)."""
        ...

    def sample_losses(self) -> torch.Tensor | None:
        """A buffer (one float per training sample) the training steps fill with each sample's loss, or
        None (checkpointed and restored with the fit)."""
        ...


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
        checkpoints: Checkpoints | None = None,
        restore_log: Callable[[list[dict[str, Any]]], None] | None = None,
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
        # checkpoints after every epoch of every fit (training/checkpoint.py), read back fit by fit in the
        # order the run calls them when resuming; `restore_log` hands the run's log back to its writer
        self.checkpoints, self._restore_log = checkpoints, restore_log
        self.fits = 0

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

    def seconds_per_epoch(self, data: ImageDataset, steps: int = 2) -> float:
        """Plain training's seconds per epoch over `data`, timed on `steps` batches of a throwaway model after
        one warm-up step (the random number streams are left as they were)."""
        batch = min(self.config.batch_size, len(data))
        with torch.random.fork_rng(devices=[]):
            model = self.new_model()
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
            x, y = self.normalize(data.images[:batch]), data.labels[:batch]
            timings = []
            for _ in range(steps + 1):
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                timings.append(time.perf_counter() - t0)
        return min(timings[1:]) * max(len(data) // batch, 1)

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

    # -- a defense's own optimisation, checkpointed as a phase (training/checkpoint.py) ------------------

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """The run's training augmentation (crop and, for datasets that allow it, flip; none with
        `augment: false`), drawn from the trainer's generator: for a defense's own training loop."""
        recipe = self.recipe(1)
        return augment(images, recipe.crop_pad, recipe.flip, self.generator)

    def phase_every(self, steps: int) -> int:
        """How often a phase of `steps` iterations checkpoints: `checkpoint_every`, else every tenth of it."""
        return self.config.checkpoint_every or max(1, steps // 10)

    def save_phase(
        self,
        name: str,
        step: int,
        steps: int,
        modules: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Checkpoint a defense's own training loop after `step` of `steps` (its epochs or iterations): the
        modules' weights, the optimizers' state, other `tensors` it optimises (ANP's masks), this trainer's
        random streams and the log rows of phase `name` so far."""
        if self.checkpoints is not None:
            rows = [r for r in self.history if r.get("phase") == name]
            self.checkpoints.save(
                f"phase-{name}", step, steps, modules=modules, optimizers=optimizers,
                generators={"batches": self.generator}, tensors=tensors, record={"log": rows},
            )  # fmt: skip

    def resume_phase(
        self,
        name: str,
        modules: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> int:
        """Restore what `save_phase` saved when resuming and return the step reached (0, nothing restored:
        the loop starts at its beginning); the phase's log rows are logged again."""
        saved = self.checkpoints.resumed(f"phase-{name}", self.device) if self.checkpoints else None
        if saved is None:
            return 0
        saved.restore(modules, optimizers, {"batches": self.generator}, tensors)
        for row in saved.record["log"]:
            self.log(row)
        return saved.step

    def log_tensor(self, phases: tuple[str, ...]) -> torch.Tensor:
        """This run's log rows of `phases` as a uint8 tensor (their JSON), to be stored beside weights."""
        rows = [r for r in self.history if r.get("phase") in phases]
        return torch.frombuffer(bytearray(json.dumps(rows).encode()), dtype=torch.uint8)

    def log_again(self, stored: torch.Tensor) -> None:
        """Log the rows a `log_tensor` holds (a resumed phase, a cached model's fits)."""
        for row in json.loads(stored.cpu().numpy().tobytes().decode()):
            self.log(row)

    # -- training ---------------------------------------------------------------------------------

    def recipe(self, epochs: int, **knobs: Unpack[RecipeKnobs]) -> Recipe:
        """The config's recipe for `epochs`, with the knobs a defense turns (unset: the config's value)."""
        cfg = self.config
        augment = knobs.get("augment")
        augment = cfg.augment if augment is None else augment
        lr, warmup, decay = knobs.get("lr"), knobs.get("warmup_epochs"), knobs.get("weight_decay")
        return Recipe(
            epochs=epochs,
            batch_size=knobs.get("batch_size") or cfg.batch_size,
            lr=cfg.lr if lr is None else lr,
            momentum=cfg.sgd_momentum,
            weight_decay=cfg.weight_decay if decay is None else decay,
            schedule=knobs.get("schedule") or cfg.schedule,
            warmup_epochs=cfg.warmup_epochs if warmup is None else warmup,
            crop_pad=CROP_PAD if augment else 0,
            flip=self.flip and augment,
        )

    def fit(
        self,
        model: nn.Module,
        data: ImageDataset,
        *,
        epochs: int,
        phase: str = "train",
        loss_fn: LossFn | None = None,
        hook: EpochHook | None = None,
        make_batch: BatchFn | None = None,
        **knobs: Unpack[RecipeKnobs],
    ) -> list[dict[str, Any]]:
        """Train `model` on `data` with `self.recipe(epochs, **knobs)`, logging every epoch (evaluating every
        `eval_every` and at the end) and checkpointing after it. `make_batch(idx)`: the batch's inputs, built
        by the defense (loop.train_one_epoch), drawing from `self.generator`. Returns this fit's log rows."""
        recipe = self.recipe(epochs, **knobs)
        forward = self.forward_of(model)
        streams = hook.generators() if hook else {}
        run = Fit(
            forward, data.images, data.labels, recipe, normalize=self.normalize, generator=self.generator,
            amp=self.amp, loss_fn=loss_fn, sample_losses=hook.sample_losses() if hook else None, make_batch=make_batch,
        )  # fmt: skip
        self.fits += 1
        name = f"fit-{self.fits}"
        first_row = self._resume(run, name, model, streams)
        if run.finished:
            return self.history[first_row:]
        with EpochBar(self.console, self.progress, phase, epochs, recipe.steps_per_epoch(len(data))) as bar:
            while not run.finished:
                epoch, t0 = run.done + 1, time.perf_counter()
                extra, fields = hook.before_epoch(epoch, forward) if hook else (None, {})
                stats = run.epoch(extra, bar.on_step(epoch))
                if hook:
                    hook.after_epoch(epoch)
                row = self._epoch_row(phase, run, stats, model, len(data), t0, fields)
                self.log(row)
                if self.checkpoints is not None:
                    counters = {"train_seconds": self.train_seconds, "images_trained": self.images_trained}
                    record = {"log": self.history, "counters": {**counters, "first_row": first_row}}
                    run.save(self.checkpoints, name, model=model, generators=streams, record=record)
                bar.print(f"{phase} {epoch:>3}/{epochs}  loss {stats['train_loss']:.4f}  {format_eval(row)}  "
                          f"({row['epoch_seconds']:.1f}s)")  # fmt: skip
        return self.history[first_row:]

    def _resume(self, run: Fit, name: str, model: nn.Module, streams: dict[str, torch.Generator]) -> int:
        """Where fit `name` starts logging: restore its state when the interrupted run had checkpointed it
        (the run's log and time counters with it); returns the index of its first log row."""
        saved = self.checkpoints.resumed(name, self.device) if self.checkpoints else None
        if saved is None:
            return len(self.history)
        run.resume(saved, model=model, generators=streams)
        self.history = list(saved.record["log"])
        if self._restore_log is not None:
            self._restore_log(self.history)
        counters = saved.record["counters"]
        self.train_seconds, self.images_trained = counters["train_seconds"], int(counters["images_trained"])
        return int(counters["first_row"])

    def _epoch_row(
        self,
        phase: str,
        run: Fit,
        stats: dict[str, float],
        model: nn.Module,
        samples: int,
        started: float,
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        """The log row of the epoch `run` has just trained, begun at perf_counter() `started` (evaluated every
        `eval_every` and at the end; `fields`: the hook's); a diverged loss stops the run."""
        epoch = run.done
        if not math.isfinite(stats["train_loss"]):  # a diverged model must not be saved or cached
            raise EigenguardError(
                f"training diverged: {phase} epoch {epoch} ended with loss {stats['train_loss']}; "
                "allowed: a finite loss (lower the lr, or check the data)"
            )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        self.train_seconds += seconds
        self.images_trained += min(run.recipe.steps_per_epoch(samples) * run.recipe.batch_size, samples)
        row: dict[str, Any] = {
            "phase": phase,
            "epoch": epoch,
            "lr": run.lr,
            "train_loss": round(stats["train_loss"], 6),
            "train_acc": round(stats["train_acc"], 6),
        }
        evaluated = self.evaluate(model) if epoch % self.config.eval_every == 0 or run.finished else {}
        row |= {k: "" if v is None else round(v, 6) for k, v in evaluated.items()}
        return row | fields | {"epoch_seconds": round(seconds, 3)}


class EpochBar:
    """The progress bar of one fit (nothing when progress is off) and its printed epoch lines."""

    def __init__(self, console: Console, progress: bool, phase: str, epochs: int, steps_per_epoch: int) -> None:
        columns = (
            TextColumn(f"{phase} {{task.fields[epoch]}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
        )
        self.bar = Progress(*columns, console=console, disable=not progress)
        self.epochs, self.steps = epochs, steps_per_epoch
        self.task = self.bar.add_task(phase, total=steps_per_epoch * epochs, epoch=f"1/{epochs}", loss=float("nan"))

    def __enter__(self) -> "EpochBar":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)  # type: ignore[arg-type]

    def on_step(self, epoch: int) -> Callable[[int, float], None]:
        def update(step: int, loss: float) -> None:
            done = (epoch - 1) * self.steps + step
            self.bar.update(self.task, completed=done, loss=loss, epoch=f"{epoch}/{self.epochs}")

        return update

    def print(self, line: str) -> None:
        self.bar.console.print(line)
