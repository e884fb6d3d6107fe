"""A benchmark grid: a YAML file that expands into cells, one `eigenguard train` configuration each.

    name: table3-quick                  # names the grid in the results store and the report
    description: Table 3 on Fashion-MNIST, CPU
    report: {layout: table3}            # table3 | table4 | table5 | curve (+ x: FIELD) | flat
    base: {profile: quick, eval_every: 12}      # config fields every cell shares
    axes:                               # the cartesian product of these, in this order
      attack: [badnets, blend, clb, sig]        # an axis named after a config field: its values
      defense: [none, ft, anp, abl, eigenguard]
      seed: [0, 1, 2]
      budget:                           # any other name: a list of named field overrides
        - {label: eps16, attack_options: {epsilon: 0.0627}}
        - {label: eps32, attack_options: {epsilon: 0.1255}}

A cell is identified by its key, a hash of its resolved configuration (minus the fields that only say
where files go or which device runs it), so the same cell in two grids is run once and shared. Every
cell's configuration is resolved and validated when the grid is loaded: a typo fails before anything runs.
"""

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eigenguard.config import DEFENSE_NONE, TrainConfig, resolve_config
from eigenguard.errors import EigenguardError

LAYOUTS = ("table3", "table4", "table5", "curve", "flat")
# Fields that cannot change a cell's result, only where it is written or which machine runs it.
NOT_IN_KEY = ("out", "runs_dir", "cache_dir", "data_root", "download", "device")


def cell_key(config: TrainConfig) -> str:
    values = {k: v for k, v in config.model_dump().items() if k not in NOT_IN_KEY}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    key: str
    config: TrainConfig
    labels: dict[str, str]  # axis name -> the value's label, for the report
    after: str | None = None  # key of the no-defense cell whose backdoored model this cell repairs


@dataclass
class Grid:
    name: str
    description: str
    layout: str
    x: str | None  # the curve layout's x axis (a config field)
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    source: Path | None = None
    cells: list[Cell] = field(default_factory=list)


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def load_grid(path: str | Path) -> Grid:
    """Read and expand a grid file; any bad value is one EigenguardError naming it."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as e:
        raise EigenguardError(f"cannot read grid file '{p}': {e.strerror}") from None
    except yaml.YAMLError as e:
        raise EigenguardError(f"grid file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise EigenguardError(f"grid file '{p}' must hold a mapping with name, base and axes")
    return parse_grid(raw, source=p)


def parse_grid(raw: dict[str, Any], source: Path | None = None) -> Grid:
    where = f"grid '{source}'" if source else "grid"
    unknown = set(raw) - {"name", "description", "report", "base", "axes"}
    if unknown:
        raise EigenguardError(
            f"{where}: unknown key '{sorted(unknown)[0]}'; allowed: name, description, report, base, axes"
        )
    name = raw.get("name") or (source.stem if source else None)
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise EigenguardError(f"{where}: name {name!r} must be a non-empty string of letters, digits, - _ .")
    report = raw.get("report") or {}
    layout = report.get("layout", "flat")
    if layout not in LAYOUTS:
        raise EigenguardError(f"{where}: report layout '{layout}' unknown; allowed: {', '.join(LAYOUTS)}")
    x = report.get("x")
    if layout == "curve" and x not in TrainConfig.model_fields:
        raise EigenguardError(f"{where}: the curve layout needs report.x, a config field; got {x!r}")
    base = raw.get("base") or {}
    axes = raw.get("axes") or {}
    if not isinstance(base, dict) or not isinstance(axes, dict):
        raise EigenguardError(f"{where}: base and axes must be mappings")
    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            raise EigenguardError(f"{where}: axis '{axis}' must be a non-empty list, got {values!r}")
        if axis not in TrainConfig.model_fields and not all(isinstance(v, dict) for v in values):
            raise EigenguardError(
                f"{where}: axis '{axis}' is not a config field, so its values must be mappings of field overrides"
            )
    grid = Grid(name, str(raw.get("description", "")), layout, x, dict(base), {k: list(v) for k, v in axes.items()})
    grid.source = source
    grid.cells = expand(grid)
    return grid


def expand(grid: Grid) -> list[Cell]:
    """Every combination of axis values, resolved and validated; duplicates (same key) are kept once."""
    names = list(grid.axes)
    cells: dict[str, Cell] = {}
    for combo in itertools.product(*(grid.axes[n] for n in names)):
        overrides: dict[str, Any] = {}
        labels: dict[str, str] = {}
        for axis, value in zip(names, combo, strict=True):
            if axis in TrainConfig.model_fields:
                overrides[axis] = value
                labels[axis] = _label(value)
            else:
                value = dict(value)
                labels[axis] = str(value.pop("label", _label(value)))
                overrides.update(value)
        try:
            config = resolve_config(grid.base, overrides)
        except EigenguardError as e:
            raise EigenguardError(f"grid '{grid.name}', cell {labels}: {e}") from None
        key = cell_key(config)
        cells.setdefault(key, Cell(key, config, labels))
    # a post-training defense repairs the no-defense model of its setting: if the grid has that no-defense
    # cell, run it first, so the repair finds the model in the cache instead of training it a second time
    from eigenguard.defenses import DEFENSES
    from eigenguard.defenses.backdoored_model import IRRELEVANT

    def recipe(config: TrainConfig) -> str:  # what decides the backdoored model (backdoored_model.py)
        return json.dumps({k: v for k, v in config.model_dump().items() if k not in IRRELEVANT}, sort_keys=True)

    plain = {recipe(c.config): c.key for c in cells.values() if c.config.defense == DEFENSE_NONE}
    ordered = []
    for c in cells.values():
        after = None
        if c.config.defense != DEFENSE_NONE and DEFENSES.get(c.config.defense).post_training:
            after = plain.get(recipe(c.config))
        ordered.append(Cell(c.key, c.config, c.labels, after))
    return ordered
