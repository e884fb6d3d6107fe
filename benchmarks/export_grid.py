"""A grid's cells as one JSON file for `benchmarks/results/`: each cell's labels, full configuration,
metrics.json and per-epoch log (log.csv of its run directory), so a results page can cite raw numbers.

    python benchmarks/export_grid.py study-filter --out benchmarks/results/study-filter.json
"""

import argparse
import csv
import json
from pathlib import Path

from eigenguard.bench.store import ResultStore
from eigenguard.run_directory import atomic_write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid")
    p.add_argument("--store", type=Path, default=Path("bench-results/results.sqlite"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    store = ResultStore(args.store)
    cells = []
    for r in store.records(args.grid):
        log_path = Path(r["run_dir"] or "") / "log.csv"
        log = list(csv.DictReader(log_path.open())) if r["run_dir"] and log_path.is_file() else None
        cells.append(
            {
                "key": r["key"],
                "labels": r["labels"],
                "status": r["status"],
                "error": r["error"],
                "config": r["config"],
                "metrics": r["metrics"],
                "log": log,
                "wall_seconds": r["wall_seconds"],
                "versions": r["versions"],
                "started_at": r["started_at"],
                "finished_at": r["finished_at"],
            }
        )
    grid = next((g for g in store.grids() if g["name"] == args.grid), {})
    store.close()
    record = {"grid": args.grid, "description": grid.get("description"), "cells": cells}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(f"{len(cells)} cells -> {args.out}")


if __name__ == "__main__":
    main()
