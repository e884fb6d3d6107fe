"""The artifact cache's fill lock: two processes that need the same missing entry compute it once."""

import multiprocessing
import time
from pathlib import Path

from eigenguard.cache import cache_root, filling


def fill(entry: str, log: str) -> None:
    with filling(Path(entry)):
        if not Path(entry).exists():
            with open(log, "a") as f:
                f.write("computed\n")
            time.sleep(0.5)  # long enough for the other process to arrive and wait
            Path(entry).write_text("artifact")


def test_two_processes_fill_an_entry_once(tmp_path: Path) -> None:
    entry, log = tmp_path / "cache" / "thing", tmp_path / "log"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=fill, args=(str(entry), str(log))) for _ in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=60)
    assert [p.exitcode for p in workers] == [0, 0]
    assert log.read_text() == "computed\n" and entry.read_text() == "artifact"
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".")] == [".thing.lock"]


def test_cache_root_precedence(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EIGENGUARD_CACHE", str(tmp_path / "env"))
    assert cache_root("/configured") == Path("/configured")
    assert cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("EIGENGUARD_CACHE")
    assert cache_root(None) == Path.home() / ".cache" / "eigenguard"
