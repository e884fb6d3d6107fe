"""Every path the CLI takes, given the wrong kind of thing: a missing path, a file where a directory is
expected, a directory where a file is expected, a binary file, an empty file. Each exits 2 with one line on
stderr that names the path, and creates or changes nothing.

A path the command reads must exist and be of its kind; a path it writes (an output directory, an exported
JSON file) may be missing, but not a thing of the other kind. A store that does not exist yet is a new store
for `bench` and `import` (they create it), so only the other kinds apply there."""

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import make_mnist_like
from typer.testing import CliRunner

from eigenguard.cli import app

KINDS = {
    "missing": lambda p: None,
    "file": lambda p: p.write_text("some text\n"),
    "directory": lambda p: p.mkdir(),
    "binary": lambda p: p.write_bytes(bytes(range(256)) * 4),
    "empty": lambda p: p.write_bytes(b""),
}
READS_FILE = ("missing", "directory", "binary", "empty")
READS_DIR = ("missing", "file", "binary", "empty")
WRITES_DIR = ("file", "binary", "empty")
WRITES_FILE = ("directory",)
NEW_STORE = ("directory", "binary", "empty")

GRID = "name: g\nbase: {dataset: mnist, data_root: DATA, model: resnet18, width: 0.125, epochs: 1, device: cpu}\n"
GRID += "axes:\n  attack: [none]\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny finished run, copied into each case that needs it."""
    root = tmp_path_factory.mktemp("finished")
    data = make_mnist_like(root / "data", n_train=120, n_test=40)
    args = ["train", "--dataset", "mnist", "--data-root", str(data), "--model", "resnet18", "--width", "0.125"]
    result = CliRunner().invoke(app, [*args, "--epochs", "1", "--device", "cpu", "--out", str(root / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    return root / "run"


class Tmp:
    """The case's folder: the good things a command needs beside the bad path."""

    def __init__(self, root: Path, finished: Path) -> None:
        self.root, self._finished = root, finished

    def data(self) -> str:
        return str(make_mnist_like(self.root / "data", n_train=120, n_test=40))

    def run(self) -> str:
        shutil.copytree(self._finished, self.root / "run")
        return str(self.root / "run")

    def grid(self) -> str:
        (self.root / "g.yaml").write_text(GRID.replace("DATA", self.data()))
        return str(self.root / "g.yaml")

    def store(self) -> str:
        """A store that knows grid g (registered, nothing run)."""
        result = CliRunner().invoke(app, ["bench", self.grid(), "--store", str(self.root / "s.sqlite"), "--dry-run"])
        assert result.exit_code == 0, result.output
        return str(self.root / "s.sqlite")

    def export(self) -> str:
        result = CliRunner().invoke(app, ["export", "g", "--out", str(self.root / "g.json"), "--store", self.store()])
        assert result.exit_code == 0, result.output
        return str(self.root / "g.json")


Command = Callable[[Tmp, str], list[str]]  # (the case's folder, the bad path) -> the CLI's arguments


def train(t: Tmp, *extra: str) -> list[str]:
    common = ["train", "--dataset", "mnist", "--model", "resnet18", "--width", "0.125", "--epochs", "1"]
    return [*common, "--device", "cpu", *extra]


DIMS = ["analyze", "dims", "--r", "0"]
SLOTS: dict[str, tuple[Command, tuple[str, ...]]] = {
    "train --config": (lambda t, p: train(t, "--data-root", t.data(), "--config", p, "--out", "o"), READS_FILE),
    "train --data-root": (lambda t, p: train(t, "--data-root", p, "--out", "o"), READS_DIR),
    "train --out": (lambda t, p: train(t, "--data-root", t.data(), "--out", p), WRITES_DIR),
    "train --resume": (lambda t, p: ["train", "--resume", p], READS_DIR),
    "runs DIR": (lambda t, p: ["runs", p], READS_DIR),
    "bench GRID": (lambda t, p: ["bench", p, "--store", "s.sqlite", "--runs-dir", "r"], READS_FILE),
    "bench --store": (lambda t, p: ["bench", t.grid(), "--store", p, "--runs-dir", "r"], NEW_STORE),
    "bench --runs-dir": (lambda t, p: ["bench", t.grid(), "--store", "s.sqlite", "--runs-dir", p], WRITES_DIR),
    "report --store": (lambda t, p: ["report", "--store", p, "--out", "rep"], READS_FILE),
    "report --out": (lambda t, p: ["report", "--store", t.store(), "--out", p], WRITES_DIR),
    "export --store": (lambda t, p: ["export", "g", "--out", "g.json", "--store", p], READS_FILE),
    "export --out": (lambda t, p: ["export", "g", "--out", p, "--store", t.store()], WRITES_FILE),
    "import FILE": (lambda t, p: ["import", p, "--store", "s.sqlite"], READS_FILE),
    "import --store": (lambda t, p: ["import", t.export(), "--store", p], NEW_STORE),
    "analyze erank RUN": (lambda t, p: ["analyze", "erank", p, "--out", "a"], READS_DIR),
    "analyze erank --out": (lambda t, p: ["analyze", "erank", t.run(), "--samples", "20", "--out", p], WRITES_DIR),
    "analyze survival RUN": (lambda t, p: ["analyze", "survival", p, "--out", "a"], READS_DIR),
    "analyze survival --out": (lambda t, p: ["analyze", "survival", t.run(), "--out", p], WRITES_DIR),
    "analyze test-time-guard RUN": (lambda t, p: ["analyze", "test-time-guard", p, "--out", "a"], READS_DIR),
    "analyze test-time-guard --out": (
        lambda t, p: ["analyze", "test-time-guard", t.run(), "--history-images", "16", "--out", p],
        WRITES_DIR,
    ),
    "analyze tsne RUN": (lambda t, p: ["analyze", "tsne", p, "--out", "a"], READS_DIR),
    "analyze tsne --out": (lambda t, p: ["analyze", "tsne", t.run(), "--samples", "20", "--out", p], WRITES_DIR),
    "analyze dims --config": (lambda t, p: [*DIMS, "--config", p, "--out", "a"], READS_FILE),
    "analyze dims --store": (lambda t, p: [*DIMS, "--store", p, "--out", "a"], NEW_STORE),
    "analyze dims --runs-dir": (lambda t, p: [*DIMS, "--runs-dir", p, "--out", "a"], WRITES_DIR),
    "analyze dims --out": (lambda t, p: [*DIMS, "--out", p], WRITES_DIR),
}
CASES = [(slot, kind) for slot, (_, kinds) in SLOTS.items() for kind in kinds]


def snapshot(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def reached(name: str) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} was reached")

    return fail


@pytest.mark.parametrize(("slot", "kind"), CASES, ids=[f"{s} <- {k}" for s, k in CASES])
def test_a_path_of_the_wrong_kind(
    slot: str, kind: str, tmp_path: Path, finished: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EIGENGUARD_CACHE", str(tmp_path / "cache"))
    for where, name in (("eigenguard.bench.runner", "run_grid"), ("eigenguard.pipeline.run", "_train_in")):
        monkeypatch.setattr(f"{where}.{name}", reached(name))  # a bad path must stop before any training
    command, _ = SLOTS[slot]
    bad = tmp_path / "bad"
    args = command(Tmp(tmp_path, finished), str(bad))
    KINDS[kind](bad)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, args)
    stderr = result.stderr.strip()
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}"
    assert len(stderr.splitlines()) == 1 and "bad" in stderr, stderr
    assert "Traceback" not in result.output
    assert snapshot(tmp_path) == before, "files were created or changed"
    assert bad.exists() == (kind != "missing")
