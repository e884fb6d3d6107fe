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
from eigenguard.training.checkpoint import Checkpoints, Midway, PhaseState
from eigenguard.training.evaluate import evaluate_protocols
from eigenguard.training.fit import CROP_PAD, Recipe, Resume, Scheduler, fit
from eigenguard.training.loop import BatchFn, EpochPosition, LossFn


class RecipeKnobs(TypedDict, total=False):
    """What a defense may change of the config's recipe for one fit (None or absent: the config's value)."""

    lr: float | None
    schedule: str | None
    warmup_epochs: float | None
    weight_decay: float | None
    batch_size: int | None
    augment: bool | None


class EpochHook(Protocol):
    """Runs around each training epoch (EigenGuard uses it to choose and attach its lowest-loss samples)."""

    def before_epoch(self, epoch: int, model: nn.Module) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """Extra normalised rows to append to every batch (or None), and extra log fields."""
        ...

    def after_epoch(self, epoch: int) -> None: ...

    def generators(self) -> dict[str, torch.Generator]:
        """The random streams the hook draws from (a checkpoint saves and a resumed fit restores them)."""
        ...

    def resume_epoch(self, epoch: int, extra: torch.Tensor | None) -> None:
        """An epoch resumed from a checkpoint within it: attach the rows `before_epoch` had chosen."""
        ...

    def appends_rows(self) -> bool:
        """Whether `before_epoch`'s rows are appended to every batch (else the hook uses them itself; either
        way a checkpoint within the epoch saves them and `resume_epoch` gets them back)."""
        ...

    def sample_losses(self) -> torch.Tensor | None:
        """A buffer (one float per training sample) the training steps fill with each sample's loss, or
        None; the checkpoints save it and a resumed fit restores it."""
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
        resume: bool = False,
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
        # checkpoints after every epoch of every fit (training/checkpoint.py); `resume`: read them back,
        # fit by fit in the order the run calls them; `restore_log` hands the run's log back to its writer
        self.checkpoints, self.resume, self._restore_log = checkpoints, resume, restore_log
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

    def resumed_phase(self, name: str) -> PhaseState | None:
        """Phase `name`'s state from before the run was interrupted (None: it starts from its beginning)."""
        return self.checkpoints.phase(name, self.device) if self.checkpoints and self.resume else None

    def save_phase_state(
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
        if self.checkpoints is None:
            return
        saved = {f"tensor.{k}": v.detach() for k, v in (tensors or {}).items()}
        saved |= {f"module.{m}.{k}": v for m, module in modules.items() for k, v in module.state_dict().items()}
        for o, optimizer in optimizers.items():
            for i, values in optimizer.state_dict()["state"].items():
                for key, value in values.items():
                    saved[f"optimizer.{o}.{i}.{key}"] = (
                        value if isinstance(value, torch.Tensor) else torch.tensor(value)
                    )
        saved["log"] = self.log_tensor((name,))
        self.checkpoints.save_phase(name, step, steps, saved, {"batches": self.generator})

    def load_phase_state(
        self,
        name: str,
        modules: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> int:
        """Restore what `save_phase_state` saved when resuming (0 when there is nothing: start the loop at the
        beginning); returns the step reached. `tensors` are restored in place; the phase's log rows are
        logged again."""
        saved = self.resumed_phase(name)
        if saved is None:
            return 0
        with torch.no_grad():
            for k, v in (tensors or {}).items():
                v.copy_(saved.tensors[f"tensor.{k}"])
        for m, module in modules.items():
            prefix = f"module.{m}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in saved.tensors.items() if k.startswith(prefix)})
        for o, optimizer in optimizers.items():
            state = optimizer.state_dict()
            prefix = f"optimizer.{o}."
            state["state"] = {}
            for key, value in saved.tensors.items():
                if key.startswith(prefix):
                    index, field = key[len(prefix) :].split(".", 1)
                    state["state"].setdefault(int(index), {})[field] = value
            optimizer.load_state_dict(state)
        self.generator.set_state(saved.generators["batches"])
        torch.set_rng_state(saved.generators["torch-global"])
        self.log_again(saved.tensors["log"])
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
        """Train `model` on `data` with `self.recipe(epochs, **knobs)`, evaluating and logging every epoch.
        `make_batch(idx)`: the batch's inputs, built by the defense (loop.train_one_epoch), drawing from
        `self.generator`.

        Returns this fit's log rows."""
        recipe = self.recipe(epochs, **knobs)
        steps_per_epoch = recipe.steps_per_epoch(len(data))
        forward = self.forward_of(model)
        self.fits += 1
        index, first_row = self.fits, len(self.history)
        streams = {"batches": self.generator, **(hook.generators() if hook else {})}
        losses = hook.sample_losses() if hook else None
        buffers = {} if losses is None else {"sample_losses": losses}
        resume, midway = None, None
        state = self.checkpoints.state(index, self.device) if self.checkpoints and self.resume else None
        if state is not None:  # this fit ran before the run was interrupted: its state at its last epoch's end
            model.load_state_dict(state.model)
            for name, gen in streams.items():
                gen.set_state(state.generators[name])
            torch.set_rng_state(state.generators["torch-global"])
            for name, buffer in buffers.items():
                buffer.copy_(state.buffers[name])
            self.history = list(state.log)
            if self._restore_log is not None:
                self._restore_log(self.history)
            self.train_seconds = state.counters["train_seconds"]
            self.images_trained = int(state.counters["images_trained"])
            first_row = int(state.counters["first_row"])
            if state.finished:
                return self.history[first_row:]
            midway = state.midway
            resume = Resume(state.epoch, state.optimizer, state.scheduler, None if midway is None else midway.at)
        rows: list[dict[str, Any]] = list(self.history[first_row:])
        columns = (
            TextColumn(f"{phase} {{task.fields[epoch]}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, disable=not self.progress) as bar:
            task = bar.add_task(phase, total=steps_per_epoch * epochs, epoch=f"1/{epochs}", loss=float("nan"))
            started: dict[str, Any] = {}

            def on_step(epoch: int, step: int, loss: float) -> None:
                done = (epoch - 1) * steps_per_epoch + step
                bar.update(task, completed=done, loss=loss, epoch=f"{epoch}/{epochs}")

            def on_epoch_start(epoch: int) -> torch.Tensor | None:
                if midway is not None and epoch == midway.epoch:  # resumed within this epoch
                    started["t0"] = time.perf_counter() - midway.seconds
                    extra, started["fields"] = midway.extra, dict(midway.fields)
                    if hook:
                        hook.resume_epoch(epoch, extra)
                else:
                    started["t0"] = time.perf_counter()
                    extra, started["fields"] = hook.before_epoch(epoch, forward) if hook else (None, {})
                started["extra"] = extra
                return extra if hook is None or hook.appends_rows() else None

            def checkpoint(
                done: int, optimizer: torch.optim.Optimizer, scheduler: Scheduler, midway: Midway | None = None
            ) -> None:  # after `done` complete epochs (and within the next one, with `midway`)
                assert self.checkpoints is not None
                counters = {"train_seconds": self.train_seconds, "images_trained": self.images_trained}
                self.checkpoints.save(
                    index, done, epochs, model, optimizer, scheduler, streams, self.history,
                    {**counters, "first_row": first_row}, midway=midway, buffers=buffers,
                )  # fmt: skip

            def on_position(
                epoch: int, at: EpochPosition, optimizer: torch.optim.Optimizer, scheduler: Scheduler
            ) -> None:  # within an epoch, every config.checkpoint_every steps
                way = Midway(epoch, at, started["extra"], started["fields"], time.perf_counter() - started["t0"])
                checkpoint(epoch - 1, optimizer, scheduler, way)

            def on_epoch_end(
                epoch: int, stats: dict[str, float], optimizer: torch.optim.Optimizer, scheduler: Scheduler
            ) -> None:
                if hook:
                    hook.after_epoch(epoch)
                if not math.isfinite(stats["train_loss"]):  # a diverged model must not be saved or cached
                    raise EigenguardError(
                        f"training diverged: {phase} epoch {epoch} ended with loss {stats['train_loss']}; "
                        "allowed: a finite loss (lower the lr, or check the data)"
                    )
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds = time.perf_counter() - started["t0"]
                self.train_seconds += seconds
                self.images_trained += min(steps_per_epoch * recipe.batch_size, len(data))
                row: dict[str, Any] = {
                    "phase": phase,
                    "epoch": epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": round(stats["train_loss"], 6),
                    "train_acc": round(stats["train_acc"], 6),
                }
                evaluated: dict[str, Any] = {}
                if epoch % self.config.eval_every == 0 or epoch == epochs:
                    evaluated = self.evaluate(model)
                row.update({k: "" if v is None else round(v, 6) for k, v in evaluated.items()})
                row.update(started["fields"])
                row["epoch_seconds"] = round(seconds, 3)
                rows.append(row)
                self.log(row)
                if self.checkpoints is not None:
                    checkpoint(epoch, optimizer, scheduler)
                bar.console.print(
                    f"{phase} {epoch:>3}/{epochs}  loss {stats['train_loss']:.4f}  "
                    f"{format_eval(evaluated)}  ({seconds:.1f}s)"
                )

            fit(
                forward,
                data.images,
                data.labels,
                recipe,
                normalize=self.normalize,
                generator=self.generator,
                amp=self.amp,
                loss_fn=loss_fn,
                on_epoch_start=on_epoch_start,
                on_epoch_end=on_epoch_end,
                on_step=on_step,
                resume=resume,
                on_position=on_position if self.checkpoints is not None and self.config.checkpoint_every else None,
                position_every=self.config.checkpoint_every,
                sample_losses=losses,
                make_batch=make_batch,
            )
        return rows
