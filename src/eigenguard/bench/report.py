"""`eigenguard report`: the store's results as the paper's tables and figures.

Layouts (a grid's `report.layout`):
- table3: rows dataset x metric (ASR, ACC) x attack, one column per defense (the paper's Table 3);
- table4: rows metric x attack, one column per model (Table 4, EigenGuard on every model);
- table5: rows insertion point, columns attack x (ACC, ASR) (Table 5);
- curve: rows the x field (`report.x`: poison_rate, k, ...), columns attack x metric, plus a PNG of the
  ACC and ASR curves (Figure 3);
- table3 also gets a PNG of heatmaps, attack x defense: ASR, and ACC's change against no defense, under
  both protocols;
- flat: one row per setting, every varying axis a column.

Every value is mean +- std over the seeds (the std only when there are several; n is in the caption).
Each grid gets two tables: first the per-sample protocol (each test image evaluated alone: what a
deployed model sees, the honest number for EigenGuard), then the paper's batch protocol (clean test
batches for ACC, all-triggered batches for ASR). Models without a guard have no batch dependence, so
their numbers are the same under both. Output: <out>/report.md, <out>/<grid>.csv (the tables),
<out>/cells.csv (every cell), <out>/<grid>-curve.png or <out>/<grid>-heatmap.png, and <out>/report.html,
one self-contained page with the tables and the plots embedded.
"""

import base64
import csv
import html
import io
import itertools
import json
import statistics
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eigenguard.bench.store import ResultStore
from eigenguard.config import COMPONENT_FIELDS, config_value, is_setting
from eigenguard.run_directory import atomic_write_bytes, atomic_write_text

METRICS = {"ASR": "asr", "ACC": "acc"}
PROTOCOLS = {
    "per-sample": ("acc", "asr"),
    "paper": ("acc_paper", "asr_paper"),
}
PROTOCOL_CAPTIONS = {
    "per-sample": "per-sample protocol: every test image evaluated alone (a guarded model's batch holds one image)",
    "paper": "paper protocol: EigenGuard evaluated on whole batches, clean batches for ACC and all-triggered "
    "batches for ASR (unguarded models: identical to per-sample)",
}
# rows and columns of each layout; "metric" is ASR / ACC, every other name a config field or a variant axis
LAYOUT_AXES: dict[str, tuple[list[str], list[str]]] = {
    "table3": (["dataset", "metric", "attack"], ["defense"]),
    "table4": (["metric", "attack"], ["model"]),
    "table5": (["defense.at"], ["attack", "metric"]),
    "curve": ([], ["attack", "metric"]),  # rows: the grid's x
    "flat": ([], ["metric"]),
}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the header, its rule, one line a row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


@dataclass
class Table:
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        return f"**{self.title}.** {self.caption}\n\n" + markdown_table(self.header, self.rows)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        caption = f"<caption><b>{html.escape(self.title)}.</b> {html.escape(self.caption)}</caption>"
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def field_value(record: dict[str, Any], name: str) -> str:
    """A cell's value on an axis: its label (variant axes, components given with options), else its
    setting (`defense.k`: a component's option; `defense`: the component's name)."""
    if name in record["labels"] and (not is_setting(name) or name in COMPONENT_FIELDS):
        return record["labels"][name]
    value = config_value(record["config"], name)
    return f"{value:g}" if isinstance(value, float) else str(value)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.1f}"
    return f"{statistics.fmean(pct):.1f} ± {statistics.stdev(pct):.1f}"


def _ordered(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def varying_axes(records: list[dict[str, Any]], axes: dict[str, list[Any]]) -> list[str]:
    """The grid's axes that take more than one value among these records, seeds excluded."""
    return [a for a in axes if a != "seed" and len({field_value(r, a) for r in records}) > 1]


def pivot(
    records: list[dict[str, Any]], rows: list[str], cols: list[str], protocol: str, layout_title: str, caption: str
) -> Table:
    acc_key, asr_key = PROTOCOLS[protocol]

    def metric_value(r: dict[str, Any], metric: str) -> float | None:
        key = acc_key if metric == "ACC" else asr_key
        value = r.get(key)
        if value is None and protocol == "paper" and r.get("protocol") != "per-sample":
            value = r.get(METRICS[metric])  # an unguarded model: the same under both protocols
        return value

    def axis_values(name: str) -> list[str]:
        return list(METRICS) if name == "metric" else _ordered([field_value(r, name) for r in records])

    row_combos = list(itertools.product(*(axis_values(n) for n in rows)))
    col_combos = list(itertools.product(*(axis_values(n) for n in cols)))
    header = [*rows, *(" / ".join(c) for c in col_combos)]
    out_rows = []
    for rc in row_combos:
        cells = []
        for cc in col_combos:
            wanted = dict(zip(rows + cols, rc + cc, strict=True))
            metric = wanted.pop("metric", None)
            selected = [r for r in records if all(field_value(r, k) == v for k, v in wanted.items())]
            values = [
                v for r in selected if r["status"] == "done" and (v := metric_value(r, metric or "ACC")) is not None
            ]
            failed = any(r["status"] == "failed" for r in selected)
            cells.append(mean_std(values) if values else ("failed" if failed else "-"))
        if any(c != "-" for c in cells):
            out_rows.append([*rc, *cells])
    return Table(layout_title, caption, header, out_rows)


def grid_tables(store: ResultStore, grid: dict[str, Any]) -> tuple[list[Table], list[dict[str, Any]]]:
    records = store.records(grid["name"])
    axes = json.loads(grid["axes"] or "{}")
    rows, cols = LAYOUT_AXES[grid["layout"]]
    rows = list(rows)
    if grid["layout"] == "curve":
        rows = [grid["x"]]
    # an axis the layout does not show would be averaged over silently: show it as an extra row key
    metric_in_cols = "metric" in cols
    shown = set(rows) | set(cols)
    extra = [a for a in varying_axes(records, axes) if a not in shown]
    rows = [*extra, *rows] if metric_in_cols or "metric" in rows else [*extra, *rows, "metric"]
    seeds = sorted({r["config"].get("seed") for r in records})
    status = {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "running")}
    missing = store.grid_size(grid["name"]) - len(records)
    counts = f"{status['done']} cells done, {status['failed']} failed, {status['running']} running, {missing} not run"
    tables = []
    for protocol in PROTOCOLS:
        caption = (
            f"ACC and ASR in %, {PROTOCOL_CAPTIONS[protocol]}; mean ± std over seeds {seeds} "
            f"(a single value: one seed). {counts}. {grid['description']}".strip()
        )
        title = f"{grid['name']} ({protocol} protocol)"
        tables.append(pivot(records, rows, cols, protocol, title, caption))
    return tables, records


def curve_png(records: list[dict[str, Any]], x: str, title: str) -> bytes:
    """Figure 3's layout: ACC and ASR (per-sample protocol) against `x`, one line per attack (and defense)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r["status"] == "done"]
    several_defenses = len({field_value(r, "defense") for r in records}) > 1

    def series_of(r: dict[str, Any]) -> str:
        return field_value(r, "attack") + (f" / {field_value(r, 'defense')}" if several_defenses else "")

    series = _ordered([series_of(r) for r in done])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=150, constrained_layout=True)
    for ax, metric in zip(axes, ("acc", "asr"), strict=True):
        for name in series:
            points: dict[float, list[float]] = {}
            for r in done:
                if series_of(r) == name and r.get(metric) is not None:
                    points.setdefault(float(config_value(r["config"], x)), []).append(100 * r[metric])
            xs = sorted(points)
            means = [statistics.fmean(points[v]) for v in xs]
            stds = [statistics.stdev(points[v]) if len(points[v]) > 1 else 0.0 for v in xs]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
        ax.set_xlabel(_axis_label(x))
        ax.set_ylabel(f"{metric.upper()} (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title(("Natural accuracy" if metric == "acc" else "Attack success rate") + " (per-sample)")
    axes[1].legend(title="attack", fontsize=8)
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def table3_maps(
    records: list[dict[str, Any]], protocol: str
) -> tuple[list[str], list[str], list[list[float]], list[list[float]], bool]:
    """What the Table 3 heatmaps show under `protocol`: row labels (attacks, with the dataset when there
    are several), column labels (defenses), ASR in % and ACC in %, means over seeds, NaN where nothing has
    run. When there is a no-defense column, ACC becomes its change in points (the last value says so):
    for a defense given the no-defense model (`needs_backdoored`), against that model (`backdoored_acc` in
    its metrics; the no-defense cell's own model when both ran on one CPU model, a retrained copy after a
    cache miss elsewhere), for every other cell against the same row's no-defense ACC."""
    done = [r for r in records if r["status"] == "done"]
    several_datasets = len({field_value(r, "dataset") for r in done}) > 1

    def row_of(r: dict[str, Any]) -> str:
        return (f"{field_value(r, 'dataset')} / " if several_datasets else "") + field_value(r, "attack")

    rows, cols = _ordered([row_of(r) for r in done]), _ordered([field_value(r, "defense") for r in done])
    acc_key, asr_key = PROTOCOLS[protocol]

    def value_of(r: dict[str, Any], key: str, fallback: str) -> float | None:
        value = r.get(key) if r.get(key) is not None else r.get(fallback)  # unguarded: one protocol
        return None if value is None else 100 * value

    def mean_of(row: str, col: str, value: Callable[[dict[str, Any]], float | None]) -> float:
        values = [value(r) for r in done if row_of(r) == row and field_value(r, "defense") == col]
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else float("nan")

    def accuracy(r: dict[str, Any]) -> float | None:
        return value_of(r, acc_key, "acc")

    relative = "none" in cols
    plain = {a: mean_of(a, "none", accuracy) for a in rows} if relative else {}

    def change(r: dict[str, Any]) -> float | None:
        value, repaired = accuracy(r), (r.get("metrics") or {}).get("backdoored_acc")
        if value is None:
            return None
        return value - (plain[row_of(r)] if repaired is None else 100 * repaired)

    asr = [[mean_of(a, d, lambda r: value_of(r, asr_key, "asr")) for d in cols] for a in rows]
    acc = [[mean_of(a, d, change if relative else accuracy) for d in cols] for a in rows]
    return rows, cols, asr, acc, relative


def heatmap_png(records: list[dict[str, Any]], title: str) -> bytes:
    """Table 3 as pictures (`table3_maps`): ASR and ACC's change, attack x defense, the per-sample
    protocol above, the paper's batch protocol below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, *_ = table3_maps(records, "per-sample")
    size = (2.2 + 2.2 * len(cols), 1.2 + 1.1 * len(rows))
    fig, axes = plt.subplots(2, 2, figsize=size, dpi=150, constrained_layout=True)
    for i, protocol in enumerate(PROTOCOLS):
        _, _, asr, acc, relative = table3_maps(records, protocol)
        span = max([5.0, *(abs(v) for line in acc for v in line if v == v)]) if relative else 100.0
        maps = (
            (axes[i][0], asr, "Reds", 0.0, 100.0, f"ASR (%), {protocol}", "{:.1f}"),
            (axes[i][1], acc, "RdBu" if relative else "Greens", -span if relative else 0.0, span,
             f"ACC change vs no defense\n(points), {protocol}" if relative else f"ACC (%), {protocol}",
             "{:+.1f}" if relative else "{:.1f}"),
        )  # fmt: skip
        for ax, values, cmap, low, high, name, number in maps:
            ax.imshow(values, cmap=cmap, vmin=low, vmax=high, aspect="auto")
            for y, line in enumerate(values):
                for x, v in enumerate(line):
                    if v == v:  # not NaN: the cell has run
                        strong = (abs(v) / high if low < 0 else (v - low) / (high - low)) > 0.65  # a dark cell
                        ax.text(x, y, number.format(v), ha="center", va="center", fontsize=7,
                                color="white" if strong else "black")  # fmt: skip
            ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=7)
            ax.set_yticks(range(len(rows)), rows, fontsize=7)
            ax.set_title(name, fontsize=8)
    fig.suptitle(textwrap.fill(title, width=int(14 * size[0])), fontsize=9)  # narrow grids: wrapped, not cut
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _axis_label(x: str) -> str:
    labels = {
        "poison_rate": "poison rate (fraction)",
        "defense.k": "k (top directions flattened)",
        "defense.u": "u (CLP prunes channels above mean + u std)",
    }
    return labels.get(x, x)


def write_report(store: ResultStore, out: Path, grids: list[str] | None = None) -> list[Path]:
    """Render every grid (or the named ones) in the store; returns the files written."""
    from eigenguard.errors import EigenguardError

    known = {g["name"]: g for g in store.grids()}
    for name in grids or []:
        if name not in known:
            raise EigenguardError(f"grid '{name}' is not in {store.path}; allowed: {', '.join(known) or '(none)'}")
    selected = [known[n] for n in (grids or list(known))]
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    markdown = ["# eigenguard benchmark report", ""]
    page = [
        "<!doctype html><html><head><meta charset='utf-8'><title>eigenguard benchmark report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
        "caption{text-align:left;caption-side:top;padding:4px 0;max-width:1000px}img{max-width:100%}"
        "</style></head><body><h1>eigenguard benchmark report</h1>"
    ]
    for grid in selected:
        tables, records = grid_tables(store, grid)
        markdown += [f"## {grid['name']}", ""]
        page.append(f"<h2>{html.escape(grid['name'])}</h2>")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for table in tables:
            markdown += [table.markdown(), ""]
            page.append(table.html())
            writer.writerow([f"# {table.title}"])
            writer.writerow(table.header)
            writer.writerows(table.rows)
        path = out / f"{grid['name']}.csv"
        atomic_write_text(path, buffer.getvalue())
        written.append(path)
        title = f"{grid['name']}: {grid['description']}".strip(": ")
        png, suffix = None, ""
        if any(r["status"] == "done" for r in records):
            if grid["layout"] == "curve":
                png, suffix = curve_png(records, grid["x"], title), "curve"
            elif grid["layout"] == "table3":
                png, suffix = heatmap_png(records, title), "heatmap"
        if png is not None:
            path = out / f"{grid['name']}-{suffix}.png"
            atomic_write_bytes(path, png)
            written.append(path)
            markdown += [f"![{grid['name']}]({path.name})", ""]
            data = base64.b64encode(png).decode()
            page.append(f"<img alt='{html.escape(grid['name'])}' src='data:image/png;base64,{data}'>")
    page.append("</body></html>")
    for name, text in (("report.md", "\n".join(markdown) + "\n"), ("report.html", "\n".join(page) + "\n")):
        atomic_write_text(out / name, text)
        written.append(out / name)
    cells = out / "cells.csv"
    store.export_csv(cells)
    written.append(cells)
    return written
