"""Figure 1: ACC and ASR when training with the top r directions removed, or r small ones lifted.

The sweep is a benchmark grid (bench/): one cell per attack x (mode, r), each an ordinary training run with
`--defense dimension-edit --defense-option mode=... --defense-option r=...`, so it is resumable, runs on
the local or Ray executor, and its cells sit in the results store with every other run. r = 0 is plain
training, shared by both curves. The figure has four panels like the paper's: ASR when reducing, ASR when
adding, ACC when reducing, ACC when adding, one line per attack. ACC and ASR here are measured batch-wise
(the edit acts on each evaluation batch, as in the paper's experiment): see analysis/dimension_edit.py.
"""

import hashlib
import io
import json
from typing import Any

from eigenguard.bench.grid import Grid, parse_grid
from eigenguard.errors import EigenguardError

DEFAULT_R = (0, 5, 20, 50)


def dims_grid(attacks: list[str], rs: list[int], modes: list[str], base: dict[str, Any]) -> Grid:
    if not attacks or not rs or not modes:
        raise EigenguardError("dims needs at least one attack, one r and one mode")
    if any(r < 0 for r in rs):
        raise EigenguardError(f"r values {rs} must be >= 0")
    edits = [{"label": "plain-0", "defense_options": {"mode": "reduce", "r": 0}}] if 0 in rs else []
    edits += [
        {"label": f"{mode}-{r}", "defense_options": {"mode": mode, "r": r}} for mode in modes for r in rs if r > 0
    ]
    settings = json.dumps({"attacks": attacks, "rs": rs, "modes": modes, "base": base}, sort_keys=True)
    name = "dims-" + hashlib.sha256(settings.encode()).hexdigest()[:8]
    return parse_grid(
        {
            "name": name,
            "description": f"Figure 1: dimension edit sweep, r in {rs}, modes {modes}",
            "report": {"layout": "flat"},
            "base": {**base, "defense": "dimension-edit"},
            "axes": {"attack": attacks, "edit": edits},
        }
    )


def curves(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """(attack, mode, metric) -> [(r, value)], r = 0 (plain) in both modes' curves."""
    out: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for rec in records:
        if rec["status"] != "done":
            continue
        mode, _, r = rec["labels"]["edit"].rpartition("-")
        for metric in ("acc", "asr"):
            if rec.get(metric) is None:
                continue
            for m in ("reduce", "add") if mode == "plain" else (mode,):
                out.setdefault((rec["config"]["attack"], m, metric), []).append((int(r), rec[metric]))
    return {k: sorted(v) for k, v in out.items()}


def dims_figure(records: list[dict[str, Any]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = curves(records)
    attacks = list(dict.fromkeys(k[0] for k in lines))
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.4), dpi=150, constrained_layout=True, sharey=True)
    panels = [
        ("asr", "reduce", "(a) ASR, reducing dimensions"),
        ("asr", "add", "(b) ASR, adding dimensions"),
        ("acc", "reduce", "(c) ACC, reducing dimensions"),
        ("acc", "add", "(d) ACC, adding dimensions"),
    ]
    for ax, (metric, mode, panel) in zip(axes.flat, panels, strict=True):
        for attack in attacks:
            points = lines.get((attack, mode, metric), [])
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, [100 * y for y in ys], marker="o", label=attack)
        verb = "removed (top singular values set to 0)" if mode == "reduce" else "added (small ones lifted to s_1)"
        ax.set_xlabel(f"directions {verb}")
        ax.set_ylabel(f"{metric.upper()} (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(title="attack", fontsize=8)
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
