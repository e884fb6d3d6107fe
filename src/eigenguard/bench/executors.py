"""Where cells run. Both executors take cells with `submit` and hand back finished keys from `wait`.

- LocalExecutor: N worker processes on this machine, a fresh process per cell (spawned, so a cell that
  crashes the interpreter or leaks memory takes nobody with it). With CUDA, one worker per GPU, each cell
  pinned to its GPU; on CPU the cores are divided among the workers. A cell's stdout/stderr go to
  <runs>/logs/<key>.log. The worker records its own result in the store; a worker that dies without
  one (segfault, out-of-memory kill) is recorded as failed by the executor, with its exit code.
- RayExecutor: each cell a Ray task on an existing cluster (`address`) or a Ray instance this process
  already started; a task asks for one GPU when the cluster has GPUs. The driver records the results
  (the workers may not see the store's disk); run directories are written on the node that ran the cell,
  so point --runs-dir at a shared filesystem for a multi-node cluster.
"""

import multiprocessing
import os
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any, Protocol

from eigenguard.bench.cell import run_cell
from eigenguard.bench.grid import Cell
from eigenguard.bench.store import ResultStore
from eigenguard.errors import EigenguardError


class Executor(Protocol):
    """What the runner needs from an executor."""

    workers: int

    def capacity(self) -> int:
        """How many more cells can start now."""
        ...

    def submit(self, cell: Cell) -> None: ...

    def wait(self, timeout: float) -> list[str]:
        """Keys of the cells that finished within `timeout` seconds; their results are in the store."""
        ...

    def in_flight(self) -> list[str]: ...

    def shutdown(self) -> None:
        """Stop every cell in flight."""
        ...


def _child(key: str, config: dict[str, Any], runs: str, store: str, device: str | None, threads: int) -> None:
    log = Path(runs) / "logs" / f"{key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    run_cell(key, config, runs, store=store, device=device, threads=threads)


class LocalExecutor:
    def __init__(self, store: ResultStore, runs: Path, *, workers: int | None = None, device: str = "auto") -> None:
        import torch

        self.store, self.runs = store, runs
        gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EigenguardError(f"device '{device}' asked for, but CUDA is not available here; allowed: auto, cpu")
        self.workers = workers or max(gpus, 1)
        if self.workers < 1:
            raise EigenguardError(f"workers {self.workers} must be >= 1")
        # one device per worker slot: the GPUs round-robin, or the given device (CPU cores shared out)
        if gpus:
            self.devices = [f"cuda:{i % gpus}" for i in range(self.workers)]
        else:
            self.devices = ["cpu" if device == "auto" else device] * self.workers
        on_cpu = self.devices[0] == "cpu"
        self.threads = max(1, (os.cpu_count() or 1) // self.workers) if on_cpu else 0
        self._context = multiprocessing.get_context("spawn")
        self._running: dict[str, tuple[Any, int]] = {}  # key -> (process, slot)

    def capacity(self) -> int:
        return self.workers - len(self._running)

    def submit(self, cell: Cell) -> None:
        slot = min(set(range(self.workers)) - {s for _, s in self._running.values()})
        device = self.devices[slot]
        process = self._context.Process(
            target=_child,
            args=(cell.key, cell.config.model_dump(), str(self.runs), str(self.store.path), device, self.threads),
            daemon=False,
        )
        process.start()
        self._running[cell.key] = (process, slot)

    def wait(self, timeout: float) -> list[str]:
        """Keys of cells whose worker exited within `timeout` seconds (their results are in the store)."""
        if not self._running:
            return []
        sentinels = {p.sentinel: key for key, (p, _) in self._running.items()}
        done = [sentinels[s] for s in wait_for(list(sentinels), timeout=timeout)]
        for key in done:
            process, _ = self._running.pop(key)
            process.join()
            if self.store.status(key) == "running":  # died before recording anything
                code = process.exitcode
                self.store.finish(
                    key,
                    {"status": "failed", "error": f"worker process died with exit code {code} (see logs/{key}.log)"},
                )
        return done

    def in_flight(self) -> list[str]:
        return list(self._running)

    def shutdown(self) -> None:
        for process, _ in self._running.values():
            process.terminate()
        for process, _ in self._running.values():
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        self._running.clear()


class RayExecutor:
    def __init__(self, store: ResultStore, runs: Path, *, address: str | None = None, workers: int | None = None):
        try:
            import ray
        except ImportError:
            raise EigenguardError("the ray executor needs Ray: pip install 'eigenguard[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address or "auto", include_dashboard=False, log_to_driver=False)
        self.store, self.runs = store, runs
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        self.workers = workers or (gpus if gpus else max(1, cpus // 2))  # CPU cells: two cores each by default
        options: dict[str, Any] = {"max_retries": 0}
        if gpus:
            options |= {"num_gpus": 1, "num_cpus": max(1, cpus // gpus)}
        else:
            options |= {"num_cpus": max(1, cpus // self.workers)}
        self.threads = 0 if gpus else options["num_cpus"]
        self._task = ray.remote(**options)(run_cell)
        self._running: dict[Any, str] = {}  # object ref -> key

    def capacity(self) -> int:
        return self.workers - len(self._running)

    def submit(self, cell: Cell) -> None:
        ref = self._task.remote(cell.key, cell.config.model_dump(), str(self.runs.resolve()), threads=self.threads)
        self._running[ref] = cell.key

    def wait(self, timeout: float) -> list[str]:
        if not self._running:
            return []
        ready, _ = self.ray.wait(list(self._running), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            key = self._running.pop(ref)
            try:
                result = self.ray.get(ref)
            except Exception as e:  # the task's process died (Ray raises on the driver)
                result = {"status": "failed", "error": f"Ray task failed: {type(e).__name__}: {e}"}
            self.store.finish(key, result)
            done.append(key)
        return done

    def in_flight(self) -> list[str]:
        return list(self._running.values())

    def shutdown(self) -> None:
        for ref in self._running:
            self.ray.cancel(ref, force=True)
        self._running.clear()
