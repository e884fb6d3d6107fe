"""What the study's figure scripts share: the cells of exported grids in, a PNG out, and the two yardsticks
every figure is read against: the study's goal for a variant and the paper's guard (every option at its default)."""

import io
import json
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from eigenguard.config import TrainConfig
from eigenguard.pipeline.components import resolve

GOAL_COST, GOAL_ASR = 3.0, 0.10  # the study's goal for a variant (ACC cost in points, per-sample ASR)
PAPER_GUARD = resolve(TrainConfig(defense="eigenguard")).defense.model_dump()  # every option at its default


def option_changes(chosen: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The options `chosen` sets away from `defaults`, as `name=value` joined by commas."""
    return ", ".join(f"{k}={v}" for k, v in chosen.items() if k != "name" and defaults.get(k) != v)


@cache
def attack_defaults(name: str) -> dict[str, Any]:
    """Every option of the attack `name` at its default."""
    return resolve(TrainConfig(attack=name)).attack.model_dump()


def attack_label(attack: dict[str, Any]) -> str:
    """An attack as the figures name it: its name, and the options it sets away from their defaults."""
    changed = option_changes(attack, attack_defaults(attack["name"]))
    return f"{attack['name']} ({changed})" if changed else attack["name"]


def exported_cells(paths: list[Path]) -> list[dict[str, Any]]:
    """The cells of grids written by `eigenguard export`; a cell in two grids (the same key) counts once."""
    cells: dict[str, dict[str, Any]] = {}
    for path in paths:
        for cell in json.loads(path.read_text())["cells"]:
            cells[cell["key"]] = cell
    return list(cells.values())


def png_bytes(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes, the figure closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def rows_of_attacks(
    rows: list[dict[str, Any]], requested: str | None, default: Iterable[str] | None, what: str
) -> list[dict[str, Any]]:
    """The rows whose attack is in `requested` (an `--attacks` value, comma-separated); without one, those of
    `default`'s attacks that have rows (`default` None: every row). An attack asked for that has no rows, or a
    default with none, is refused: one line on stderr naming it and the attacks that have `what`, exit 2."""
    present = {r["attack"] for r in rows}
    if requested:
        wanted, missing = requested.split(","), sorted(set(requested.split(",")) - present)
    elif default is not None:
        wanted = [a for a in default if a in present]
        missing = [] if wanted else [", ".join(default) + " (the default)"]
    else:
        return rows
    if missing:
        allowed = ", ".join(sorted(present)) or f"none (no attack has {what})"
        print(f"error: no {what} for --attacks {', '.join(missing)}; allowed: {allowed}", file=sys.stderr)
        sys.exit(2)
    return [r for r in rows if r["attack"] in wanted]
