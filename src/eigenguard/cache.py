"""Where eigenguard keeps expensive artifacts it can reuse across runs (CLB perturbations, backdoored models).

`--cache-dir` (config `cache_dir`), else $EIGENGUARD_CACHE, else ~/.cache/eigenguard. Every artifact is
stored under a key that hashes everything that decides it, so a stale entry is never served.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root(configured: str | None = None) -> Path:
    if configured:
        return Path(configured)
    return Path(os.environ.get("EIGENGUARD_CACHE") or Path.home() / ".cache" / "eigenguard")


@contextmanager
def filling(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on `.<entry>.lock` (beside it) while checking for and filling a cache entry.

    Two processes that need the same missing entry (two workers of a grid, two runners) then compute it
    once: the second waits for the lock and finds the entry. The lock is advisory (fcntl.flock), released
    by the kernel if the holder dies, so a crashed process cannot leave it stuck.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
