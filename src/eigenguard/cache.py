"""Where eigenguard keeps expensive artifacts it can reuse across runs (CLB perturbations, backdoored models).

`--cache-dir` (config `cache_dir`), else $EIGENGUARD_CACHE, else ~/.cache/eigenguard. Every artifact is
stored under a key that hashes everything that decides it, so a stale entry is never served.
"""

import os
from pathlib import Path


def cache_root(configured: str | None = None) -> Path:
    if configured:
        return Path(configured)
    return Path(os.environ.get("EIGENGUARD_CACHE") or Path.home() / ".cache" / "eigenguard")
