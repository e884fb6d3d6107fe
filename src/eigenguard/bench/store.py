"""The results store: one SQLite database (WAL mode), one row per cell, safe with several writers.

Tables:
- cells: key (the cell's config hash), config (JSON), status (running | done | failed), the metrics under
  both evaluation protocols (acc, asr: per-sample; acc_paper, asr_paper: the paper's batch protocol, guarded
  models only), the whole metrics.json, wall time, run directory, error, versions (eigenguard, torch,
  python, device), owner (host:pid of the process running it), attempts, start and finish times, and the
  per-epoch log (log.csv's rows as JSON), so a result outlives its run directory (bench/exchange.py);
- grids: each grid ever run (name, report layout, description, axes);
- grid_cells: which cells belong to which grid, in grid order, with their axis labels.

Keys: a store records which definition made its keys (`config.KEY_VERSION`, in SQLite's user_version; 0
is version 1, every store written before the version was recorded). A store of an older version is
re-keyed when first opened for writing, from each cell's recorded config (`bench.grid.current_identity`),
so cells it holds are found by today's grids; while a runner of the older version is live on it, it is
refused instead.

Concurrency: WAL lets readers work while one writer commits; every write is one short transaction, and
`claim` takes the write lock first (BEGIN IMMEDIATE), so two runners never both start a cell. A "running"
row whose owner process is gone (same host, pid not alive) is stale and may be claimed again.
"""

import csv
import io
import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eigenguard.bench.grid import current_identity
from eigenguard.config import KEY_VERSION, config_value
from eigenguard.errors import EigenguardError
from eigenguard.run_directory import atomic_write_text, owner_alive

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    acc REAL, asr REAL, acc_paper REAL, asr_paper REAL,
    protocol TEXT,
    metrics TEXT,
    wall_seconds REAL,
    run_dir TEXT,
    error TEXT,
    versions TEXT,
    owner TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at TEXT,
    finished_at TEXT,
    log TEXT
);
CREATE TABLE IF NOT EXISTS grids (
    name TEXT PRIMARY KEY, layout TEXT NOT NULL, x TEXT, description TEXT, source TEXT, axes TEXT
);
CREATE TABLE IF NOT EXISTS grid_cells (
    grid TEXT NOT NULL, key TEXT NOT NULL, position INTEGER NOT NULL, labels TEXT NOT NULL,
    PRIMARY KEY (grid, key)
);
"""
GRID_CELLS = "SELECT g.grid, g.labels, c.* FROM grid_cells g JOIN cells c ON c.key = g.key WHERE g.grid = ?"
CSV_COLUMNS = (
    "grid", "key", "status", "dataset", "model", "attack", "poison_rate", "defense", "seed", "labels",
    "acc", "asr", "acc_paper", "asr_paper", "protocol", "wall_seconds", "run_dir", "error", "versions",
    "attempts", "started_at", "finished_at",
)  # fmt: skip


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def this_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ResultStore:
    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        """read_only: for the report, which must leave the file as it found it (no schema, no journal mode)."""
        self.path = Path(path)
        if read_only:
            self._open_read_only()
            return
        if self.path.is_file() and self.path.stat().st_size == 0:  # SQLite would take it as a new database
            raise EigenguardError(
                f"results store '{self.path}' is an empty file; allowed: a store eigenguard wrote, or a new path"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=60000")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process crash
            self._db.executescript(SCHEMA)  # IF NOT EXISTS: idempotent, and safe for concurrent openers
            self._add_log_column()
            self._upgrade_keys()
        except sqlite3.DatabaseError as e:
            raise EigenguardError(f"results store '{self.path}' is not a usable SQLite database: {e}") from None

    @property
    def key_version(self) -> int:
        """Which definition made this store's keys (config.KEY_VERSION)."""
        return self._db.execute("PRAGMA user_version").fetchone()[0] or 1

    def _upgrade_keys(self) -> None:
        """Re-key a store of an older key version from its cells' recorded configs (module docstring). Two
        old cells that are one cell today (they differed by an option added since, at its default) become
        one: the done one, else the one that finished last."""
        if self._db.execute("PRAGMA user_version").fetchone()[0] == KEY_VERSION:
            return
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > KEY_VERSION:
                raise EigenguardError(
                    f"results store '{self.path}' has key version {version}, newer than this eigenguard's "
                    f"{KEY_VERSION}: use the eigenguard that wrote it, or a newer one"
                )
            if version == KEY_VERSION:  # a second opener upgraded it first
                return
            rows = [dict(r) for r in db.execute("SELECT * FROM cells")]
            for r in rows:
                if r["status"] == "running" and owner_alive(r["owner"]):
                    raise EigenguardError(
                        f"results store '{self.path}' is in use by an older eigenguard (cell {r['key']} running "
                        f"as {r['owner']}); its keys are upgraded once that runner has stopped: run again then"
                    )
            kept: dict[str, dict[str, Any]] = {}
            renamed: dict[str, str] = {}
            for r in rows:
                try:
                    key, config = current_identity(json.loads(r["config"]))
                except EigenguardError:  # a config no longer valid here: kept as it was, no grid finds it
                    key, config = r["key"], json.loads(r["config"])
                renamed[r["key"]] = key
                row = {**r, "key": key, "config": json.dumps(config, sort_keys=True)}
                if key not in kept or _preferred(row) > _preferred(kept[key]):
                    kept[key] = row
            members = [dict(m) for m in db.execute("SELECT * FROM grid_cells ORDER BY grid, position")]
            db.execute("DELETE FROM cells")
            for row in kept.values():
                columns = ", ".join(row)
                db.execute(f"INSERT INTO cells ({columns}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
            db.execute("DELETE FROM grid_cells")
            db.executemany(
                "INSERT OR IGNORE INTO grid_cells VALUES (?, ?, ?, ?)",  # a grid's first of two merged cells
                [(m["grid"], renamed.get(m["key"], m["key"]), m["position"], m["labels"]) for m in members],
            )
            db.execute(f"PRAGMA user_version = {KEY_VERSION}")

    def _add_log_column(self) -> None:
        """Stores written before the log column existed get it (empty for their cells). Checked first without
        the write lock, which every store opened would otherwise take; again under it, against a second opener."""

        def missing() -> bool:
            return "log" not in {r["name"] for r in self._db.execute("PRAGMA table_info(cells)")}

        if missing():
            with self._write() as db:
                if missing():
                    db.execute("ALTER TABLE cells ADD COLUMN log TEXT")

    def _open_read_only(self) -> None:
        # With no -wal file beside it nobody is writing and the file holds every commit: open it immutable,
        # so SQLite creates no -wal / -shm files either. With one, read through it (a runner is at work).
        live = Path(f"{self.path}-wal").exists()
        uri = self.path.resolve().as_uri() + ("?mode=ro" if live else "?mode=ro&immutable=1")
        try:
            self._db = sqlite3.connect(uri, uri=True, timeout=60)
            self._db.row_factory = sqlite3.Row
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise EigenguardError(f"results store '{self.path}' is not a usable SQLite database: {e}") from None
        if not {"cells", "grids", "grid_cells"} <= tables:
            self._db.close()
            raise EigenguardError(
                f"results store '{self.path}' holds no eigenguard results (no cells, grids and grid_cells tables)"
            )

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that holds the database's write lock from its first statement."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- grids ----------------------------------------------------------------------------------------

    def register_grid(self, grid: Any) -> None:
        """Record a grid (bench.grid.Grid) and its cells' membership; idempotent."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO grids VALUES (?, ?, ?, ?, ?, ?)",
                (grid.name, grid.layout, grid.x, grid.description, str(grid.source or ""), json.dumps(grid.axes)),
            )
            db.execute("DELETE FROM grid_cells WHERE grid = ?", (grid.name,))
            db.executemany(
                "INSERT INTO grid_cells VALUES (?, ?, ?, ?)",
                [(grid.name, c.key, i, json.dumps(c.labels)) for i, c in enumerate(grid.cells)],
            )

    def grids(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM grids ORDER BY name")]

    # -- cells ----------------------------------------------------------------------------------------

    def status(self, key: str) -> str | None:
        row = self._db.execute("SELECT status FROM cells WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["status"]

    def claim(self, key: str, config: dict[str, Any], *, retry_failed: bool = False, owner: str | None = None) -> bool:
        """Mark the cell running for `owner` unless it is done, failed (without retry) or running elsewhere."""
        with self._write() as db:
            row = db.execute("SELECT status, owner, attempts FROM cells WHERE key = ?", (key,)).fetchone()
            if row is not None:
                if row["status"] == "done":
                    return False
                if row["status"] == "failed" and not retry_failed:
                    return False
                if row["status"] == "running" and owner_alive(row["owner"]):
                    return False
            attempts = 1 + (row["attempts"] if row else 0)
            db.execute(
                "INSERT OR REPLACE INTO cells (key, config, status, owner, attempts, started_at) "
                "VALUES (?, ?, 'running', ?, ?, ?)",
                (key, json.dumps(config, sort_keys=True), owner or this_owner(), attempts, now()),
            )
        return True

    def set_owner(self, key: str, owner: str) -> None:
        with self._write() as db:
            db.execute("UPDATE cells SET owner = ? WHERE key = ? AND status = 'running'", (owner, key))

    def finish(self, key: str, result: dict[str, Any]) -> None:
        """Record a cell's outcome: `result` from bench.cell.run_cell (status done or failed)."""
        with self._write() as db:
            db.execute(
                "UPDATE cells SET status = ?, acc = ?, asr = ?, acc_paper = ?, asr_paper = ?, protocol = ?, "
                "metrics = ?, log = ?, wall_seconds = ?, run_dir = ?, error = ?, versions = ?, finished_at = ? "
                "WHERE key = ?",
                (
                    result["status"],
                    *_outcome_columns(result.get("metrics"), result.get("log")),
                    result.get("wall_seconds"),
                    result.get("run_dir"),
                    result.get("error"),
                    json.dumps(result.get("versions") or {}),
                    now(),
                    key,
                ),
            )

    def insert_done(self, cell: dict[str, Any]) -> bool:
        """Record a cell finished elsewhere (bench/exchange.py: an exported grid's cell, already checked):
        key, config, metrics, log, wall_seconds, versions, started_at, finished_at. A cell this store holds
        as done, or running in a live process, is left as it is (False)."""
        with self._write() as db:
            row = db.execute("SELECT status, owner FROM cells WHERE key = ?", (cell["key"],)).fetchone()
            if row is not None and (
                row["status"] == "done" or (row["status"] == "running" and owner_alive(row["owner"]))
            ):
                return False
            db.execute(
                "INSERT OR REPLACE INTO cells (key, config, status, acc, asr, acc_paper, asr_paper, protocol, "
                "metrics, log, wall_seconds, run_dir, error, versions, owner, attempts, started_at, finished_at) "
                "VALUES (?, ?, 'done', ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, NULL, 1, ?, ?)",
                (
                    cell["key"],
                    json.dumps(cell["config"], sort_keys=True),
                    *_outcome_columns(cell["metrics"], cell.get("log")),
                    cell.get("wall_seconds"),
                    json.dumps(cell.get("versions") or {}),
                    cell.get("started_at"),
                    cell.get("finished_at"),
                ),
            )
        return True

    def add_to_grid(self, grid: dict[str, Any], members: list[tuple[str, dict[str, str]]]) -> None:
        """Make `members` (key, labels) cells of grid `grid` (name, description, layout, x, axes), after the
        ones it has. A grid this store knows keeps its own record (its YAML file registered it)."""
        axes = json.dumps(grid["axes"])
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO grids VALUES (?, ?, ?, ?, '', ?)",
                (grid["name"], grid["layout"], grid["x"], grid["description"] or "", axes),
            )
            start = db.execute("SELECT COUNT(*) FROM grid_cells WHERE grid = ?", (grid["name"],)).fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO grid_cells VALUES (?, ?, ?, ?)",
                [(grid["name"], key, start + i, json.dumps(labels)) for i, (key, labels) in enumerate(members)],
            )

    def release(self, key: str) -> None:
        """Forget a running cell that was never started (the runner stopped first)."""
        with self._write() as db:
            db.execute("DELETE FROM cells WHERE key = ? AND status = 'running'", (key,))

    def records(self, grid: str | None = None) -> list[dict[str, Any]]:
        """Cells as dicts (config and metrics parsed), with grid and labels when `grid` names one."""
        if grid is None:
            rows = self._db.execute("SELECT NULL AS grid, '{}' AS labels, * FROM cells ORDER BY started_at, key")
        else:
            rows = self._db.execute(GRID_CELLS + " ORDER BY g.position", (grid,))
        return [_parsed(r) for r in rows]

    def record(self, grid: str, key: str) -> dict[str, Any]:
        """One cell of `grid`, as `records` gives it; a cell the grid no longer lists (its file was edited and
        recorded again while it ran) without labels."""
        row = self._db.execute(GRID_CELLS + " AND g.key = ?", (grid, key)).fetchone()
        if row is None:
            row = self._db.execute(
                "SELECT ? AS grid, '{}' AS labels, * FROM cells WHERE key = ?", (grid, key)
            ).fetchone()
        return _parsed(row)

    def grid_size(self, grid: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM grid_cells WHERE grid = ?", (grid,)).fetchone()[0]

    def export_csv(self, path: Path, grid: str | None = None) -> int:
        """Write the cells (of one grid, or all) as CSV, one row per cell; returns the row count."""
        rows = []
        grids = [grid] if grid else [g["name"] for g in self.grids()]
        for name in grids:
            for r in self.records(name):
                config = r["config"]
                rows.append(
                    {
                        **{k: r.get(k) for k in CSV_COLUMNS},
                        **{k: config_value(config, k) for k in CONFIG_COLUMNS},
                        "labels": json.dumps(r["labels"]),
                        "versions": json.dumps(r["versions"]),
                    }
                )
        buffer = _csv_text(rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, buffer)
        return len(rows)


CONFIG_COLUMNS = ("dataset", "model", "attack", "poison_rate", "defense", "seed")


def _preferred(row: dict[str, Any]) -> tuple[bool, str]:
    """Which of two records of one cell a store keeps: a done one, then the one finished last."""
    return row["status"] == "done", row["finished_at"] or ""


def _outcome_columns(metrics: dict[str, Any] | None, log: list[dict[str, Any]] | None) -> tuple[Any, ...]:
    """A result's columns: acc, asr, acc_paper, asr_paper, protocol, metrics (JSON), log (JSON); NULL where
    it has none."""
    m = metrics or {}
    columns = tuple(m.get(k) for k in ("acc", "asr", "acc_paper", "asr_paper", "protocol"))
    return (*columns, json.dumps(m) if m else None, json.dumps(log) if log is not None else None)


def _parsed(row: sqlite3.Row) -> dict[str, Any]:
    """A cells row as a dict, its JSON columns parsed."""
    d = dict(row)
    for name in ("config", "metrics", "labels", "versions"):
        d[name] = json.loads(d[name]) if d[name] else {}
    d["log"] = json.loads(d["log"]) if d.get("log") else None  # None: not recorded (a store from before the column)
    return d


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
