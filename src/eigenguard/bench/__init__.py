"""The benchmark harness: grids of training runs, a results store, executors and the paper's tables.

grid.py (YAML -> cells) -> runner.py (skip finished, run the rest, record every outcome) with
executors.py (local processes or Ray tasks) running cell.py (one all-or-nothing training run) into
store.py (SQLite, WAL) -> report.py (Markdown, CSV, HTML and PNG in the paper's layouts).
"""

from eigenguard.bench.grid import Cell, Grid, load_grid
from eigenguard.bench.store import ResultStore

__all__ = ["Cell", "Grid", "ResultStore", "load_grid"]
