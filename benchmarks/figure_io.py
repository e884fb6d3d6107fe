"""What the study's figure scripts share: the cells of exported grids in, a PNG out, and the two yardsticks
every figure is read against: the study's goal for a variant and the paper's guard (every option at its default)."""

import io
import json
from pathlib import Path
from typing import Any

from eigenguard.config import TrainConfig
from eigenguard.pipeline.components import resolve

GOAL_COST, GOAL_ASR = 3.0, 0.10  # the study's goal for a variant (ACC cost in points, per-sample ASR)
PAPER_GUARD = resolve(TrainConfig(defense="eigenguard")).defense.model_dump()  # every option at its default


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
