"""What the study's figure scripts share: the cells of exported grids in, a PNG out, and the two yardsticks
every figure is read against: the study's goal for a variant and the paper's guard (every option at its default)."""

import io
import json
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from eigenguard.config import MEASUREMENT_FIELDS, PLACEMENT_FIELDS, TrainConfig
from eigenguard.pipeline.components import resolve

GOAL_COST, GOAL_ASR = 3.0, 0.10  # the study's goal for a variant (ACC cost in points, per-sample ASR)
PAPER_GUARD = resolve(TrainConfig(defense="eigenguard")).defense.model_dump()  # every option at its default


# What a cell's setting leaves out: the attack and the defense (named apart), the seed (averaged over), the
# scale (each figure filters or ranks by it), the profile and compile, and what config.py says cannot change
# the weights trained (where files go, how often a run measures).
NOT_SETTING = {"attack", "defense", "seed", "epochs", "width", "train_subset", "profile", "compile"}
NOT_SETTING |= set(PLACEMENT_FIELDS) | set(MEASUREMENT_FIELDS)


def option_value(value: Any) -> str:
    """An option's value as a label prints it: floats to 3 significant digits (epsilon 32/255 reads 0.125)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def option_changes(chosen: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The options `chosen` sets away from `defaults`, as `name=value` joined by commas."""
    return ", ".join(f"{k}={option_value(v)}" for k, v in chosen.items() if k != "name" and defaults.get(k) != v)


@cache
def attack_defaults(name: str) -> dict[str, Any]:
    """Every option of the attack `name` at its default."""
    return resolve(TrainConfig(attack=name)).attack.model_dump()


def attack_label(attack: dict[str, Any]) -> str:
    """An attack as the figures name it: its name, and the options it sets away from their defaults."""
    changed = option_changes(attack, attack_defaults(attack["name"]))
    return f"{attack['name']} ({changed})" if changed else attack["name"]


@cache
def quick_profile(attack: str) -> dict[str, Any]:
    """The quick profile as it resolves for the attack `attack` (its own poison rate: 80% of the target class
    for SIG and CLB, 10% of the training set for the rest)."""
    return resolve(TrainConfig(profile="quick", attack=attack)).model_dump()


def setting_label(config: dict[str, Any]) -> str:
    """A cell's attack and the training it ran under, as the figures name it: the attack label, then the
    training options set away from the quick profile for that attack (BadNets trained without the crop is
    `badnets; augment=False`, never one more seed of `badnets`). An option the cell does not record counts as
    the profile's."""
    profile = quick_profile(config["attack"]["name"])
    training = {k: config.get(k, v) for k, v in profile.items() if k not in NOT_SETTING}
    changed = option_changes(training, profile)
    return attack_label(config["attack"]) + (f"; {changed}" if changed else "")


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
