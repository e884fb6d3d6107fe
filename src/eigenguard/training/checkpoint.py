"""Epoch-end checkpoints of a run's fits, and what a resumed run reads back from them.

A run trains through one or more fits (`Trainer.fit`: the victim's model, a defense's retraining or
fine-tuning phases), numbered in the order the run calls them. At the end of every epoch of fit i (and,
with `checkpoint_every: N`, every N steps within one: then also the epoch's batch order, running sums and
the rows its hook attached) the trainer writes `checkpoint/fit-<i>.epoch-<e>[.step-<s>].safetensors` (the
model's state dict, the optimizer's momentum buffers, every random stream the fit draws from: the
trainer's batch-order and augmentation generator, the epoch hook's, torch's global one) and then
`checkpoint/fit-<i>.json` (the epoch reached, the optimizer's and the schedule's positions, the run's log
rows and time counters so far). The JSON is written last and names the tensor file it belongs to, so a
kill between the two leaves the previous, complete pair in force; the previous tensor file is removed
only after the new JSON is in place. Safetensors and JSON only: nothing is unpickled.

A resumed run replays the pipeline from its config (data, poisoning and splits are deterministic): a fit
whose last checkpoint says it finished is not trained again, its end state is loaded; the fit that was
interrupted continues from its last checkpoint; later fits run as usual. On one CPU model the result
is bit-identical to an uninterrupted run (tests/test_resume.py); wall times are not.

A defense's own optimisation that is not a fit (ANP's masks) checkpoints as a phase:
`checkpoint/phase-<name>.step-<s>.safetensors` (its tensors and random streams) and then
`checkpoint/phase-<name>.json` (the step reached), with the same write order and the same guarantees.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from eigenguard.errors import EigenguardError
from eigenguard.run_directory import atomic_save_tensors, atomic_write_text
from eigenguard.training.loop import EpochPosition

DIRECTORY = "checkpoint"
FORMAT = 1


@dataclass
class Midway:
    """A checkpoint within an epoch: the epoch in progress, how far it got, the rows the epoch hook
    attached to its batches (EigenGuard's anchors, chosen at its start) with the hook's log fields, and the
    epoch's seconds so far."""

    epoch: int
    at: EpochPosition
    extra: torch.Tensor | None
    fields: dict[str, Any]
    seconds: float


@dataclass
class FitState:
    """A fit's state at the end of `epoch` (of `epochs`), as read from its checkpoint."""

    index: int
    epoch: int
    epochs: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch's optimizer state dict, momentum buffers as tensors
    scheduler: dict[str, Any]
    generators: dict[str, torch.Tensor]  # name -> get_state() of that generator
    log: list[dict[str, Any]]  # the run's log rows up to here, every fit's
    counters: dict[str, float]
    midway: Midway | None = None  # set when checkpointed within epoch `epoch + 1`
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # the epoch hook's (EpochHook.sample_losses)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs and self.midway is None


@dataclass
class PhaseState:
    """A phase's state after `step` of its `steps`, as read from its checkpoint."""

    step: int
    steps: int
    tensors: dict[str, torch.Tensor]
    generators: dict[str, torch.Tensor]  # name -> get_state() of that generator, torch's global included


class Checkpoints:
    """The run directory's checkpoint folder: `save` after an epoch, `state(i)` to resume fit i."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / DIRECTORY

    def save(
        self,
        index: int,
        epoch: int,
        epochs: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        generators: dict[str, torch.Generator],
        log: list[dict[str, Any]],
        counters: dict[str, float],
        midway: Midway | None = None,
        buffers: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """After `epoch` complete epochs of fit `index` (of `epochs`), or within the next one (`midway`);
        `buffers`: tensors the fit's epoch hook keeps across steps and epochs (EigenGuard's training losses)."""
        try:
            self.path.mkdir(exist_ok=True)
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
            opt = optimizer.state_dict()
            for param, values in opt["state"].items():
                for name, value in values.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"optimizer.{param}.{name}"] = value
            for name, gen in generators.items():
                tensors[f"generator.{name}"] = gen.get_state()
            tensors["generator.torch-global"] = torch.get_rng_state()
            tensors |= {f"buffer.{k}": v for k, v in (buffers or {}).items()}
            tensor_file = f"fit-{index}.epoch-{epoch}.safetensors"
            if midway is not None:
                at = midway.at
                tensors |= {"midway.order": at.order, "midway.loss_sum": at.loss_sum, "midway.correct": at.correct}
                if midway.extra is not None:
                    tensors["midway.extra"] = midway.extra
                tensor_file = f"fit-{index}.epoch-{epoch}.step-{at.step}.safetensors"
            record = {
                "format": FORMAT,
                "fit": index,
                "epoch": epoch,
                "epochs": epochs,
                "tensors": tensor_file,
                "optimizer": {
                    "param_groups": opt["param_groups"],
                    "state": {
                        str(param): {n: v for n, v in values.items() if not isinstance(v, torch.Tensor)}
                        for param, values in opt["state"].items()
                    },
                },
                "scheduler": scheduler.state_dict(),  # plain numbers (LambdaLR keeps None for a function's lambda)
                "log": log,
                "counters": counters,
                "midway": None
                if midway is None
                else {
                    "epoch": midway.epoch,
                    "step": midway.at.step,
                    "seen": midway.at.seen,
                    "fields": midway.fields,
                    "seconds": midway.seconds,
                },
            }
            self._commit(f"fit-{index}.json", tensor_file, tensors, record)
        except OSError as e:  # a full disk, a read-only or vanished directory: the previous one is intact
            raise EigenguardError(
                f"could not write the checkpoint of epoch {epoch} in '{self.path}' ({e.strerror or e}); "
                f"the run stopped, its last complete checkpoint is kept: eigenguard train --resume {self.path.parent}"
            ) from None

    def _commit(self, manifest_name: str, tensor_file: str, tensors: dict[str, torch.Tensor], record: dict) -> None:
        """The tensors first, then the manifest naming them (the commit point), then the previous tensors go."""
        atomic_save_tensors(self.path / tensor_file, tensors, {"format": str(FORMAT)})
        manifest = self.path / manifest_name
        previous = self._tensor_file(manifest)
        atomic_write_text(manifest, json.dumps(record, indent=1) + "\n")
        if previous and previous != tensor_file:
            (self.path / previous).unlink(missing_ok=True)

    def _read(self, manifest: Path, device: torch.device) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """A manifest and its tensors (None where there is no manifest); unreadable: one EigenguardError."""
        if not manifest.is_file():
            return None
        try:
            record = json.loads(manifest.read_text())
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise ValueError(f"format {record.get('format') if isinstance(record, dict) else '?'}")
            tensor_file = self.path / record["tensors"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EigenguardError(f"checkpoint '{manifest}' is unreadable ({e}); it cannot be resumed") from None
        try:
            return record, load_file(str(tensor_file), device=str(device))
        except (OSError, ValueError, SafetensorError) as e:  # the file the manifest names is the bad one
            raise EigenguardError(f"checkpoint '{tensor_file}' is unreadable ({e}); it cannot be resumed") from None

    def _tensor_file(self, manifest: Path) -> str | None:
        if not manifest.is_file():
            return None
        try:
            return json.loads(manifest.read_text()).get("tensors")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None

    def state(self, index: int, device: torch.device) -> FitState | None:
        """Fit `index`'s last complete checkpoint, or None where it never reached an epoch's end."""
        read = self._read(self.path / f"fit-{index}.json", device)
        if read is None:
            return None
        record, tensors = read
        model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        state: dict[int, dict[str, Any]] = {int(p): dict(v) for p, v in record["optimizer"]["state"].items()}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                param, name = key.removeprefix("optimizer.").split(".", 1)
                state.setdefault(int(param), {})[name] = value
        generators = {k.removeprefix("generator."): v.cpu() for k, v in tensors.items() if k.startswith("generator.")}
        midway = None
        if record.get("midway"):
            m = record["midway"]
            at = EpochPosition(
                int(m["step"]), tensors["midway.order"], tensors["midway.loss_sum"], tensors["midway.correct"],
                int(m["seen"]),
            )  # fmt: skip
            midway = Midway(int(m["epoch"]), at, tensors.get("midway.extra"), m["fields"], float(m["seconds"]))
        return FitState(
            index=index,
            epoch=int(record["epoch"]),
            epochs=int(record["epochs"]),
            model=model,
            optimizer={"state": state, "param_groups": record["optimizer"]["param_groups"]},
            scheduler=record["scheduler"],
            generators=generators,
            log=record["log"],
            counters=record["counters"],
            midway=midway,
            buffers={k.removeprefix("buffer."): v for k, v in tensors.items() if k.startswith("buffer.")},
        )

    def save_phase(
        self, name: str, step: int, steps: int, tensors: dict[str, torch.Tensor], generators: dict[str, torch.Generator]
    ) -> None:
        """After `step` of the `steps` of phase `name` (a defense's optimisation outside `Trainer.fit`)."""
        try:
            self.path.mkdir(exist_ok=True)
            saved = {f"state.{k}": v for k, v in tensors.items()}
            saved |= {f"generator.{k}": g.get_state() for k, g in generators.items()}
            saved["generator.torch-global"] = torch.get_rng_state()
            tensor_file = f"phase-{name}.step-{step}.safetensors"
            record = {"format": FORMAT, "phase": name, "step": step, "steps": steps, "tensors": tensor_file}
            self._commit(f"phase-{name}.json", tensor_file, saved, record)
        except OSError as e:
            raise EigenguardError(
                f"could not write the checkpoint of {name} step {step} in '{self.path}' ({e.strerror or e}); "
                f"the run stopped, its last complete checkpoint is kept: eigenguard train --resume {self.path.parent}"
            ) from None

    def phase(self, name: str, device: torch.device) -> PhaseState | None:
        """Phase `name`'s last complete checkpoint, or None where it has none."""
        manifest = self.path / f"phase-{name}.json"
        read = self._read(manifest, device)
        if read is None:
            return None
        record, tensors = read
        try:
            step, steps = int(record["step"]), int(record["steps"])
        except (KeyError, TypeError, ValueError) as e:
            raise EigenguardError(f"checkpoint '{manifest}' is unreadable ({e}); it cannot be resumed") from None
        return PhaseState(
            step=step,
            steps=steps,
            tensors={k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")},
            generators={
                k.removeprefix("generator."): v.cpu() for k, v in tensors.items() if k.startswith("generator.")
            },
        )

    def check(self, device: torch.device) -> None:
        """Read every fit's checkpoint once (before a resumed run prints or writes anything): a corrupt one
        is one EigenguardError naming its file."""
        for manifest in sorted(self.path.glob("phase-*.json")):
            self.phase(manifest.stem.removeprefix("phase-"), device)
        for manifest in sorted(self.path.glob("fit-*.json")):
            index = manifest.stem.removeprefix("fit-")
            if not index.isdigit():
                raise EigenguardError(f"checkpoint '{manifest}' is not one eigenguard writes; it cannot be resumed")
            self.state(int(index), device)

    def remove(self) -> None:
        """After the run has finished (its model and metrics written), the checkpoints are redundant."""
        if self.path.is_dir():
            for f in self.path.iterdir():
                f.unlink(missing_ok=True)
            self.path.rmdir()
