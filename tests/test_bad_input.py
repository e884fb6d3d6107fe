"""Bad input through the CLI, one table: every case exits 2 with one line on stderr that names the bad value
(and, where there is a list, what is allowed), creates nothing, and leaves every existing file as it was.

Cases cover flags, config files, data files in each format, run directories and checkpoints, grid files,
results stores and the analysis commands. The CLI runs in-process (typer's runner): the same code as the
`eigenguard` command, without a Python start per case."""

import gzip
import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import make_mnist_like
from typer.testing import CliRunner

from eigenguard.bench.store import ResultStore
from eigenguard.cli import app

Setup = Callable[[Path], list[str]]  # tmp dir -> the CLI's arguments


def mnist(tmp: Path) -> Path:
    return make_mnist_like(tmp / "data", n_train=120, n_test=40)


def train(*extra: str) -> Setup:
    def args(tmp: Path) -> list[str]:
        common = ["train", "--dataset", "mnist", "--data-root", str(mnist(tmp)), "--model", "resnet18"]
        return [*common, "--width", "0.125", "--epochs", "1", "--device", "cpu", "--out", str(tmp / "out"), *extra]

    return args


def config_file(text: str) -> Setup:
    def args(tmp: Path) -> list[str]:
        (tmp / "run.yaml").write_text(text)
        return train("--config", str(tmp / "run.yaml"))(tmp)

    return args


def broken_mnist(damage: Callable[[Path], None]) -> Setup:
    def args(tmp: Path) -> list[str]:
        out = train()(tmp)
        damage(tmp / "data" / "MNIST" / "raw")
        return out

    return args


def truncate(raw: Path) -> None:
    path = raw / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])


def bad_magic(raw: Path) -> None:
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + b"\x00" * 8))


def wrong_count(raw: Path) -> None:  # 120 images, 7 labels
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x07" + b"\x01" * 7))


def missing_test_files(raw: Path) -> None:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).unlink()


def cifar(payload: Callable[[], bytes]) -> Setup:
    def args(tmp: Path) -> list[str]:
        directory = tmp / "cifar" / "cifar-10-batches-py"
        directory.mkdir(parents=True)
        for name in [*(f"data_batch_{b}" for b in range(1, 6)), "test_batch", "batches.meta"]:
            (directory / name).write_bytes(payload())
        return ["train", "--dataset", "cifar10", "--data-root", str(tmp / "cifar"), "--out", str(tmp / "out")]

    return args


class Evil:
    def __reduce__(self) -> tuple:
        return (print, ("code ran",))


def imagefolder(tmp: Path) -> list[str]:
    (tmp / "images" / "train" / "cat").mkdir(parents=True)
    return ["train", "--dataset", "imagefolder", "--data-root", str(tmp / "images"), "--out", str(tmp / "out")]


def finished_run(tmp: Path) -> Path:
    run = tmp / "done"
    runner = CliRunner()
    result = runner.invoke(app, [*train()(tmp)[:-2], "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    return run


def resume(make: Callable[[Path], Path], *extra: str) -> Setup:
    return lambda tmp: ["train", "--resume", str(make(tmp)), *extra]


def interrupted_run(tmp: Path) -> Path:
    run = finished_run(tmp)
    (run / "metrics.json").unlink()
    return run


def corrupt_checkpoint(tmp: Path) -> Path:
    run = interrupted_run(tmp)
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "fit-1.json").write_text(
        '{"format": 2, "phase": "fit-1", "step": 1, "steps": 2, "tensors": "fit-1.step-1.safetensors", '
        '"optimizers": {}, "record": {}}'
    )
    (run / "checkpoint" / "fit-1.step-1.safetensors").write_bytes(b"\x00" * 64)
    return run


def grid(text: str) -> Setup:
    def args(tmp: Path) -> list[str]:
        (tmp / "g.yaml").write_text(text)
        return ["bench", str(tmp / "g.yaml"), "--store", str(tmp / "s.sqlite"), "--runs-dir", str(tmp / "runs")]

    return args


GRID = "name: g\nbase: {{dataset: mnist, epochs: 1}}\naxes:\n  {axes}\n"


def store(content: bytes | None) -> Setup:
    def args(tmp: Path) -> list[str]:
        path = tmp / "s.sqlite"
        if content is not None:
            path.write_bytes(content)
        return ["report", "--store", str(path), "--out", str(tmp / "report")]

    return args


def store_of_another_program(tmp: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(tmp / "s.sqlite") as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    return ["report", "--store", str(tmp / "s.sqlite"), "--out", str(tmp / "report")]


def store_without_grid(tmp: Path) -> list[str]:
    ResultStore(tmp / "s.sqlite").close()
    return ["report", "--store", str(tmp / "s.sqlite"), "--grid", "table9", "--out", str(tmp / "report")]


def analysis(command: str, damage: Callable[[Path], None]) -> Setup:
    def args(tmp: Path) -> list[str]:
        run = finished_run(tmp)
        damage(run)
        return ["analyze", command, str(run)]

    return args


def fashion_root(kind: str) -> Setup:
    """A --data-root that must be refused, not replaced by the Debian package's copy."""

    def args(tmp: Path) -> list[str]:
        root = tmp / "root"
        if kind == "file":
            root.write_text("not a dataset")
        elif kind == "empty":
            root.mkdir()
        common = ["train", "--dataset", "fashion-mnist", "--data-root", str(root), "--epochs", "1", "--device", "cpu"]
        return [*common, "--out", str(tmp / "out")]

    return args


def binary(command: str) -> Setup:
    def args(tmp: Path) -> list[str]:
        (tmp / "b.yaml").write_bytes(bytes(range(256)) * 4)
        if command == "bench":
            return ["bench", str(tmp / "b.yaml"), "--store", str(tmp / "s.sqlite"), "--runs-dir", str(tmp / "runs")]
        return train("--config", str(tmp / "b.yaml"))(tmp)

    return args


def out_under_a_file(tmp: Path) -> list[str]:
    (tmp / "a_file.txt").write_text("x")
    args = train()(tmp)
    args[args.index("--out") + 1] = str(tmp / "a_file.txt" / "sub")
    return args


def export_to_a_directory(tmp: Path) -> list[str]:
    ResultStore(tmp / "s.sqlite").close()
    (tmp / "existing_dir").mkdir()
    return ["export", "g", "--out", str(tmp / "existing_dir"), "--store", str(tmp / "s.sqlite")]


CASES: dict[str, tuple[Setup, str]] = {
    # flags
    "unknown dataset": (train("--dataset", "imagenet"), "invalid dataset = 'imagenet'"),
    "unknown model": (train("--model", "alexnet"), "invalid model = 'alexnet'"),
    "unknown attack": (train("--attack", "trojan"), "invalid attack = 'trojan'"),
    "unknown defense": (train("--defense", "magic"), "magic"),
    "poison rate above 1": (train("--poison-rate", "1.5"), "invalid poison_rate = 1.5"),
    "negative width": (train("--width", "-1"), "invalid width = -1"),
    "no CUDA here": (train("--device", "cuda"), "CUDA is not available here"),
    "unknown device": (train("--device", "tpu"), "tpu"),
    "unknown profile": (train("--profile", "huge"), "huge"),
    "an attack option of the wrong kind": (train("--attack", "blend", "--set", "attack.alpha=abc"), "alpha = 'abc'"),
    "a fractional k": (train("--defense", "eigenguard", "--set", "defense.k=2.5"), "k = 2.5"),
    "a k past the guard's matrix": (train("--defense", "eigenguard", "--set", "defense.k=100000"), "k = 100000"),
    "unknown anchors rule": (train("--defense", "eigenguard", "--set", "defense.anchors=best"), "anchors = 'best'"),
    "unknown spectrum": (train("--defense", "eigenguard", "--set", "defense.spectrum=flat"), "spectrum = 'flat'"),
    "zero anchor count": (train("--defense", "eigenguard", "--set", "defense.anchor_count=0"), "anchor_count = 0"),
    "unknown setting": (train("--set", "nonsense=1"), "unknown option 'nonsense'"),
    "a setting without =": (train("--set", "alpha"), "expected KEY=VALUE"),
    "zero batch size": (train("--set", "batch_size=0"), "batch_size"),
    "a word for the seed": (train("--set", "seed=abc"), "seed"),
    "a word for a typed flag": (train("--epochs", "abc"), "invalid --epochs = 'abc'"),
    "a word for a number flag": (train("--poison-rate", "abc"), "invalid --poison-rate = 'abc'"),
    "an unknown flag": (train("--epoch", "3"), "No such option: --epoch"),
    "zero proposition trials": (lambda tmp: ["analyze", "proposition", "--trials", "0"], "--trials 0"),
    "an unknown dims mode with r 0 only": (
        lambda tmp: ["analyze", "dims", "--r", "0", "--mode", "sideways", "--store", str(tmp / "s.sqlite")],
        "mode 'sideways' unknown",
    ),
    "an infinite lr": (train("--set", "lr=inf"), "lr"),
    "a word for an attack option": (train("--attack", "blend", "--set", "attack.alpha=inf"), "alpha = 'inf'"),
    "an infinite attack option": (train("--attack", "blend", "--set", "attack.alpha=.inf"), "alpha = inf"),
    "a NaN defense option": (train("--defense", "pdb", "--set", "defense.value=.nan"), "value = nan"),
    "a data root that is a file": (fashion_root("file"), "is a file"),
    "a data root that does not exist": (fashion_root("missing"), "does not exist"),
    "an empty data root": (fashion_root("empty"), "dataset 'fashion-mnist' not found"),
    "a run directory under a file": (out_under_a_file, "a_file.txt', a file"),
    "export to a directory": (export_to_a_directory, "is a directory"),
    # config files
    "config file missing": (train("--config", "/nonexistent/run.yaml"), "/nonexistent/run.yaml"),
    "config file not YAML": (config_file("epochs: [1\n"), "run.yaml"),
    "config file a list": (config_file("- epochs\n- 3\n"), "run.yaml"),
    "config file with an unknown key": (config_file("epoch: 3\n"), "epoch"),
    "config file that is not text": (binary("train"), "not UTF-8 text"),
    "grid file that is not text": (binary("bench"), "not UTF-8 text"),
    # data files
    "truncated gzip IDX": (broken_mnist(truncate), "train-images-idx3-ubyte"),
    "IDX of the wrong type": (broken_mnist(bad_magic), "train-labels-idx1-ubyte"),
    "IDX labels not matching the images": (broken_mnist(wrong_count), "train-labels-idx1-ubyte"),
    "incomplete MNIST copy": (broken_mnist(missing_test_files), "t10k-images-idx3-ubyte"),
    "CIFAR batch that is not a pickle": (cifar(lambda: b"not a pickle at all"), "batches.meta"),
    "CIFAR batch that would run code": (cifar(lambda: pickle.dumps(Evil())), "refusing to unpickle"),
    "image folder without images": (imagefolder, "images"),
    # run directories and checkpoints
    "resume a finished run": (resume(finished_run), "has finished"),
    "resume what is not a run": (resume(lambda tmp: tmp), "no config.yaml"),
    "resume with settings": (resume(interrupted_run, "--epochs", "3"), "--resume takes no other settings"),
    "resume a corrupt checkpoint": (resume(corrupt_checkpoint), "fit-1.step-1.safetensors' is unreadable"),
    "runs of a missing folder": (lambda tmp: ["runs", str(tmp / "nowhere")], "is not a directory"),
    # grid files
    "grid file missing": (lambda tmp: ["bench", str(tmp / "none.yaml")], "none.yaml"),
    "grid file not YAML": (grid("name: [g\n"), "g.yaml"),
    "grid with an unknown attack": (grid(GRID.format(axes="attack: [badnets, trojan]")), "trojan"),
    "grid with an unknown setting": (grid(GRID.format(axes="epoch: [1, 2]")), "epoch"),
    # results stores
    "store that is not SQLite": (store(b"just some bytes, not a database" * 40), "s.sqlite"),
    "store that does not exist": (store(None), "s.sqlite"),
    "store of another program": (store_of_another_program, "holds no eigenguard results"),
    "report of an unknown grid": (store_without_grid, "table9"),
    # analysis
    "analysis of a corrupt model file": (
        analysis("erank", lambda run: (run / "model.safetensors").write_bytes(b"\x00" * 32)),
        "model.safetensors is unreadable",
    ),
    "analysis of a run without its config": (analysis("erank", lambda run: (run / "config.yaml").unlink()), "config"),
}


def snapshot(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    setup, message = CASES[case]
    args = setup(tmp_path)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, args)
    stderr = result.stderr.strip()
    assert result.exit_code == 2, f"{case}: exit {result.exit_code}\n{result.output}"
    assert len(stderr.splitlines()) == 1, f"{case}: {stderr}"
    assert message in stderr, f"{case}: {stderr}"
    assert "Traceback" not in result.output and "code ran" not in result.output
    assert snapshot(tmp_path) == before, f"{case}: files were created or changed"
    assert torch.get_num_threads() >= 1  # the process is still usable after the case


def test_a_diverging_run_stops_with_one_line_and_caches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    args = train("--quiet", "--set", "lr=1e30", "--set", "batch_size=16", "--set", f"cache_dir={cache}")(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "training diverged" in result.stderr
    out = tmp_path / "out"
    assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()
    assert '"failed"' in (out / "state.json").read_text()
    assert not (cache / "backdoored").exists() or not any(cache.joinpath("backdoored").iterdir())
