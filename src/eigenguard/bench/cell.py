"""Run one grid cell: an ordinary `eigenguard train` run, made all-or-nothing.

The run is written to <runs>/.partial/<key> and renamed to <runs>/<key>_<run name> only when it
finished, so a cell's run directory is either complete or absent. A cell whose process was killed leaves
its partial directory with its checkpoints; the next attempt resumes it from its last complete epoch
(training/checkpoint.py) instead of starting over, to the same result. Any exception is caught and
returned as a failed result (type, message and the last lines of the traceback; its partial directory is
removed): one bad cell never stops a grid. The same function runs in a local worker process and in a Ray
task.
"""

import platform
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

PARTIAL = ".partial"


def final_run_dir(runs: Path, key: str, run_name: str) -> Path:
    return runs / f"{key}_{run_name}"


def run_cell(
    key: str,
    config: dict[str, Any],
    runs: str,
    *,
    store: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train cell `key` and return its result (status, metrics, run_dir, error, wall_seconds, versions).

    With `store` (a results-store path) the result is also written there by this process, so a finished
    cell is recorded even if the runner that started it is killed the next moment.
    """
    import torch

    from eigenguard.bench.store import ResultStore, this_owner
    from eigenguard.run_directory import atomic_write_text, read_log, stored_config
    from eigenguard.version import __version__

    results = ResultStore(store) if store else None
    if results:
        results.set_owner(key, this_owner())
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    root = Path(runs)
    partial = root / PARTIAL / key
    result: dict[str, Any]
    try:
        cfg = stored_config(config)
        cfg = cfg.model_copy(update={"out": str(partial), **({"device": device} if device else {})})
        final = final_run_dir(root, key, cfg.run_name())
        if final.exists():  # left by a runner killed after the rename but before recording: redo it
            shutil.rmtree(final)
        partial.parent.mkdir(parents=True, exist_ok=True)
        # a killed attempt's directory: resumed if it got as far as its config, else started over
        resume = (partial / "config.yaml").is_file() and not (partial / "metrics.json").is_file()
        if partial.exists() and not resume:
            shutil.rmtree(partial)
        from rich.console import Console

        from eigenguard.config import DETECTOR_NONE
        from eigenguard.pipeline.run import train
        from eigenguard.pipeline.scan import scan

        # no progress bars, but the run's lines (its start, an attack's training epochs) go to stderr, which
        # the executor points at <runs>/logs/<key>.log; a quiet console left every cell's log empty
        if cfg.detector.name != DETECTOR_NONE:  # a scan: written at once, its trained model from the cache
            shutil.rmtree(partial, ignore_errors=True)
            found = scan(cfg, partial, progress=False, console=Console(stderr=True)).report
            metrics = {"acc": found["model"]["acc"], "asr": found["model"]["asr"], **found}
        else:
            metrics = train(cfg, progress=False, console=Console(stderr=True), resume=resume).metrics
        # config.yaml names the directory the run now lives in, not its temporary name
        import yaml

        atomic_write_text(
            partial / "config.yaml", yaml.safe_dump({**cfg.model_dump(), "out": str(final)}, sort_keys=False)
        )
        partial.rename(final)
        log = read_log(final) or []  # its rows go to the store too: a result outlives its run directory
        result = {"status": "done", "metrics": metrics, "run_dir": str(final), "error": None, "log": log}
    except Exception as e:  # isolation is the point: record it, let the grid go on
        shutil.rmtree(partial, ignore_errors=True)
        tail = "".join(traceback.format_exception(e)[-3:]).strip()
        result = {"status": "failed", "metrics": None, "run_dir": None, "error": f"{type(e).__name__}: {e}\n{tail}"}
    result["wall_seconds"] = round(time.perf_counter() - started, 3)
    result["versions"] = {
        "eigenguard": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": (result.get("metrics") or {}).get("environment", {}).get("device_name", platform.machine()),
        "host": platform.node(),
        "commit": (result.get("metrics") or {}).get("environment", {}).get("commit"),
    }
    if results:
        results.finish(key, result)
        results.close()
    return result
