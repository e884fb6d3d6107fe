"""A grid's results as one JSON file, and back: results move between machines and outlive their store.

    eigenguard export study-filter --out benchmarks/results/study-filter.json
    eigenguard import benchmarks/results/study-filter.json     # on another machine, into its store

The file holds the grid's name, description and report layout, and per cell: key, labels, status, error,
the full configuration, metrics.json, the per-epoch log (log.csv's rows), wall time, versions and start /
finish times; results pages cite it as raw numbers.
Importing records its finished cells as done, so `eigenguard bench GRID.yaml` runs only the rest and
`eigenguard report` shows them; their run directories (weights, checkpoints) stay where they were made.
The file names the key version its keys were made with (`key_version`; a file without one is version 1).
Each finished cell's recorded key is checked against its recorded configuration under that version: a
hand-edited cell is refused, and so is the whole file, before anything is written. Cells are then recorded
under this version's key (`bench.grid.current_identity`), so today's grids find them. A cell the store
already holds as done is kept as it is.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eigenguard.bench.grid import LAYOUTS, current_identity, recorded_key
from eigenguard.bench.store import ResultStore
from eigenguard.config import KEY_VERSION
from eigenguard.errors import EigenguardError
from eigenguard.run_directory import read_log

CELL_FIELDS = ("key", "labels", "status", "error", "config", "metrics", "log", "wall_seconds", "versions",
               "started_at", "finished_at")  # fmt: skip


def export_grid(store: ResultStore, grid: str) -> dict[str, Any]:
    """Grid `grid`'s cells, in grid order, as the exchange file's record."""
    known = {g["name"]: g for g in store.grids()}
    if grid not in known:
        allowed = ", ".join(known) or "(none: run `eigenguard bench GRID.yaml` first)"
        raise EigenguardError(f"grid '{grid}' is not in results store '{store.path}'; it holds: {allowed}")
    cells = []
    for r in store.records(grid):
        log = r["log"]
        if log is None and r["run_dir"]:  # a store from before the log column: read the run directory's
            log = read_log(Path(r["run_dir"]))
        cells.append({**{k: r[k] for k in CELL_FIELDS if k != "log"}, "log": log})
    g = known[grid]
    layout = {"layout": g["layout"], "x": g["x"], "axes": json.loads(g["axes"] or "{}")}
    return {"grid": grid, "key_version": store.key_version, "description": g["description"], **layout, "cells": cells}


@dataclass
class ImportSummary:
    grid: str
    imported: int  # recorded as done now
    kept: int  # already done (or running) in this store: left as they were
    unfinished: int  # failed or running when exported: not imported, `eigenguard bench` runs them


def read_export(path: Path) -> dict[str, Any]:
    """An exchange file, its structure and every finished cell's key checked, its finished cells re-keyed
    to this version (key and config); an EigenguardError names the first problem."""
    try:
        record = json.loads(path.read_text())
    except OSError as e:
        raise EigenguardError(f"cannot read '{path}': {e.strerror or e}") from None
    except ValueError as e:
        raise EigenguardError(f"'{path}' is not JSON ({e}); give a file written by `eigenguard export`") from None
    if not (isinstance(record, dict) and isinstance(record.get("grid"), str) and isinstance(record.get("cells"), list)):
        raise EigenguardError(f"'{path}' is not a grid export (it needs 'grid' and 'cells'); see `eigenguard export`")
    if record.get("layout", "flat") not in LAYOUTS:
        raise EigenguardError(f"'{path}': layout {record['layout']!r} unknown; allowed: {', '.join(LAYOUTS)}")
    version = record.get("key_version", 1)
    if not (isinstance(version, int) and 1 <= version <= KEY_VERSION):
        raise EigenguardError(
            f"'{path}': key_version {version!r} unknown; this eigenguard reads 1 to {KEY_VERSION} (a newer file "
            "needs a newer eigenguard)"
        )
    for i, cell in enumerate(record["cells"]):
        where = f"'{path}', cell {i}"
        if not isinstance(cell, dict) or not isinstance(cell.get("key"), str):
            raise EigenguardError(f"{where}: not a cell (an object with a 'key')")
        if cell.get("status") != "done":
            continue
        for name, kind in (("config", dict), ("metrics", dict), ("labels", dict)):
            if not isinstance(cell.get(name), kind):
                raise EigenguardError(f"{where} ({cell['key']}): '{name}' must be an object")
        if not isinstance(cell["metrics"].get("acc"), int | float):
            raise EigenguardError(
                f"{where} ({cell['key']}): metrics.acc must be a number, not {cell['metrics'].get('acc')!r}"
            )
        if cell.get("log") is not None and not isinstance(cell["log"], list):
            raise EigenguardError(f"{where} ({cell['key']}): 'log' must be a list of epoch rows")
        if recorded_key(cell["config"], version) != cell["key"]:
            raise EigenguardError(
                f"{where}: its config does not give its key {cell['key']} (key version {version}): the file was "
                "edited after `eigenguard export` wrote it"
            )
        try:
            key, config = current_identity(cell["config"])
        except EigenguardError as e:
            raise EigenguardError(f"{where} ({cell['key']}): its config is not valid here: {e}") from None
        record["cells"][i] = {**cell, "key": key, "config": config}
    return {**record, "key_version": KEY_VERSION}


def import_export(store: ResultStore, record: dict[str, Any]) -> ImportSummary:
    """Record the finished cells of an exchange file's record (from `read_export`, which checked it) in
    `store`, and make them cells of its grid there."""
    done = [c for c in record["cells"] if c.get("status") == "done"]
    imported = sum(store.insert_done(c) for c in done)
    # files written before the layout was exported: the flat layout, the axes named by the cells' labels
    axes = record.get("axes") or {a: [] for c in record["cells"] for a in c.get("labels") or {}}
    grid = {"name": record["grid"], "description": record.get("description"), "layout": record.get("layout", "flat"),
            "x": record.get("x"), "axes": axes}  # fmt: skip
    store.add_to_grid(grid, [(c["key"], c["labels"]) for c in done])
    return ImportSummary(record["grid"], imported, len(done) - imported, len(record["cells"]) - len(done))
