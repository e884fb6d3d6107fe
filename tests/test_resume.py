"""Checkpoints and resume: a run interrupted after any epoch (or while writing a checkpoint) and resumed
ends with the weights, metrics and log of the uninterrupted run, bit for bit (wall times aside)."""

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import make_mnist_like
from safetensors.torch import load_file

from eigenguard import TrainConfig, train
from eigenguard.errors import EigenguardError
from eigenguard.run_directory import RunDirectory
from eigenguard.training import checkpoint as checkpoint_module
from eigenguard.training.checkpoint import Checkpoints

TIMES = ("train_seconds", "train_images_per_second", "total_seconds", "defense_seconds", "defense_cost_vs_plain")
TIMES += ("plain_train_seconds", "backdoored_run", "backdoored_cache_hit")  # the last two: where the cache is


def config(root: Path, out: Path, defense: object = "eigenguard", epochs: int = 3) -> TrainConfig:
    return TrainConfig(
        dataset="mnist", data_root=str(root), model="resnet18", width=0.125, epochs=epochs, batch_size=50,
        attack="badnets", defense=defense, device="cpu", out=str(out), eval_every=epochs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny dataset for the tests that compare with a shared uninterrupted run (its path is in metrics)."""
    return make_mnist_like(tmp_path_factory.mktemp("shared") / "data")


@pytest.fixture(scope="module")
def uninterrupted(shared_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[object], Path]:
    """The uninterrupted run of `config(shared_root, ..., defense)`, trained once per module and worker: several
    tests cut the same run at different places. Called from a test, so it trains under that test's cache."""
    runs: dict[str, Path] = {}

    def whole(defense: object = "eigenguard") -> Path:
        key = json.dumps(defense, sort_keys=True)
        if key not in runs:
            runs[key] = train(
                config(shared_root, tmp_path_factory.mktemp("whole") / "run", defense), progress=False
            ).run_dir
        return runs[key]

    return whole


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert (ma.pop("resumed"), mb.pop("resumed")) == (False, True)  # its wall times: this process's only
    for key in TIMES:
        ma.pop(key, None), mb.pop(key, None)
    for m in (ma, mb):  # whether D-BR's SD model came from the cache: where it was, not what it is
        (m.get("defense_report") or {}).pop("sd_cached", None)
    assert ma == mb
    logs = [list(csv.DictReader((p / "log.csv").read_text().splitlines())) for p in (a, b)]
    for log in logs:
        for row in log:
            row.pop("epoch_seconds", None)
    assert logs[0] == logs[1] and len(logs[0]) > 0
    assert not (b / "checkpoint").exists() and not (b / ".lock").exists()


class Interrupt(Exception):
    pass


class Kill(BaseException):
    """What a grid cell cannot catch as its own failure (as SIGKILL or Ctrl-C)."""


def interrupt_after(
    monkeypatch: pytest.MonkeyPatch, fit: int, epoch: int, while_writing: bool = False, error: type = Interrupt
) -> None:
    """Stop the run right after fit `fit` has checkpointed `epoch` (or, while_writing, halfway through that
    checkpoint: its tensor file written, its JSON not)."""
    save, write = Checkpoints.save, checkpoint_module.atomic_write_text

    def stopping_save(self: Checkpoints, phase: str, at: int, *args: object, **kwargs: object) -> None:
        if while_writing and (phase, at) == (f"fit-{fit}", epoch):

            def fail(path: Path, text: str) -> None:
                raise error

            monkeypatch.setattr(checkpoint_module, "atomic_write_text", fail)
        try:
            save(self, phase, at, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            monkeypatch.setattr(checkpoint_module, "atomic_write_text", write)
        if (phase, at) == (f"fit-{fit}", epoch):
            raise error

    monkeypatch.setattr(Checkpoints, "save", stopping_save)


RANKED_BY_TRAINING = {"name": "eigenguard", "ranking": "training"}  # its training losses are checkpointed
FAST_ANCHORS = {**RANKED_BY_TRAINING, "anchor_features": "detached"}  # its anchors are not batch rows


@pytest.mark.parametrize(
    ("epoch", "while_writing", "defense"),
    [
        (1, False, "eigenguard"),
        pytest.param(2, False, "eigenguard", marks=pytest.mark.slow),  # the same path one epoch later
        pytest.param(2, True, "eigenguard", marks=pytest.mark.slow),
        pytest.param(1, False, RANKED_BY_TRAINING, marks=pytest.mark.slow),  # the guard's other options
        pytest.param(1, False, FAST_ANCHORS, marks=pytest.mark.slow),
    ],
    ids=["epoch-1", "epoch-2", "epoch-2-while-writing", "ranked-by-training-epoch-1", "fast-anchors-epoch-1"],
)
def test_guarded_run_resumes_bit_identically(
    shared_root: Path, uninterrupted: Callable[[object], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    epoch: int, while_writing: bool, defense: object,
) -> None:  # fmt: skip
    whole = uninterrupted(defense)
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_after(m, 1, epoch, while_writing)
        with pytest.raises(Interrupt):
            train(config(shared_root, cut, defense), progress=False)
    assert not (cut / "metrics.json").exists() and not (cut / ".lock").exists()
    saved = sorted(p.name for p in (cut / "checkpoint").iterdir())
    done = epoch - 1 if while_writing else epoch  # a checkpoint cut short leaves the one before in force
    assert f"fit-1.step-{done}.safetensors" in saved
    train(config(shared_root, cut, defense), progress=False, resume=True)
    assert_same_run(whole, cut)


@pytest.mark.slow
def test_a_later_fit_resumes_after_finished_ones(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ABL trains three fits in one run (isolation, the rest, unlearning); cut in the second
    abl = {"name": "abl", "isolation_epochs": 1, "unlearning_epochs": 1}
    whole = train(config(mnist_root, tmp_path / "whole", abl), progress=False).run_dir
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_after(m, 2, 1)
        with pytest.raises(Interrupt):
            train(config(mnist_root, cut, abl), progress=False)
    train(config(mnist_root, cut, abl), progress=False, resume=True)
    assert_same_run(whole, cut)


def test_resume_refuses_finished_locked_and_foreign_runs(mnist_root: Path, tmp_path: Path) -> None:
    done = train(config(mnist_root, tmp_path / "done", epochs=1), progress=False).run_dir
    with pytest.raises(EigenguardError, match="has finished"):
        train(config(mnist_root, done, epochs=1), progress=False, resume=True)
    with pytest.raises(EigenguardError, match=r"no config\.yaml"):
        train(config(mnist_root, tmp_path / "nothing", epochs=1), progress=False, resume=True)
    (done / "metrics.json").unlink()  # as if it had been killed at the very end
    held = RunDirectory(done, resume=True)
    try:
        with pytest.raises(EigenguardError, match="in use by process"):
            train(config(mnist_root, done, epochs=1), progress=False, resume=True)
    finally:
        held.close()
    other = config(mnist_root, done, epochs=1).model_copy(update={"seed": 7})
    with pytest.raises(EigenguardError, match="data split differs"):
        train(other, progress=False, resume=True)


@pytest.mark.slow
def test_a_killed_grid_cell_resumes_from_its_checkpoint(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from eigenguard.bench.cell import run_cell

    cell = config(mnist_root, tmp_path / "unused").model_dump()
    whole = run_cell("k1", cell, str(tmp_path / "a"))
    assert whole["status"] == "done"
    assert "training images" in capsys.readouterr().err  # the cell's log (its stderr) says what it ran
    with monkeypatch.context() as m:
        interrupt_after(m, 1, 2, error=Kill)
        with pytest.raises(Kill):
            run_cell("k1", cell, str(tmp_path / "b"))
    partial = tmp_path / "b" / ".partial" / "k1"
    assert (partial / "checkpoint" / "fit-1.json").is_file()
    resumed = run_cell("k1", cell, str(tmp_path / "b"))
    assert resumed["status"] == "done" and not partial.exists()
    assert_same_run(Path(whole["run_dir"]), Path(resumed["run_dir"]))


@pytest.mark.slow
def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_last_one(
    shared_root: Path, uninterrupted: Callable[[object], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    whole = uninterrupted("eigenguard")
    cut, save = tmp_path / "cut", checkpoint_module.atomic_save_tensors

    def disk_full(path: Path, tensors: object, metadata: object) -> None:
        if "fit-1.step-2" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        save(path, tensors, metadata)

    with monkeypatch.context() as m:
        m.setattr(checkpoint_module, "atomic_save_tensors", disk_full)
        with pytest.raises(EigenguardError, match=r"No space left on device.*last complete checkpoint is kept"):
            train(config(shared_root, cut), progress=False)
    assert json.loads((cut / "state.json").read_text())["state"] == "failed"
    assert sorted(p.name for p in (cut / "checkpoint").iterdir()) == ["fit-1.json", "fit-1.step-1.safetensors"]
    train(config(shared_root, cut), progress=False, resume=True)
    assert_same_run(whole, cut)


def test_a_corrupt_checkpoint_is_named(mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_after(m, 1, 1)
        with pytest.raises(Interrupt):
            train(config(mnist_root, cut), progress=False)
    (cut / "checkpoint" / "fit-1.step-1.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(EigenguardError, match=r"checkpoint .*fit-1\.step-1\.safetensors' is unreadable"):
        train(config(mnist_root, cut), progress=False, resume=True)


@pytest.mark.slow
def test_kill_9_mid_run_then_resume(mnist_root: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    whole = train(config(mnist_root, tmp_path / "whole", epochs=4), progress=False).run_dir
    cut = tmp_path / "cut"
    args = ["train", "--dataset", "mnist", "--data-root", str(mnist_root), "--model", "resnet18", "--width", "0.125",
            "--epochs", "4", "--attack", "badnets", "--defense", "eigenguard", "--device", "cpu", "--out", str(cut),
            "--set", "batch_size=50", "--set", "eval_every=4", "--quiet"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "eigenguard", *args], stderr=subprocess.PIPE)
    manifest = cut / "checkpoint" / "fit-1.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and json.loads(manifest.read_text())["step"] >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 3, or while it writes a checkpoint
    proc.wait()
    assert not (cut / "metrics.json").exists()
    done = subprocess.run([sys.executable, "-m", "eigenguard", "train", "--resume", str(cut), "--quiet"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_same_run(whole, cut)


@pytest.mark.slow
def test_a_post_training_defense_resumes_its_unfinished_backdoored_run(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fine-tuning starts from the no-defense model, trained first (and cached) when missing; killed while
    # that run trains, the next attempt resumes it instead of starting it over
    def ft(out: Path, cache: Path) -> TrainConfig:
        return config(mnist_root, out, {"name": "ft", "epochs": 1}).model_copy(
            update={"clean_samples": 40, "cache_dir": str(cache)}
        )

    whole = train(ft(tmp_path / "whole", tmp_path / "cache-a"), progress=False).run_dir
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_after(m, 1, 2, error=Kill)  # the no-defense run's only fit, after its second epoch
        with pytest.raises(Kill):
            train(ft(cut, tmp_path / "cache-b"), progress=False)
    (scratch,) = (tmp_path / "cache-b" / "backdoored").glob(".training.*")
    assert (scratch / "run" / "checkpoint" / "fit-1.json").is_file()
    train(ft(cut, tmp_path / "cache-b"), progress=False, resume=True)
    assert not scratch.exists()
    assert_same_run(whole, cut)


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume(mnist_root: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    args = ["train", "--dataset", "mnist", "--data-root", str(mnist_root), "--model", "resnet18", "--width", "0.125",
            "--epochs", "20", "--device", "cpu", "--set", f"runs_dir={runs}", "--set", "batch_size=50"]  # fmt: skip
    # a shell without job control starts background jobs with SIGINT ignored, and an ignored signal stays
    # ignored across exec (then Python raises no KeyboardInterrupt): give the child the default, as a
    # terminal would, so the test does not depend on how the suite was started
    proc = subprocess.Popen(
        [sys.executable, "-m", "eigenguard", *args],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(runs.glob("*/checkpoint/fit-1.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    (run,) = runs.iterdir()  # an automatically named run directory
    assert proc.returncode == 130
    assert f"continue it with: eigenguard train --resume {run}" in stderr.splitlines()[-1]
    assert json.loads((run / "state.json").read_text())["state"] == "interrupted"


@pytest.mark.slow
def test_a_post_training_defense_resumes_within_its_own_phase(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fine-tuning (2 epochs) cut after its first epoch, its backdoored model from the cache
    def ft(out: Path) -> TrainConfig:
        return config(mnist_root, out, {"name": "ft", "epochs": 2}).model_copy(
            update={"clean_samples": 40, "cache_dir": str(tmp_path / "cache")}
        )

    whole = train(ft(tmp_path / "whole"), progress=False).run_dir  # fills the cache
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_after(m, 1, 1)
        with pytest.raises(Interrupt):
            train(ft(cut), progress=False)
    assert json.loads((cut / "checkpoint" / "fit-1.json").read_text())["record"]["log"][0]["phase"] == "finetune"
    train(ft(cut), progress=False, resume=True)
    assert_same_run(whole, cut)


def cut_within_a_phase(
    monkeypatch: pytest.MonkeyPatch, run: Callable[[bool], object], stop: tuple[str, int]
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Run (`run(False)`) until the phase checkpoint `stop` (phase name, step) is written, then resume
    (`run(True)`); returns the phase checkpoints written before the cut and by the resumed run."""
    save, before, after = Checkpoints.save, [], []

    def recording(self: Checkpoints, phase: str, step: int, *args: object, **kwargs: object) -> None:
        save(self, phase, step, *args, **kwargs)  # type: ignore[arg-type]
        if not phase.startswith("phase-"):
            return
        name = phase.removeprefix("phase-")
        (after if resuming else before).append((name, step))
        if not resuming and (name, step) == stop:
            raise Interrupt

    resuming = False
    with monkeypatch.context() as m:
        m.setattr(Checkpoints, "save", recording)
        with pytest.raises(Interrupt):
            run(False)
        resuming = True
        run(True)
    return before, after


@pytest.mark.slow
def test_anp_resumes_within_its_mask_optimisation(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ANP's 12 iterations checkpoint every 5 (checkpoint_every); cut after the checkpoint of iteration 10
    def anp(out: Path) -> TrainConfig:
        defense = {"name": "anp", "iterations": 12, "batch_size": 16}
        return config(mnist_root, out, defense).model_copy(
            update={"clean_samples": 40, "cache_dir": str(tmp_path / "cache"), "checkpoint_every": 5}
        )

    whole = train(anp(tmp_path / "whole"), progress=False).run_dir  # fills the backdoored model's cache
    cut = tmp_path / "cut"
    before, after = cut_within_a_phase(monkeypatch, lambda resume: train(anp(cut), progress=False, resume=resume),
                                       ("anp", 10))  # fmt: skip
    assert before == [("anp", 5), ("anp", 10)] and after == [("anp", 12)]  # continued from iteration 10
    assert_same_run(whole, cut)


@pytest.mark.slow
def test_dbr_resumes_within_its_backdoor_removal(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dbr(out: Path) -> TrainConfig:
        defense = {"name": "d-br", "sd_epochs": 1, "intra_epochs": 1, "epochs": 3, "batch_size": 32}
        return config(mnist_root, out, defense).model_copy(update={"cache_dir": str(tmp_path / "cache")})

    whole = train(dbr(tmp_path / "whole"), progress=False).run_dir
    cut = tmp_path / "cut"
    _, after = cut_within_a_phase(monkeypatch, lambda resume: train(dbr(cut), progress=False, resume=resume),
                                  ("d-br", 2))  # fmt: skip
    assert after == [("d-br", 3)]  # the removal continued from its epoch 2
    assert_same_run(whole, cut)


@pytest.mark.slow
def test_asd_resumes_after_its_last_checkpointed_epoch(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def asd(out: Path) -> TrainConfig:
        defense = {"name": "asd", "epochs": 4, "iterations": 2, "batch_size": 16}
        return config(mnist_root, out, defense).model_copy(update={"clean_samples": 40})

    whole = train(asd(tmp_path / "whole"), progress=False).run_dir
    cut = tmp_path / "cut"  # cut within stage 3, after its first meta-split
    _, after = cut_within_a_phase(monkeypatch, lambda resume: train(asd(cut), progress=False, resume=resume),
                                  ("asd", 3))  # fmt: skip
    assert after == [("asd", 4)]
    assert_same_run(whole, cut)


@pytest.mark.slow
def test_dst_resumes_within_its_feature_extractor(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dst(out: Path) -> TrainConfig:
        defense = {"name": "d-st", "sd_epochs": 1, "intra_epochs": 1, "st_epochs": 3, "head_epochs": 2,
                   "st_batch_size": 64}  # fmt: skip
        return config(mnist_root, out, defense)

    whole = train(dst(tmp_path / "whole"), progress=False).run_dir
    cut = tmp_path / "cut"
    _, after = cut_within_a_phase(monkeypatch, lambda resume: train(dst(cut), progress=False, resume=resume),
                                  ("st-extractor", 2))  # fmt: skip
    assert after == [("st-extractor", 3), ("st-head", 1), ("st-head", 2)]
    assert_same_run(whole, cut)


def test_a_checkpoint_of_an_older_format_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "fit-1.json").write_text('{"format": 1, "fit": 1, "epoch": 1, "tensors": "x"}')
    with pytest.raises(EigenguardError, match=r"format 1, this eigenguard reads 2; run it again without --resume"):
        Checkpoints(tmp_path, resume=True).check(torch.device("cpu"))
