"""`eigenguard bench GRID.yaml`: run every cell of a grid that is not finished yet.

- Resumable: a cell recorded as done is skipped; one recorded as failed is skipped unless retry_failed.
- Fault-tolerant: a failing cell is recorded with its error and the grid goes on.
- Killing the runner loses at most the epoch in flight: every finished cell was recorded by the process
  that ran it, before the runner heard of it. Interrupted cells are released (or, after a hard kill, found
  stale by their dead owner pid) and run again next time, resumed from their last epoch's checkpoint in
  their partial run directory (bench/cell.py).
- A post-training defense cell waits for the grid's no-defense cell of the same setting, so it finds the
  backdoored model in the cache instead of training it again (the cache itself is locked as well, for
  runners that do not share a grid).
- The ETA it prints after each cell sums an estimate per cell left (`CellTimes`): the store's finished
  cells of the same setting (other seeds), else of the same defense on the same base (other attacks), else
  the mean of the cells this invocation finished. A grid of 20-second and 20-minute cells gets an ETA that
  says so, not their mean times the count.
"""

import json
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from eigenguard.bench.cell import PARTIAL
from eigenguard.bench.executors import Executor
from eigenguard.bench.grid import Cell, Grid
from eigenguard.bench.store import ResultStore
from eigenguard.config import PLACEMENT_FIELDS
from eigenguard.run_directory import owner_alive


@dataclass
class GridSummary:
    done: int = 0  # finished now or before
    failed: int = 0
    skipped_failed: int = 0  # failed in an earlier run and not retried
    elsewhere: int = 0  # running in another live runner
    ran: list[str] = field(default_factory=list)  # keys run by this invocation

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.skipped_failed == 0 and self.elsewhere == 0


def _format_seconds(seconds: float) -> str:
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# Config fields that say where or with which seed a cell runs, not how much work it is.
NOT_WORK = frozenset({"seed", *PLACEMENT_FIELDS})


class CellTimes:
    """Wall seconds of finished cells, by setting (config without NOT_WORK) and by setting without the
    attack, to estimate the cells left. Times recorded on another machine count as they are."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.setting: dict[str, list[float]] = {}
        self.defense: dict[str, list[float]] = {}
        self.this_run: list[float] = []
        for r in records:
            if r["status"] == "done" and r["wall_seconds"]:
                self._add(r["config"], r["wall_seconds"])

    @staticmethod
    def _keys(config: dict[str, Any]) -> tuple[str, str]:
        work = {k: v for k, v in config.items() if k not in NOT_WORK}
        return json.dumps(work, sort_keys=True), json.dumps({**work, "attack": None}, sort_keys=True)

    def _add(self, config: dict[str, Any], seconds: float) -> None:
        setting, defense = self._keys(config)
        self.setting.setdefault(setting, []).append(seconds)
        self.defense.setdefault(defense, []).append(seconds)

    def finished(self, config: dict[str, Any], seconds: float) -> None:
        """A cell this invocation ran."""
        self._add(config, seconds)
        self.this_run.append(seconds)

    def estimate(self, config: dict[str, Any]) -> float | None:
        """Expected wall seconds of a cell; None before anything is known."""
        setting, defense = self._keys(config)
        for seen in (self.setting.get(setting), self.defense.get(defense), self.this_run):
            if seen:
                return sum(seen) / len(seen)
        return None


def clean_partial(runs: Path) -> None:
    """Remove partial run directories of the old layout (<key>-<pid> under .partial, before cells were
    resumable) whose process is gone. Those of today (<key>) stay: the cell's next attempt resumes them."""
    import socket

    for path in (runs / PARTIAL).glob("*-*"):
        pid = path.name.rpartition("-")[2]
        if not owner_alive(f"{socket.gethostname()}:{pid}"):
            shutil.rmtree(path, ignore_errors=True)


def run_grid(
    grid: Grid,
    store: ResultStore,
    executor: Executor,
    runs: Path,
    *,
    retry_failed: bool = False,
    console: Console | None = None,
    poll_seconds: float = 1.0,
) -> GridSummary:
    console = console or Console(stderr=True)
    store.register_grid(grid)
    clean_partial(runs)
    summary = GridSummary()
    todo: list[Cell] = []
    for cell in grid.cells:
        status = store.status(cell.key)
        if status == "done":
            summary.done += 1
        elif status == "failed" and not retry_failed:
            summary.skipped_failed += 1
        else:
            todo.append(cell)
    total = len(grid.cells)
    console.print(
        f"[bold]{grid.name}[/]: {total} cells, {summary.done} already done, "
        f"{summary.skipped_failed} failed before{' (not retried: --retry-failed)' if summary.skipped_failed else ''}, "
        f"{len(todo)} to run with {executor.workers} worker(s) -> {store.path}",
        soft_wrap=True,
    )
    keys_in_todo = {c.key for c in todo}
    started_at = time.perf_counter()
    times = CellTimes(store.records())
    configs = {c.key: c.config.model_dump() for c in grid.cells}
    labels_of = {c.key: c.labels for c in grid.cells}

    def ready(cell: Cell) -> bool:
        return cell.after is None or cell.after not in keys_in_todo

    previous = _stop_on_sigterm()
    try:
        while todo or executor.in_flight():
            while executor.capacity() > 0:
                cell = next((c for c in todo if ready(c)), None)
                if cell is None:
                    break
                todo.remove(cell)
                if store.claim(cell.key, cell.config.model_dump(), retry_failed=retry_failed):
                    executor.submit(cell)
                else:  # another runner finished or holds it meanwhile
                    keys_in_todo.discard(cell.key)
                    status = store.status(cell.key)
                    summary.done += status == "done"
                    summary.elsewhere += status == "running"
                    summary.skipped_failed += status == "failed"
            for key in executor.wait(poll_seconds):
                keys_in_todo.discard(key)
                summary.ran.append(key)
                record = store.record(grid.name, key)
                if record["status"] == "done":
                    if record["wall_seconds"]:
                        times.finished(configs[key], record["wall_seconds"])
                    summary.done += 1
                    outcome = f"[green]done[/] ACC {_pct(record['acc'])} ASR {_pct(record['asr'])}"
                else:
                    summary.failed += 1
                    outcome = f"[red]failed[/] {str(record['error']).splitlines()[0]}"
                left_keys = [c.key for c in todo] + executor.in_flight()
                left = len(left_keys)
                eta = sum(times.estimate(configs[k]) or 0.0 for k in left_keys) / executor.workers
                labels = " ".join(f"{k}={v}" for k, v in labels_of[key].items())
                console.print(
                    f"[{summary.done + summary.failed}/{total}] {labels}: {outcome} "
                    f"({_format_seconds(record['wall_seconds'] or 0)}) | done {summary.done}, failed "
                    f"{summary.failed + summary.skipped_failed}, left {left}, "
                    f"elapsed {_format_seconds(time.perf_counter() - started_at)}, ETA {_format_seconds(eta)}",
                    highlight=False,
                    soft_wrap=True,  # one line per cell, also in a log file
                )
    except KeyboardInterrupt:
        in_flight = executor.in_flight()
        executor.shutdown()
        for key in in_flight:
            if store.status(key) == "running":
                store.release(key)
        clean_partial(runs)
        console.print(f"interrupted: {len(in_flight)} cell(s) in flight released; finished cells are kept")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return summary


def _stop_on_sigterm() -> Any:
    """`kill PID` stops the runner like Ctrl-C: in-flight cells released, finished ones kept."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
