"""Every numeric setting of `eigenguard config`, tried through `eigenguard train` with NaN, +-infinity, a
negative and a huge value: refused before anything is written (one line, exit 2), or listed in MEANINGFUL
with what it means, in which case the run gets as far as training (where this test stops it)."""

from pathlib import Path

import pytest
from conftest import make_mnist_like
from test_bad_input import snapshot
from typer.testing import CliRunner

from eigenguard.cli import app
from eigenguard.config import TrainConfig
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
