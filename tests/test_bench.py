"""The benchmark harness: grids, the results store, resume, failure isolation, concurrency, reports, Ray."""

import csv
import json
import multiprocessing
import os
import socket
import sqlite3
import statistics
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from eigenguard.bench.exchange import import_export, read_export
from eigenguard.bench.executors import LocalExecutor
from eigenguard.bench.grid import load_grid, parse_grid, recorded_key
from eigenguard.bench.report import write_report
from eigenguard.bench.runner import CellTimes, run_grid
from eigenguard.bench.store import SCHEMA, ResultStore
from eigenguard.cli import app
from eigenguard.config import KEY_VERSION
from eigenguard.errors import EigenguardError

GRIDS = sorted((Path(__file__).parent.parent / "grids").glob("*.yaml"))


def tiny_grid(root: Path, **axes: list) -> dict:
    return {
        "name": "tiny",
        "description": "test grid",
        "report": {"layout": "table3"},
        "base": {
            "profile": "quick",
            "dataset": "mnist",
            "data_root": str(root),
            "width": 0.125,
            "epochs": 1,
            "batch_size": 64,
            "train_subset": None,
            "clean_samples": 50,
            "device": "cpu",
        },
        "axes": axes or {"attack": ["badnets"], "defense": ["none", "ft"]},
    }


# -- grids ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_shipped_grids_expand_and_validate(path: Path) -> None:
    grid = load_grid(path)
    assert grid.name == path.stem and grid.cells
    assert len({c.key for c in grid.cells}) == len(grid.cells)


def test_recorded_cells_are_found_under_todays_keys(tmp_path: Path) -> None:
    # study-queue.json holds key-version-1 cells, recorded before EigenGuard's `ranking` existed (version 1
    # left such later options out at their default): each recorded key checks against its recorded config,
    # and once imported the grid finds every one of them done under this version's keys
    path = GRIDS[0].parent.parent / "benchmarks" / "results" / "study-queue.json"
    raw = json.loads(path.read_text())
    assert "key_version" not in raw and recorded_key(raw["cells"][0]["config"], 1) == raw["cells"][0]["key"]
    record = read_export(path)
    assert record["key_version"] == KEY_VERSION
    done = {json.dumps(c["labels"]) for c in record["cells"] if c["status"] == "done"}
    with closing(ResultStore(tmp_path / "r.sqlite")) as store:
        import_export(store, record)
        grid = load_grid(GRIDS[0].parent / "study-queue.yaml")
        found = [json.dumps(c.labels) for c in grid.cells if store.status(c.key) == "done"]
    assert len(done) >= 7 and set(found) == done
    cells = {c.labels["cell"]: c for c in grid.cells}
    assert cells["badnets-paper"].config.defense.options["ranking"] == "pass"  # completed, in the key
    raw_grid = {"name": "g", "description": "", "base": {"profile": "quick", "eval_every": 12, "attack": "badnets"}}
    guards = ("eigenguard", {"name": "eigenguard", "ranking": "pass"}, {"name": "eigenguard", "ranking": "training"})
    keys = [parse_grid({**raw_grid, "axes": {"defense": [guard]}}).cells[0].key for guard in guards]
    assert keys[0] == keys[1] != keys[2]


def test_a_store_of_an_older_key_version_is_rekeyed_once(tmp_path: Path) -> None:
    grid = parse_grid({"name": "g", "base": {"profile": "quick"}, "axes": {"defense": ["none", "eigenguard"]}})
    plain, guarded = grid.cells
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # as eigenguard wrote it before keys had a version
        db.executescript(SCHEMA)
        old = plain.config.model_dump()
        old["attack"] = {"name": "badnets"}  # version 1 left options added later out at their default
        for position, (key, config, status, finished) in enumerate(
            (
                (recorded_key(old, 1), old, "done", "2026-01-02"),
                (recorded_key(plain.config.model_dump(), 1), plain.config.model_dump(), "failed", "2026-01-03"),
                ("0123456789abcdef", {"dataset": "no-such-dataset"}, "done", "2026-01-01"),
            )
        ):
            db.execute(
                "INSERT INTO cells (key, config, status, acc, finished_at) VALUES (?, ?, ?, 0.5, ?)",
                (key, json.dumps(config), status, finished),
            )
            db.execute("INSERT INTO grid_cells VALUES ('g', ?, ?, '{}')", (key, position))
        db.execute(  # a cell a live runner of the old version is working on: no re-keying under it
            "INSERT INTO cells (key, config, status, owner) VALUES ('live', ?, 'running', ?)",
            (json.dumps(old), f"{socket.gethostname()}:{os.getpid()}"),
        )
    with pytest.raises(EigenguardError, match="in use by an older eigenguard"):
        ResultStore(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM cells WHERE key = 'live'")
    with closing(ResultStore(path)) as store:
        assert store.key_version == KEY_VERSION
        assert store.status(plain.key) == "done" and store.status(guarded.key) is None  # the done one kept
        assert [r["key"] for r in store.records("g")] == [plain.key, "0123456789abcdef"]  # one grid member
        assert store.records("g")[0]["config"] == plain.config.model_dump()  # complete, as today's cells
        assert store.status("0123456789abcdef") == "done"  # not valid here: kept under its old key
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {KEY_VERSION + 1}")
    with pytest.raises(EigenguardError, match="newer than this eigenguard"):
        ResultStore(path)


def test_a_number_given_in_another_kind_is_one_setting() -> None:
    # CLP's u defaults to 3.0: `u: 3` (a YAML int) is the same cell as the default, and so is k: 20.0 for
    # EigenGuard's int k; the resolved options keep the default's kind
    raw = {"name": "g", "description": "", "base": {"profile": "quick", "eval_every": 12, "attack": "badnets"}}

    def cell(defense: object) -> Any:
        return parse_grid({**raw, "axes": {"defense": [defense]}}).cells[0]

    assert cell({"name": "clp", "u": 3}).key == cell("clp").key != cell({"name": "clp", "u": 3.5}).key
    assert type(cell({"name": "clp", "u": 3}).config.defense.options["u"]) is float
    assert cell({"name": "eigenguard", "k": 20.0}).key == cell("eigenguard").key
    assert type(cell({"name": "eigenguard", "k": 20.0}).config.defense.options["k"]) is int


@pytest.mark.parametrize(
    "name", ["study-queue.json", "study-filter.json", "fast-anchors.json", "clean-model-queue.json"]
)
def test_committed_exports_import_under_this_version(name: str) -> None:
    # every finished cell of the raw JSON behind docs/results/ still gives its recorded key from its config,
    # so `eigenguard import` takes it and `eigenguard bench` does not run it again
    path = GRIDS[0].parent.parent / "benchmarks" / "results" / name
    raw = json.loads(path.read_text())
    record = read_export(path)
    assert sum(c["status"] == "done" for c in record["cells"]) >= 7
    if raw.get("key_version") == KEY_VERSION:  # a file of this version keeps its keys: else raise KEY_VERSION
        done = [c["key"] for c in raw["cells"] if c["status"] == "done"]
        assert [c["key"] for c in record["cells"] if c["status"] == "done"] == done


def test_grid_expansion_labels_variants_and_dependencies(tmp_path: Path) -> None:
    raw = tiny_grid(tmp_path, attack=["badnets", "blend"], defense=["none", "ft", "eigenguard"], seed=[0, 1])
    raw["axes"]["budget"] = [{"label": "low", "poison_rate": 0.05}, {"label": "high", "poison_rate": 0.2}]
    grid = parse_grid(raw)
    assert len(grid.cells) == 2 * 3 * 2 * 2
    cell = grid.cells[-1]
    assert cell.labels == {"attack": "blend", "defense": "eigenguard", "seed": "1", "budget": "high"}
    assert cell.config.poison_rate == 0.2 and cell.after is None  # trains from scratch: waits for nobody
    by_labels = {tuple(c.labels.values()): c for c in grid.cells}
    ft = by_labels[("blend", "ft", "1", "low")]
    plain = by_labels[("blend", "none", "1", "low")]
    assert ft.after == plain.key  # the repair waits for the backdoored model of exactly its setting


def test_component_axes_options_and_report_labels(tmp_path: Path) -> None:
    """A component with options on an axis is labelled by its name; an option axis (`defense.k`) is a
    setting: its values are the cells' options, and the report reads them back, also as a curve's x."""
    raw = tiny_grid(tmp_path, attack=["badnets"], defense=["none", {"name": "eigenguard", "anchor_count": 3}])
    raw["axes"]["variant"] = [{"label": "k4", "defense.k": 4}, {"label": "paper"}]
    with pytest.raises(EigenguardError, match="unknown option 'k' for defense 'none'"):
        parse_grid(raw)  # the none defense takes no k: the typo-proofing applies to option axes too
    raw["axes"]["defense"] = [{"name": "eigenguard", "anchor_count": 3}]
    grid = parse_grid(raw)
    assert [c.labels["defense"] for c in grid.cells] == ["eigenguard", "eigenguard"]
    assert [c.config.defense.options["k"] for c in grid.cells] == [4, 20]
    assert all(c.config.defense.options["anchor_count"] == 3 for c in grid.cells)
    curve = parse_grid(
        {
            "name": "k-curve",
            "report": {"layout": "curve", "x": "defense.k"},
            "base": {"profile": "quick", "defense": "eigenguard"},
            "axes": {"attack": ["badnets", "blend"], "defense.k": [5, 10]},
        }
    )
    store = ResultStore(tmp_path / "r.sqlite")
    store.register_grid(curve)
    for cell in curve.cells:
        store.claim(cell.key, cell.config.model_dump())
        k = cell.config.defense.options["k"]
        store.finish(cell.key, {"status": "done", "metrics": {"acc": k / 100, "asr": 0.5, "protocol": "per-sample"}})
    write_report(store, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| defense.k | badnets / ASR | badnets / ACC | blend / ASR | blend / ACC |" in md
    assert "| 10 | 50.0 | 10.0 | 50.0 | 10.0 |" in md
    assert (tmp_path / "report" / "k-curve-curve.png").stat().st_size > 0


def test_grid_errors_name_the_bad_value(tmp_path: Path) -> None:
    with pytest.raises(EigenguardError, match=r"cell .*'attack': 'nope'.*unknown attack"):
        parse_grid(tiny_grid(tmp_path, attack=["badnets", "nope"]))
    with pytest.raises(EigenguardError, match="unknown key 'axis'; allowed: name, description, report"):
        parse_grid({**tiny_grid(tmp_path), "axis": {}})
    with pytest.raises(EigenguardError, match="layout 'table9' unknown; allowed: table3"):
        parse_grid({**tiny_grid(tmp_path), "report": {"layout": "table9"}})
    with pytest.raises(EigenguardError, match="axis 'budget' is not a setting"):
        parse_grid(tiny_grid(tmp_path, budget=[0.1]))
    with pytest.raises(EigenguardError, match="cannot read grid file"):
        load_grid(tmp_path / "missing.yaml")


# -- the store -----------------------------------------------------------------------------------------


def test_claim_rules(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    assert store.claim("a", {"x": 1})
    assert not store.claim("a", {"x": 1})  # running, and its owner (this process) is alive
    store.finish("a", {"status": "done", "metrics": {"acc": 0.9, "asr": 0.1}, "wall_seconds": 1.0})
    assert not store.claim("a", {"x": 1})  # done: never again
    assert store.claim("b", {"x": 2})
    store.finish("b", {"status": "failed", "error": "boom"})
    assert not store.claim("b", {"x": 2}) and store.claim("b", {"x": 2}, retry_failed=True)
    dead = multiprocessing.get_context("spawn").Process(target=os.getpid)
    dead.start()
    dead.join()
    assert store.claim("c", {}, owner=f"{socket.gethostname()}:{dead.pid}")
    assert store.claim("c", {})  # its owner is gone: stale, claimed again
    assert store.claim("d", {}, owner="another-host:1") and not store.claim("d", {})  # elsewhere: left alone
    rows = {r["key"]: r for r in store.records()}
    assert rows["a"]["acc"] == 0.9 and rows["b"]["attempts"] == 2 and rows["c"]["attempts"] == 2


def _hammer(path: str, worker: int, n: int) -> None:
    store = ResultStore(path)
    for i in range(n):
        key = f"{worker}-{i}"
        assert store.claim(key, {"worker": worker})
        store.finish(key, {"status": "done", "metrics": {"acc": i / n}, "wall_seconds": 0.0})
    store.close()


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer, args=(str(path), w, 40)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    rows = ResultStore(path).records()
    assert len(rows) == 160 and all(r["status"] == "done" for r in rows)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- running grids ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_resume_and_failure_isolation(mnist_root: Path, tmp_path: Path) -> None:
    raw = tiny_grid(mnist_root, attack=["badnets"], defense=["none", "ft"])
    # a cell that fails at run time: more clean images than the defense split holds
    raw["axes"]["pool"] = [{"label": "ok"}, {"label": "too-many", "clean_samples": 10**6}]
    grid = parse_grid(raw)
    store, runs = ResultStore(tmp_path / "r.sqlite"), tmp_path / "runs"
    summary = run_grid(grid, store, LocalExecutor(store, runs, workers=2, device="cpu"), runs)
    records = {r["labels"]["defense"] + "/" + r["labels"]["pool"]: r for r in store.records("tiny")}
    assert summary.failed == 1 and summary.done == 3
    failed = records["ft/too-many"]
    assert failed["status"] == "failed" and "clean" in failed["error"] and failed["run_dir"] is None
    for name in ("none/ok", "ft/ok", "none/too-many"):  # the grid went on past the failure
        r = records[name]
        assert r["status"] == "done" and r["acc"] is not None and r["versions"]["torch"]
        assert (Path(r["run_dir"]) / "metrics.json").exists()
        with (Path(r["run_dir"]) / "log.csv").open() as f:  # the per-epoch log, kept in the store too
            assert r["log"] and r["log"] == list(csv.DictReader(f))
    # complete or absent: only finished run directories, nothing left half-written
    assert not list((runs / ".partial").iterdir())
    assert len([p for p in runs.iterdir() if p.name not in ("logs", ".partial")]) == 3

    # re-running skips what is done and, by default, what failed
    again = run_grid(grid, store, LocalExecutor(store, runs, workers=1, device="cpu"), runs)
    assert again.ran == [] and again.done == 3 and again.skipped_failed == 1
    retried = run_grid(grid, store, LocalExecutor(store, runs, workers=1, device="cpu"), runs, retry_failed=True)
    assert retried.ran == [failed["key"]] and retried.failed == 1
    assert next(r for r in store.records("tiny") if r["key"] == failed["key"])["attempts"] == 2


def test_a_grid_recorded_again_while_it_runs_does_not_stop_the_runner(mnist_root: Path, tmp_path: Path) -> None:
    """`bench --dry-run` of an edited grid file records the grid again: a cell the runner finishes may no
    longer be listed in it; the runner reports it under its own labels and goes on."""
    grid = parse_grid(tiny_grid(mnist_root, attack=["badnets"], defense=["none"]))
    edited = parse_grid(tiny_grid(mnist_root, attack=["blend"], defense=["none"]))
    store, runs = ResultStore(tmp_path / "r.sqlite"), tmp_path / "runs"

    class Recording(LocalExecutor):
        def wait(self, poll_seconds: float) -> list[str]:
            finished = super().wait(poll_seconds)
            if finished:
                store.register_grid(edited)
            return finished

    summary = run_grid(grid, store, Recording(store, runs, workers=1, device="cpu"), runs)
    assert summary.done == 1 and summary.failed == 0
    assert store.status(grid.cells[0].key) == "done"
    assert store.grid_size("tiny") == 1 and store.records("tiny") == []  # as last recorded: blend, not run


def crash(*args: object, **kwargs: object) -> None:
    os._exit(3)  # a worker that dies without a word (segfault, OOM kill)


def test_a_dying_worker_is_recorded_as_failed(mnist_root: Path, tmp_path: Path, monkeypatch) -> None:
    import eigenguard.bench.executors as executors

    grid = parse_grid(tiny_grid(mnist_root, attack=["badnets"], defense=["none"]))
    store, runs = ResultStore(tmp_path / "r.sqlite"), tmp_path / "runs"
    monkeypatch.setattr(executors, "_child", crash)  # spawn pickles the function by reference: test_bench.crash
    summary = run_grid(grid, store, LocalExecutor(store, runs, workers=1, device="cpu"), runs)
    (record,) = store.records("tiny")
    assert summary.failed == 1 and record["status"] == "failed" and "exit code 3" in record["error"]


def test_killed_runner_leaves_finished_cells_and_reclaims_the_rest(mnist_root: Path, tmp_path: Path) -> None:
    grid = parse_grid(tiny_grid(mnist_root, attack=["badnets"], defense=["none"]))
    store, runs = ResultStore(tmp_path / "r.sqlite"), tmp_path / "runs"
    key = grid.cells[0].key
    # what a SIGKILLed runner leaves: a running row owned by a dead process and its partial run directory
    dead = multiprocessing.get_context("spawn").Process(target=os.getpid)
    dead.start()
    dead.join()
    assert store.claim(key, {}, owner=f"{socket.gethostname()}:{dead.pid}")
    partial = runs / ".partial" / f"{key}-{dead.pid}"
    partial.mkdir(parents=True)
    (partial / "log.csv").write_text("epoch\n1\n")
    summary = run_grid(grid, store, LocalExecutor(store, runs, workers=1, device="cpu"), runs)
    assert summary.ran == [key] and summary.done == 1 and not partial.exists()


# -- the report --------------------------------------------------------------------------------------------


def fixture_store(path: Path) -> ResultStore:
    """A store filled by hand: 2 attacks x 3 defenses x 2 seeds, one failed cell, one curve grid."""
    store = ResultStore(path)
    grid = parse_grid(
        {
            "name": "t3",
            "description": "fixture",
            "report": {"layout": "table3"},
            "base": {"profile": "quick"},
            "axes": {"attack": ["badnets", "blend"], "defense": ["none", "ft", "eigenguard"], "seed": [0, 1]},
        }
    )
    store.register_grid(grid)
    for i, cell in enumerate(grid.cells):
        store.claim(cell.key, cell.config.model_dump())
        guarded = cell.config.defense.name == "eigenguard"
        if cell.labels == {"attack": "blend", "defense": "ft", "seed": "1"}:
            store.finish(cell.key, {"status": "failed", "error": "RuntimeError: boom"})
            continue
        metrics = {"acc": 0.80 + 0.02 * int(cell.labels["seed"]), "asr": 0.10 + i / 100}
        if guarded:
            metrics |= {"acc_paper": 0.5, "asr_paper": 0.25, "protocol": "per-sample"}
        store.finish(cell.key, {"status": "done", "metrics": metrics, "wall_seconds": 1.0})
    curve = parse_grid(
        {
            "name": "rate",
            "report": {"layout": "curve", "x": "poison_rate"},
            "base": {"profile": "quick", "defense": {"name": "eigenguard", "k": 10}},  # not t3's cells: k differs
            "axes": {"attack": ["badnets"], "poison_rate": [0.05, 0.1]},
        }
    )
    store.register_grid(curve)
    for cell in curve.cells:
        store.claim(cell.key, cell.config.model_dump())
        store.finish(cell.key, {"status": "done", "metrics": {"acc": 0.7, "asr": cell.config.poison_rate}})
    return store


def test_report_renders_paper_layouts(tmp_path: Path) -> None:
    written = write_report(fixture_store(tmp_path / "r.sqlite"), tmp_path / "report")
    names = sorted(p.name for p in written)
    assert names == ["cells.csv", "rate-curve.png", "rate.csv", "report.html", "report.md", "t3-heatmap.png", "t3.csv"]
    md = (tmp_path / "report" / "report.md").read_text()
    # Table 3 layout: dataset x metric x attack rows, defense columns; per-sample protocol first
    assert md.index("t3 (per-sample protocol)") < md.index("t3 (paper protocol)")
    assert "| dataset | metric | attack | none | ft | eigenguard |" in md
    # mean ± std over the two seeds: ACC 80% and 82%
    assert "| fashion-mnist | ACC | badnets | 81.0 ± 1.4 | 81.0 ± 1.4 | 81.0 ± 1.4 |" in md
    # one seed of blend/ft failed: the other one's value, and the caption counts the failure
    assert "11 cells done, 1 failed" in md
    # the paper protocol replaces EigenGuard's numbers only
    assert "| fashion-mnist | ACC | badnets | 81.0 ± 1.4 | 81.0 ± 1.4 | 50.0 ± 0.0 |" in md
    assert (tmp_path / "report" / "rate-curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "t3-heatmap.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "per-sample protocol" in page
    cells = (tmp_path / "report" / "cells.csv").read_text().splitlines()
    assert len(cells) == 1 + 12 + 2 and cells[0].startswith("grid,key,status")


def test_table3_heatmaps_show_asr_and_the_acc_change_per_protocol(tmp_path: Path) -> None:
    from eigenguard.bench.report import table3_maps

    store = fixture_store(tmp_path / "r.sqlite")
    records = store.records("t3")
    rows, cols, asr, acc, relative = table3_maps(records, "per-sample")
    assert rows == ["badnets", "blend"] and cols == ["none", "ft", "eigenguard"] and relative
    assert acc[0] == [0.0, 0.0, 0.0]  # every defense at the no-defense ACC (81.0 over the seeds)
    expected = [statistics.fmean(100 * r["asr"] for r in records if r["status"] == "done"
                                 and r["labels"]["attack"] == "blend" and r["labels"]["defense"] == "ft")]  # fmt: skip
    assert asr[1][1] == pytest.approx(expected[0])  # the failed seed is left out of the mean
    _, _, asr_paper, acc_paper, _ = table3_maps(records, "paper")
    assert acc_paper[0][2] == pytest.approx(50.0 - 81.0) and asr_paper[0][2] == pytest.approx(25.0)
    assert acc_paper[0][:2] == acc[0][:2]  # unguarded models: the same under both protocols


def test_a_post_training_defense_is_compared_with_the_model_it_repaired(tmp_path: Path) -> None:
    from eigenguard.bench.report import table3_maps

    records = fixture_store(tmp_path / "r.sqlite").records("t3")
    for r in records:  # FT repaired a backdoored model at 90% (retrained elsewhere: not the none cell's 81%)
        if r["status"] == "done" and r["labels"]["defense"] == "ft":
            r["metrics"]["backdoored_acc"] = 0.90
    for protocol in ("per-sample", "paper"):
        _, cols, _, acc, _ = table3_maps(records, protocol)
        assert acc[0][cols.index("ft")] == pytest.approx(statistics.fmean([80.0 - 90.0, 82.0 - 90.0]))
        assert acc[0][cols.index("none")] == 0.0 and acc[1][cols.index("ft")] == pytest.approx(80.0 - 90.0)


def test_report_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--store", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 2 and "does not exist" in result.output
    fixture_store(tmp_path / "r.sqlite")
    result = runner.invoke(app, ["report", "--store", str(tmp_path / "r.sqlite"), "--grid", "t9"])
    assert result.exit_code == 2 and "grid 't9' is not in" in result.output
    assert not (tmp_path / "bench-results").exists()


def test_export_import_round_trip_moves_results_between_stores(tmp_path: Path) -> None:
    runner = CliRunner()
    source = fixture_store(tmp_path / "a.sqlite")
    t3 = source.records("t3")
    first = t3[0]["key"]
    with sqlite3.connect(tmp_path / "a.sqlite") as db:  # one cell with a per-epoch log, as run_cell records
        db.execute("UPDATE cells SET log = ? WHERE key = ?", (json.dumps([{"epoch": "1", "acc": "0.5"}]), first))
    source.close()
    out = tmp_path / "t3.json"
    result = runner.invoke(app, ["export", "t3", "--out", str(out), "--store", str(tmp_path / "a.sqlite")])
    assert result.exit_code == 0, result.output
    exported = json.loads(out.read_text())
    assert [c["key"] for c in exported["cells"]] == [r["key"] for r in t3]  # grid order, failed cell too
    assert exported["cells"][0]["log"] == [{"epoch": "1", "acc": "0.5"}]

    result = runner.invoke(app, ["import", str(out), "--store", str(tmp_path / "b.sqlite")])
    assert result.exit_code == 0 and "11 cells imported, 0 already in the store, 1 unfinished" in result.output
    target = ResultStore(tmp_path / "b.sqlite")
    (recorded,) = [g for g in target.grids() if g["name"] == "t3"]
    assert recorded["layout"] == "table3" and set(json.loads(recorded["axes"])) == {"attack", "defense", "seed"}
    failed = next(r["key"] for r in t3 if r["status"] == "failed")
    assert target.status(failed) is None  # not imported: `eigenguard bench` runs it
    # what the runner would skip: every finished cell is done here, with the same numbers
    grid = parse_grid(
        {
            "name": "t3",
            "report": {"layout": "table3"},
            "base": {"profile": "quick"},
            "axes": {"attack": ["badnets", "blend"], "defense": ["none", "ft", "eigenguard"], "seed": [0, 1]},
        }
    )
    assert [target.status(c.key) for c in grid.cells].count("done") == 11
    again = tmp_path / "again.json"
    target.close()
    runner.invoke(app, ["export", "t3", "--out", str(again), "--store", str(tmp_path / "b.sqlite")])
    done = [c for c in exported["cells"] if c["status"] == "done"]
    assert json.loads(again.read_text())["cells"] == done  # exact: config, metrics, log, versions, times
    result = runner.invoke(app, ["import", str(out), "--store", str(tmp_path / "b.sqlite")])
    assert "0 cells imported, 11 already in the store" in result.output
    # a file from before the layout was exported: the flat layout, its axes named by the cells' labels, so
    # the report still has one row per cell
    older = tmp_path / "older.json"
    older.write_text(json.dumps({k: v for k, v in exported.items() if k not in ("layout", "x", "axes")}))
    assert runner.invoke(app, ["import", str(older), "--store", str(tmp_path / "c.sqlite")]).exit_code == 0
    write_report(ResultStore(tmp_path / "c.sqlite", read_only=True), tmp_path / "report", ["t3"])
    table = (tmp_path / "report" / "report.md").read_text()
    assert (
        "| attack | defense |" in table and table.count("| badnets |") == 2 * 3
    )  # 3 defenses (seeds averaged), 2 protocols


def test_import_refuses_a_bad_file_and_writes_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    fixture_store(tmp_path / "a.sqlite").close()
    out = tmp_path / "t3.json"
    runner.invoke(app, ["export", "t3", "--out", str(out), "--store", str(tmp_path / "a.sqlite")])
    record = json.loads(out.read_text())
    record["cells"][1]["config"]["seed"] = 7  # a result claimed for a configuration that gives another key
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(record))
    (tmp_path / "notjson.json").write_text("{")
    (tmp_path / "list.json").write_text("[]")
    store = tmp_path / "b.sqlite"
    for path, says in (
        (edited, f"does not give its key {record['cells'][1]['key']}"),
        (tmp_path / "notjson.json", "is not JSON"),
        (tmp_path / "list.json", "is not a grid export"),
        (tmp_path / "missing.json", "cannot read"),
    ):
        result = runner.invoke(app, ["import", str(out), str(path), "--store", str(store)])
        assert result.exit_code == 2 and says in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not store.exists()  # the good file before it was not imported either
    result = runner.invoke(
        app, ["export", "t9", "--out", str(tmp_path / "x.json"), "--store", str(tmp_path / "a.sqlite")]
    )
    assert result.exit_code == 2 and "grid 't9' is not in" in result.output and "t3" in result.output
    assert not (tmp_path / "x.json").exists()


def test_a_store_from_before_the_log_column_gains_it(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old_schema = SCHEMA.replace(",\n    log TEXT\n", "\n")
    assert "log TEXT" not in old_schema
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO cells (key, config, status, metrics) VALUES ('k', '{}', 'done', '{\"acc\": 0.5}')")
    store = ResultStore(path)
    assert store.records()[0]["log"] is None and store.records()[0]["metrics"] == {"acc": 0.5}


def test_bench_cli_dry_run_and_bad_input(mnist_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(tiny_grid(mnist_root)))
    runner = CliRunner()
    store = tmp_path / "r.sqlite"
    result = runner.invoke(app, ["bench", str(path), "--store", str(store), "--dry-run"])
    assert result.exit_code == 0 and result.output.count(" new ") == 2
    # the grid is recorded, so a report of it counts both cells; neither ran
    results = ResultStore(store)
    assert results.grid_size("tiny") == 2 and results.records("tiny") == []
    result = runner.invoke(app, ["bench", str(path), "--store", str(store), "--executor", "slurm"])
    assert result.exit_code == 2 and "executor 'slurm' unknown; allowed: local, ray" in result.output


# -- Ray --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_executor_on_a_local_instance(mnist_root: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from eigenguard.bench.executors import RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        grid = parse_grid(tiny_grid(mnist_root, attack=["badnets"], defense=["none"]))
        store, runs = ResultStore(tmp_path / "r.sqlite"), tmp_path / "runs"
        summary = run_grid(grid, store, RayExecutor(store, runs, workers=1), runs)
        (record,) = store.records("tiny")
        assert summary.done == 1 and record["status"] == "done", record["error"]
        assert (Path(record["run_dir"]) / "metrics.json").exists()
        assert json.loads((Path(record["run_dir"]) / "metrics.json").read_text())["acc"] == record["acc"]
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_executor_resumes_a_killed_cell_from_its_checkpoint(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv

    import torch
    from safetensors.torch import load_file

    ray = pytest.importorskip("ray")
    from eigenguard.bench.cell import run_cell
    from eigenguard.bench.executors import RayExecutor
    from eigenguard.training.checkpoint import Checkpoints

    spec = tiny_grid(mnist_root, attack=["badnets"], defense=["none"])
    spec["base"]["epochs"] = 2
    grid, store, runs = parse_grid(spec), ResultStore(tmp_path / "r.sqlite"), tmp_path / "runs"
    (cell,) = grid.cells
    whole = run_cell(cell.key, cell.config.model_dump(), str(tmp_path / "whole"))

    class Kill(BaseException):  # as SIGKILL: nothing the cell can record
        pass

    save = Checkpoints.save

    def stopping_save(self: Checkpoints, *args: object, **kwargs: object) -> None:
        save(self, *args, **kwargs)  # type: ignore[arg-type]
        raise Kill

    with monkeypatch.context() as m:
        m.setattr(Checkpoints, "save", stopping_save)
        with pytest.raises(Kill):
            run_cell(cell.key, cell.config.model_dump(), str(runs))  # killed after epoch 1 of 2
    partial = runs / ".partial" / cell.key
    first_epoch = json.loads((partial / "checkpoint" / "fit-1.json").read_text())["record"]["log"][0]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = run_grid(grid, store, RayExecutor(store, runs, workers=1), runs)
    finally:
        ray.shutdown()
    (record,) = store.records("tiny")
    assert summary.done == 1 and record["status"] == "done", record["error"]
    run_dir = Path(record["run_dir"])
    log = list(csv.DictReader((run_dir / "log.csv").read_text().splitlines()))
    assert float(log[0]["epoch_seconds"]) == first_epoch["epoch_seconds"]  # epoch 1 was not trained again
    assert not partial.exists()
    a, b = load_file(str(Path(whole["run_dir"]) / "model.safetensors")), load_file(str(run_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((Path(whole["run_dir"]) / "metrics.json").read_text())
    assert (record["acc"], record["asr"]) == (metrics["acc"], metrics["asr"])


def test_eta_estimates_a_cell_from_its_setting_then_its_defense_then_this_run() -> None:
    def config(attack: str, defense: str, seed: int = 0, out: str | None = None) -> dict[str, Any]:
        return {"dataset": "fashion-mnist", "epochs": 12, "attack": {"name": attack}, "defense": {"name": defense},
                "seed": seed, "out": out}  # fmt: skip

    def done(cfg: dict[str, Any], seconds: float, status: str = "done") -> dict[str, Any]:
        return {"status": status, "config": cfg, "wall_seconds": seconds}

    times = CellTimes([
        done(config("badnets", "anp"), 700.0), done(config("badnets", "anp", seed=1), 760.0),
        done(config("blend", "anp"), 400.0), done(config("blend", "ft"), 20.0),
        done(config("blend", "abl"), 9_999.0, status="failed"),
    ])  # fmt: skip
    assert times.estimate(config("badnets", "anp", seed=2, out="elsewhere")) == 730.0  # its other seeds
    assert times.estimate(config("sig", "anp")) == 620.0  # ANP on the other attacks
    assert times.estimate(config("sig", "ft")) == 20.0
    assert times.estimate(config("sig", "abl")) is None  # a failed cell's time says nothing; nothing else known
    times.finished(config("sig", "nad"), 50.0)
    times.finished(config("sig", "fp"), 30.0)
    assert times.estimate(config("sig", "abl")) == 40.0  # the mean of what this invocation ran
    assert times.estimate(config("badnets", "nad")) == 50.0
    assert times.estimate({**config("sig", "anp"), "epochs": 100}) == 40.0  # another budget is another setting
