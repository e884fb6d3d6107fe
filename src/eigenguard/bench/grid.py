"""A benchmark grid: a YAML file that expands into cells, one `eigenguard train` configuration each.

    name: table3-quick                  # names the grid in the results store and the report
    description: Table 3 on Fashion-MNIST, CPU
    report: {layout: table3}            # table3 | table4 | table5 | curve (+ x: SETTING) | flat
    base: {profile: quick, eval_every: 12}      # settings every cell shares (as in a config file)
    axes:                               # the cartesian product of these, in this order
      attack: [badnets, blend, clb, sig]        # an axis named after a setting: its values
      defense: [none, ft, {name: eigenguard, anchor_count: 25}]  # a component with options
      defense.k: [10, 20]               # a component's option (the component is named in base)
      seed: [0, 1, 2]
      budget:                           # any other name: a list of named setting overrides
        - {label: eps16, attack.epsilon: 0.0627}
        - {label: eps32, attack.epsilon: 0.1255}

A component value given as a mapping is labelled by its name in the report (or by its `label` key).
A cell is identified by its key, a digest of the values that decide its result and the key version
(`config.result_values`), so the same cell in two grids is run once and shared. Every cell's configuration
is resolved and validated when the grid is loaded (`pipeline.components.resolve`): a typo fails before anything runs.
"""

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eigenguard.cache import digest
from eigenguard.config import (
    COMPONENT_FIELDS,
    DEFENSE_NONE,
    DETECTOR_NONE,
    KEY_VERSION,
    PLACEMENT_FIELDS,
    TrainConfig,
    is_setting,
    make_config,
    merge_settings,
    plain_weights_values,
    result_values,
)
from eigenguard.defenses import DEFENSES
from eigenguard.detectors import DETECTORS
from eigenguard.errors import EigenguardError
from eigenguard.pipeline.components import resolve
from eigenguard.run_directory import stored_config

LAYOUTS = ("table3", "table4", "table5", "curve", "flat")


def cell_key(config: TrainConfig) -> str:
    return digest({"key_version": KEY_VERSION, **result_values(config)}, length=16)


def recorded_key(config: dict[str, Any], version: int) -> str:
    """The key a cell got under key version `version`, from its config as recorded then (components complete
    as they were): version 1 hashed the values alone, later versions hash the version with them. The fields
    left out are today's placement fields, which every version so far has left out alike."""
    values = {k: v for k, v in config.items() if k not in PLACEMENT_FIELDS}
    return digest(values if version == 1 else {"key_version": version, **values}, length=16)


def current_identity(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A recorded cell's key and config under this version: older layouts converted, every option completed
    (an option added since a cell ran is at its default, which is how the cell ran)."""
    resolved = resolve(stored_config(config))
    return cell_key(resolved), resolved.model_dump()


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
    except UnicodeDecodeError:
        raise EigenguardError(f"grid file '{p}' is not UTF-8 text; allowed: a YAML file") from None
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
    if layout == "curve" and not (isinstance(x, str) and is_setting(x)):
        raise EigenguardError(f"{where}: the curve layout needs report.x, a setting (k: defense.k); got {x!r}")
    base = raw.get("base") or {}
    axes = raw.get("axes") or {}
    if not isinstance(base, dict) or not isinstance(axes, dict):
        raise EigenguardError(f"{where}: base and axes must be mappings")
    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            raise EigenguardError(f"{where}: axis '{axis}' must be a non-empty list, got {values!r}")
        if not is_setting(axis) and not all(isinstance(v, dict) for v in values):
            raise EigenguardError(
                f"{where}: axis '{axis}' is not a setting, so its values must be mappings of setting overrides"
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
            if is_setting(axis):
                if axis in COMPONENT_FIELDS and isinstance(value, dict):
                    value = dict(value)
                    labels[axis] = str(value.pop("label", value.get("name")))
                else:
                    labels[axis] = _label(value)
                overrides[axis] = value
            else:
                value = dict(value)
                labels[axis] = str(value.pop("label", _label(value)))
                overrides.update(value)
        try:
            config = resolve(make_config(merge_settings(grid.base, overrides)))
        except EigenguardError as e:
            raise EigenguardError(f"grid '{grid.name}', cell {labels}: {e}") from None
        key = cell_key(config)
        cells.setdefault(key, Cell(key, config, labels))

    # a defense that needs the backdoored model of its setting: if the grid has that no-defense cell, run it
    # first, so the defense finds the model in the cache instead of training it a second time
    def plain(config: TrainConfig) -> str:
        return json.dumps(plain_weights_values(config), sort_keys=True)

    plain_cells = {
        plain(c.config): c.key
        for c in cells.values()
        if c.config.defense.name == DEFENSE_NONE and c.config.detector.name == DETECTOR_NONE
    }
    ordered = []
    for c in cells.values():
        after = None
        detector = c.config.detector.name
        reads_trained = detector != DETECTOR_NONE and DETECTORS.get(detector).needs_trained
        if DEFENSES.get(c.config.defense.name).needs_backdoored or reads_trained:
            after = plain_cells.get(plain(c.config))
        ordered.append(Cell(c.key, c.config, c.labels, after))
    return ordered
