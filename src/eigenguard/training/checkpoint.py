"""Checkpoints of a run's training, and what a resumed run reads back from them: the one place training
state is serialised.

A run trains in phases: its fits (`Trainer.fit`: the victim's model, a defense's retraining or fine-tuning),
named `fit-<i>` in the order the run calls them, and a defense's own optimisation outside a fit (ANP's
masks, D-BR's unlearning, D-ST's two stages, ASD's epochs), named `phase-<defense's name>`. After step s of
a phase (an epoch of a fit; an epoch or an iteration of a defense's loop) the trainer writes
`checkpoint/<phase>.step-<s>.safetensors` (the modules' weights, the optimizers' tensors such as momentum
buffers, every random stream the phase draws from, torch's global one included, and the phase's other
tensors) and then `checkpoint/<phase>.json` (the step reached, the optimizers' plain state, and the
phase's record: the log rows so far, time counters, the lr schedule's position). The JSON is written last
and names the tensor file it belongs to, so a kill between the two leaves the previous, complete pair in
force; the previous tensor file is removed only after the new JSON is in place. Safetensors and JSON
only: nothing is unpickled.

A resumed run replays the pipeline from its config (data, poisoning and splits are deterministic): a
phase whose checkpoint says it finished is not trained again, its end state is loaded; the phase that was
interrupted continues from its last checkpoint; later ones run as usual. On one CPU model the result is
bit-identical to an uninterrupted run (tests/test_resume.py); wall times are not.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from eigenguard.errors import EigenguardError
from eigenguard.run_directory import atomic_save_tensors, atomic_write_text

DIRECTORY = "checkpoint"
FORMAT = 2  # 1: fits and phases in two layouts, with checkpoints within an epoch


@dataclass
class Saved:
    """A phase's last complete checkpoint: after `step` of its `steps`."""

    phase: str
    step: int
    steps: int
    tensors: dict[str, torch.Tensor]  # by kind: module.<m>.*, optimizer.<o>.*, generator.<g>, tensor.<t>
    record: dict[str, Any]  # the phase's own record (log rows, counters, schedule)
    optimizers: dict[str, Any]  # the optimizers' state dicts without their tensors

    @property
    def finished(self) -> bool:
        return self.step >= self.steps

    def restore(
        self,
        modules: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        generators: dict[str, torch.Generator],
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Put the saved state back in place: weights, optimizer state, random streams (torch's global one
        too) and `tensors` (copied into the given ones)."""
        for m, module in modules.items():
            module.load_state_dict(_under(self.tensors, f"module.{m}."))
        for o, optimizer in optimizers.items():
            state = self.optimizers[o]
            values: dict[int, dict[str, Any]] = {int(p): dict(v) for p, v in state["state"].items()}
            for key, value in _under(self.tensors, f"optimizer.{o}.").items():
                param, name = key.split(".", 1)
                values.setdefault(int(param), {})[name] = value
            optimizer.load_state_dict({"state": values, "param_groups": state["param_groups"]})
        for g, generator in generators.items():
            generator.set_state(self.tensors[f"generator.{g}"].cpu())
        torch.set_rng_state(self.tensors["generator.torch-global"].cpu())
        with torch.no_grad():
            for t, tensor in (tensors or {}).items():
                tensor.copy_(self.tensors[f"tensor.{t}"])


def _under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


class Checkpoints:
    """The run directory's checkpoint folder: `save` after a phase's step, `load` to resume it."""

    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.path = run_dir / DIRECTORY
        self.resume = resume  # whether `resumed` reads what an interrupted run left here

    def save(
        self,
        phase: str,
        step: int,
        steps: int,
        *,
        modules: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        generators: dict[str, torch.Generator],
        tensors: dict[str, torch.Tensor] | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        """After `step` of the `steps` of `phase`; `record` must be JSON."""
        saved = {f"tensor.{k}": v.detach() for k, v in (tensors or {}).items()}
        plain: dict[str, Any] = {}
        for m, module in modules.items():
            saved |= {f"module.{m}.{k}": v for k, v in module.state_dict().items()}
        for o, optimizer in optimizers.items():
            state = optimizer.state_dict()
            plain[o] = {"param_groups": state["param_groups"], "state": {}}
            for param, values in state["state"].items():
                for name, value in values.items():
                    if isinstance(value, torch.Tensor):
                        saved[f"optimizer.{o}.{param}.{name}"] = value
                    else:
                        plain[o]["state"].setdefault(str(param), {})[name] = value
        saved |= {f"generator.{g}": generator.get_state() for g, generator in generators.items()}
        saved["generator.torch-global"] = torch.get_rng_state()
        tensor_file = f"{phase}.step-{step}.safetensors"
        manifest = {
            "format": FORMAT,
            "phase": phase,
            "step": step,
            "steps": steps,
            "tensors": tensor_file,
            "optimizers": plain,
            "record": record or {},
        }
        try:
            self.path.mkdir(exist_ok=True)
            atomic_save_tensors(self.path / tensor_file, saved, {"format": str(FORMAT)})
            path = self.path / f"{phase}.json"
            previous = self._tensor_file(path)
            atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")  # the commit point
            if previous and previous != tensor_file:
                (self.path / previous).unlink(missing_ok=True)
        except OSError as e:  # a full disk, a read-only or vanished directory: the previous one is intact
            raise EigenguardError(
                f"could not write the checkpoint of {phase} step {step} in '{self.path}' ({e.strerror or e}); "
                f"the run stopped, its last complete checkpoint is kept: eigenguard train --resume {self.path.parent}"
            ) from None

    def resumed(self, phase: str, device: torch.device) -> Saved | None:
        """What an interrupted run left of `phase` when resuming (None: the phase starts at its beginning)."""
        return self.load(phase, device) if self.resume else None

    def load(self, phase: str, device: torch.device) -> Saved | None:
        """`phase`'s last complete checkpoint (None where it has none); unreadable: one EigenguardError."""
        path = self.path / f"{phase}.json"
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                found = manifest.get("format") if isinstance(manifest, dict) else "?"
                raise ValueError(f"format {found}, this eigenguard reads {FORMAT}; run it again without --resume")
            tensor_file = self.path / manifest["tensors"]
            step, steps = int(manifest["step"]), int(manifest["steps"])
            optimizers, record = dict(manifest["optimizers"]), dict(manifest["record"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EigenguardError(f"checkpoint '{path}' is unreadable ({e}); it cannot be resumed") from None
        try:
            tensors = load_file(str(tensor_file), device=str(device))
        except (OSError, ValueError, SafetensorError) as e:  # the file the manifest names is the bad one
            raise EigenguardError(f"checkpoint '{tensor_file}' is unreadable ({e}); it cannot be resumed") from None
        return Saved(phase, step, steps, tensors, record, optimizers)

    def _tensor_file(self, manifest: Path) -> str | None:
        if not manifest.is_file():
            return None
        try:
            return json.loads(manifest.read_text()).get("tensors")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None

    def check(self, device: torch.device) -> None:
        """Read every checkpoint once (before a resumed run prints or writes anything): a corrupt one is one
        EigenguardError naming its file."""
        for manifest in sorted(self.path.glob("*.json")):
            self.load(manifest.stem, device)

    def remove(self) -> None:
        """After the run has finished (its model and metrics written), the checkpoints are redundant."""
        if self.path.is_dir():
            for f in self.path.iterdir():
                f.unlink(missing_ok=True)
            self.path.rmdir()
