"""Every numeric setting of `eigenguard config`, tried through `eigenguard train` with NaN, +-infinity, a
negative and a huge value: refused before anything is written (one line, exit 2), or listed in MEANINGFUL
with what it means, in which case the run gets as far as training (where this test stops it)."""

import inspect
from pathlib import Path

import pytest
from conftest import make_mnist_like
from test_bad_input import snapshot
from typer.testing import CliRunner

from eigenguard.cli import app
from eigenguard.config import TrainConfig
from eigenguard.errors import EigenguardError
from eigenguard.training.trainer import Trainer

NUMERIC = [n for n, f in TrainConfig.model_fields.items() if f.annotation in (int, float, int | None, float | None)]
VALUES = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf", "negative": "-1", "huge": "1000000000000"}
MEANINGFUL = {
    ("epochs", "huge"): "a long run is the user's choice",
    ("batch_size", "huge"): "one batch holds the whole training set",
    ("eval_batch_size", "huge"): "evaluation in one batch",
    ("eval_every", "huge"): "evaluated at the last epoch only",
    ("checkpoint_every", "huge"): "checkpoints at epoch ends only",
    ("seed", "huge"): "another seed",
    ("train_subset", "huge"): "more than the training split holds: all of it",
    ("lr", "huge"): "legal; a run whose loss turns non-finite stops with one line (test_bad_input)",
    ("warmup_epochs", "huge"): "the lr ramps up through the whole run",
    ("weight_decay", "huge"): "legal, if it leaves the weights at zero",
    ("clean_samples", "huge"): "a defense without clean images gets the defense split, cut; one that uses them "
    "is refused (test_defenses)",
}


class ReachedTraining(Exception):
    """Raised where training would start: the setting was accepted."""


def test_every_numeric_setting_is_covered() -> None:
    assert {"epochs", "lr", "width", "poison_rate", "image_size", "checkpoint_every", "target"} <= set(NUMERIC)


@pytest.mark.parametrize("kind", list(VALUES))
@pytest.mark.parametrize("field", NUMERIC)
def test_a_bad_number_is_refused_or_meaningful(
    field: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = make_mnist_like(tmp_path / "data", n_train=120, n_test=40)

    def stop(*_args: object, **_kwargs: object) -> None:
        raise ReachedTraining

    monkeypatch.setattr(Trainer, "fit", stop)
    before = snapshot(tmp_path)
    args = ["train", "--dataset", "mnist", "--data-root", str(data), "--model", "resnet18", "--width", "0.125",
            "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "out"), "--quiet",
            "--set", f"{field}={VALUES[kind]}"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    if (field, kind) in MEANINGFUL:
        assert isinstance(result.exception, ReachedTraining), f"{field}={kind}: {result.output}"
        return
    assert result.exit_code == 2, f"{field}={kind} accepted: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], f"{field}={kind}: {result.stderr}"
    assert snapshot(tmp_path) == before, f"{field}={kind}: files were written"


# Component options (`eigenguard list`): resolved as a run resolves them, and an attack built as a run builds
# it (both before anything is written). A huge value is meaningful for these kinds of option:
BUDGETS = {"epochs", "iterations", "noise_steps", "pgd_steps", "surrogate_pgd_steps", "sieve_epochs", "steps"}
BUDGETS |= {f"{p}_epochs" for p in ("isolation", "training", "unlearning", "sd", "intra", "st", "head", "teacher")}
BUDGETS |= {f"{p}_epochs" for p in ("backdoor", "mask", "generator", "surrogate", "read")}
STEPS = {"lr", "unlearning_lr", "mask_lr", "meta_lr", "sd_lr", "st_lr", "head_lr", "backdoor_lr"}
WEIGHTS = {"gamma", "lambda_u", "lambda_norm", "lambda_div", "mixup_alpha", "temperature", "power", "strength", "u"}
WEIGHTS |= {"removal_factor", "negative_ratio", "cross_ratio"}
CAPPED = {"seeds_per_class", "anchor_count", "r", "images"}
HUGE = {
    **dict.fromkeys(BUDGETS, "a longer budget is the user's choice"),
    **dict.fromkeys(STEPS, "legal; a run whose loss turns non-finite stops with one line (test_bad_input)"),
    **dict.fromkeys({"batch_size", "st_batch_size", "batch"}, "one batch holds the whole set"),
    **dict.fromkeys(WEIGHTS, "a weight or a scale; counts of samples it sets are capped at what there is"),
    **dict.fromkeys(CAPPED, "capped at what there is: the class's pool, the training set, the directions"),
    **dict.fromkeys({"size", "shift"}, "PDB checks them against the image side and the class count as it starts"),
}
OPTION_MEANINGFUL = {("value", "negative"): "PDB's stamp below black is as much out of range as its 2.0 above white"}


def numeric_options() -> list[tuple[str, str, str]]:
    from eigenguard.attacks import ATTACKS
    from eigenguard.defenses import DEFENSES

    found = []
    for kind, registry in (("attack", ATTACKS), ("defense", DEFENSES)):
        for name in registry.names():
            for option, param in inspect.signature(registry.get(name).__init__).parameters.items():
                default, annotation = param.default, str(param.annotation)
                numeric = isinstance(default, int | float) and not isinstance(default, bool)
                maybe = default is None and ("int" in annotation or "float" in annotation)
                if (numeric or maybe) and option not in ("target", "seed"):
                    found.append((kind, name, option))
    return found


OPTIONS = numeric_options()


def test_the_option_sweep_sees_every_component() -> None:
    assert ("defense", "pdb", "value") in OPTIONS and ("attack", "wanet", "grid_k") in OPTIONS
    assert ("defense", "sieve", "sieve_epochs") in OPTIONS and len(OPTIONS) > 100


@pytest.mark.parametrize("label", list(VALUES))
@pytest.mark.parametrize(("kind", "name", "option"), OPTIONS, ids=[f"{k}.{n}.{o}" for k, n, o in OPTIONS])
def test_a_bad_component_option_is_refused_or_meaningful(kind: str, name: str, option: str, label: str) -> None:
    from eigenguard.attacks import create_attack
    from eigenguard.pipeline import resolve

    value = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "negative": -1, "huge": 10**12}[label]
    try:
        config = resolve(TrainConfig(**{kind: {"name": name, option: value}}))
        if kind == "attack":
            create_attack(name, (1, 28, 28), **config.attack.options)
    except EigenguardError as e:
        assert len(str(e).splitlines()) == 1 and option in str(e), str(e)
        return
    meaningful = HUGE.get(option) if label == "huge" else OPTION_MEANINGFUL.get((option, label))
    assert meaningful, f"{kind} {name}: {option} = {value} is accepted and not documented as meaningful"
