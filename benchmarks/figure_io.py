"""What the study's figure scripts share: the cells of exported grids in, a PNG out."""

import io
import json
from pathlib import Path
from typing import Any


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
