"""The `eigenguard` command. Bad input -> one line on stderr, exit code 2, nothing written (cli/common.py)."""

import json
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from eigenguard.cli.analyze import analyze_app
from eigenguard.cli.common import OneLineUsageErrors, Opt, err_console, parse_settings
from eigenguard.cli.own_data import clean, predict, scan
from eigenguard.errors import EigenguardError

app = typer.Typer(
    cls=OneLineUsageErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Train image classifiers on possibly poisoned data, and measure backdoors (ACC / ASR).",
)


@app.command(context_settings={"help_option_names": ["--help", "-h"]})
def train(
    config: Annotated[Path | None, Opt("--config", "-c", help="YAML file of settings")] = None,
    profile: Annotated[str | None, Opt(help="defaults: paper (GPU) or quick (CPU, ~5 min)")] = None,
    dataset: Annotated[str | None, Opt(help="e.g. fashion-mnist, cifar10")] = None,
    data_root: Annotated[str | None, Opt(help="dataset directory")] = None,
    model: Annotated[str | None, Opt(help="e.g. resnet18")] = None,
    width: Annotated[float | None, Opt(help="channel-width multiplier")] = None,
    attack: Annotated[str | None, Opt(help="attack name, or none")] = None,
    poison_rate: Annotated[float | None, Opt(help="poisoned fraction")] = None,
    defense: Annotated[str | None, Opt(help="defense name, or recommended (default none)")] = None,
    epochs: Annotated[int | None, Opt(help="training epochs")] = None,
    seed: Annotated[int | None, Opt(help="master seed")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu, cuda, cuda:N")] = None,
    out: Annotated[str | None, Opt(help="run directory to create")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="any setting KEY=VALUE (repeatable)")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress output")] = False,
    resume: Annotated[Path | None, Opt(help="continue this interrupted run directory (no other settings)")] = None,
) -> None:
    """Train one model on a (possibly poisoned) dataset; write a run directory with metrics and weights.

    Precedence: profile < --config file < flags < --set. All settings: `eigenguard config`.

    Attack and defense options (`eigenguard list`): --defense eigenguard --set defense.k=40

    A run checkpoints after every epoch; `--resume RUN_DIR` continues a killed or interrupted one from its
    last complete epoch, to the same result as an uninterrupted run.
    """
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet", "set_", "resume") and v is not None}
    from eigenguard.config import load_yaml, make_config, merge_settings
    from eigenguard.pipeline import train as run_training
    from eigenguard.run_directory import stored_config

    target = out
    try:
        if resume is not None:
            if flags or config or set_:
                given = [f"--{k.replace('_', '-')}" for k in flags]
                given += ["--config"] * bool(config) + ["--set"] * bool(set_)
                raise EigenguardError(
                    f"--resume takes no other settings (got {', '.join(given)}): the run's config.yaml holds them"
                )
            if not (resume / "config.yaml").is_file():
                raise EigenguardError(f"'{resume}' is not a run directory (no config.yaml); nothing to resume")
            target = str(resume)
            values = {**load_yaml(resume / "config.yaml"), "out": str(resume)}
            result = run_training(stored_config(values), progress=not quiet, resume=True)
        else:
            values = merge_settings(load_yaml(config) if config else {}, flags)
            values = merge_settings(values, parse_settings(set_))
            result = run_training(make_config(values), progress=not quiet)
    except KeyboardInterrupt as e:
        target = getattr(e, "run_dir", None) or target
        hint = f"; continue it with: eigenguard train --resume {target}" if target else ""
        err_console.print(
            f"interrupted; the run keeps its last complete epoch{escape(hint)}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(130) from None
    if quiet:
        typer.echo(
            f"ACC {100 * result.metrics['acc']:.2f}%"
            + ("" if result.metrics["asr"] is None else f"  ASR {100 * result.metrics['asr']:.2f}%")
            + f"  run {result.run_dir}"
        )


@app.command("runs")
def list_runs(
    directory: Annotated[Path, typer.Argument(help="the folder holding run directories")] = Path("runs"),
) -> None:
    """The run directories in DIR: state (running, interrupted, failed, finished), progress, ACC / ASR."""
    from rich.table import Table

    from eigenguard.run_directory import run_status

    if not directory.is_dir():
        raise EigenguardError(
            f"'{directory}' is not a directory; give the folder that holds run directories (default: runs)"
        )
    runs = [run_status(p) for p in sorted(directory.iterdir()) if (p / "config.yaml").is_file()]
    table = Table(title=f"{len(runs)} run(s) in {directory}")
    for column in ("run", "state", "progress", "ACC", "ASR", "note"):
        table.add_column(column)
    for r in runs:
        p = r["progress"]
        progress = f"fit {p['fit']}, epoch {p['epoch']}/{p['epochs']}" if p and r["state"] != "finished" else ""
        acc, asr = (f"{100 * r[k]:.2f}%" if r.get(k) is not None else "" for k in ("acc", "asr"))
        resume = r["state"] in ("interrupted", "failed") and f"resume: eigenguard train --resume {r['path']}"
        note = "; ".join(x for x in (r["error"], resume) if x)
        table.add_row(Path(r["path"]).name, r["state"], progress, acc, asr, escape(note))
    Console(width=200).print(table)


@app.command("config")
def show_config(
    profile: Annotated[str | None, Opt(help="show this profile's values as the defaults")] = None,
) -> None:
    """Every setting: its default (in the profile, if given) and what it means."""
    from eigenguard.config import DEFAULT_PROFILE, PROFILES, TrainConfig

    name = profile or DEFAULT_PROFILE
    if name not in PROFILES:
        raise EigenguardError(f"invalid profile = {name!r}: unknown profile; allowed: {', '.join(PROFILES)}")
    defaults = TrainConfig(profile=name).model_dump()
    typer.echo(f"settings (defaults of profile '{name}'; set with --set KEY=VALUE or in a --config YAML file):")
    for field, info in TrainConfig.model_fields.items():
        value = defaults[field]
        shown = value["name"] if isinstance(value, dict) else value
        typer.echo(f"  {field} = {shown!r}: {info.description}")
    typer.echo("component options (attack.KEY, defense.KEY): eigenguard list")


@app.command("list")
def list_components() -> None:
    """The registered datasets, models, attacks, defenses and detectors, with every component's options."""
    from eigenguard.attacks import ATTACKS
    from eigenguard.config import PROFILES
    from eigenguard.data import DATASETS
    from eigenguard.defenses import DEFENSES, PRESETS
    from eigenguard.detectors import DETECTORS
    from eigenguard.models import MODELS

    for kind, names in (
        ("datasets", DATASETS.names()),
        ("models", MODELS.names()),
        ("attacks", ["none", *ATTACKS.names()]),
        ("defenses", [*DEFENSES.names(), *PRESETS]),
        ("detectors", DETECTORS.names()),
        ("profiles", list(PROFILES)),
    ):
        typer.echo(f"{kind}: {', '.join(names)}")
    typer.echo("attack options (attack: {name: NAME, KEY: VALUE}; --set attack.KEY=VALUE) and default poison rates:")
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        rate_of = "target class" if cls.clean_label else "training set"
        typer.echo(f"  {name}: rate {cls.default_rate:g} of the {rate_of}")
        _echo_options(ATTACKS, name)
    typer.echo("defense options (defense: {name: NAME, KEY: VALUE}; --set defense.KEY=VALUE):")
    for name in DEFENSES.names():
        cls = DEFENSES.get(name)
        needs = [n for n, flag in (("clean images", cls.needs_clean_pool), ("the backdoored model",
                 cls.needs_backdoored)) if flag]  # fmt: skip
        typer.echo(f"  {name}" + (f" (needs {' and '.join(needs)})" if needs else ""))
        _echo_options(DEFENSES, name)
    for name, preset in PRESETS.items():
        fixed = ", ".join(f"{k} = {v!r}" for k, v in preset.items() if k != "name")
        typer.echo(f"  {name}: a preset, {preset['name']} with {fixed}")
    typer.echo("detector options (eigenguard scan --detector NAME --set detector.KEY=VALUE):")
    for name in DETECTORS.names():
        typer.echo(f"  {name}")
        _echo_options(DETECTORS, name)


def _echo_options(registry: Any, name: str) -> None:
    """A component's options as `eigenguard list` shows them: key = default, what it allows, what it means."""
    for key, default in registry.options(name).items():
        shown = json.dumps(list(default) if isinstance(default, tuple) else default)  # as a config writes it
        typer.echo(f"    {key} = {shown}  [{registry.allowed(name, key)}]  {registry.help(name, key)}")


@app.command()
def bench(
    grid: Annotated[Path, typer.Argument(help="grid YAML file (see grids/)")],
    store: Annotated[Path, Opt(help="results database (SQLite)")] = Path("bench-results/results.sqlite"),
    runs_dir: Annotated[Path, Opt(help="where cells' run directories go")] = Path("bench-results/runs"),
    executor: Annotated[str, Opt(help="local (worker processes) or ray")] = "local",
    workers: Annotated[int | None, Opt(help="cells at once (default: one per GPU, else 1)")] = None,
    address: Annotated[str | None, Opt(help="Ray cluster address (ray executor; default: auto)")] = None,
    device: Annotated[str, Opt(help="auto, cpu, cuda or cuda:N (local executor)")] = "auto",
    retry_failed: Annotated[bool, Opt("--retry-failed", help="run cells that failed before again")] = False,
    dry_run: Annotated[bool, Opt("--dry-run", help="list cells and states, record the grid; run nothing")] = False,
) -> None:
    """Run every unfinished cell of a grid; results go to the store, one run directory per cell."""
    from eigenguard.bench.grid import load_grid
    from eigenguard.bench.runner import run_grid
    from eigenguard.bench.store import ResultStore
    from eigenguard.run_directory import check_output_dir

    if executor not in ("local", "ray"):
        raise EigenguardError(f"executor '{executor}' unknown; allowed: local, ray")
    if workers is not None and workers < 1:
        raise EigenguardError(f"workers {workers} must be >= 1")
    check_output_dir(runs_dir, "--runs-dir")
    spec = load_grid(grid)
    with closing(ResultStore(store)) as results:
        if dry_run:  # records the grid (so `report --grid` knows every cell, done under any grid), runs nothing
            results.register_grid(spec)
            for cell in spec.cells:
                labels = " ".join(f"{k}={v}" for k, v in cell.labels.items())
                typer.echo(f"{cell.key} {results.status(cell.key) or 'new':8s} {labels}")
            return
        if executor == "ray":
            from eigenguard.bench.executors import RayExecutor

            runner: Any = RayExecutor(results, runs_dir, address=address, workers=workers)
        else:
            from eigenguard.bench.executors import LocalExecutor

            runner = LocalExecutor(results, runs_dir, workers=workers, device=device)
        summary = run_grid(spec, results, runner, runs_dir, retry_failed=retry_failed, console=err_console)
    typer.echo(
        f"{spec.name}: {summary.done}/{len(spec.cells)} done, {summary.failed} failed now, "
        f"{summary.skipped_failed} failed before, {summary.elsewhere} running elsewhere; store {store}"
    )
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def report(
    store: Annotated[Path, Opt(help="results database (SQLite)")] = Path("bench-results/results.sqlite"),
    grid: Annotated[list[str] | None, Opt(help="only this grid (repeatable; default: all)")] = None,
    out: Annotated[Path, Opt(help="output directory")] = Path("bench-results/report"),
) -> None:
    """Tables (Markdown, CSV, HTML) and curves (PNG) from the results store, in the paper's layouts."""
    from eigenguard.bench.report import write_report
    from eigenguard.bench.store import ResultStore
    from eigenguard.run_directory import check_output_dir

    check_output_dir(out, "--out")
    if not store.exists():
        raise EigenguardError(f"results store '{store}' does not exist; run `eigenguard bench GRID.yaml` first")
    written = write_report(ResultStore(store, read_only=True), out, grid)
    for path in written:
        typer.echo(str(path))


@app.command("export")
def export_results(
    grid: Annotated[str, typer.Argument(help="the grid's name (its YAML file's name: field)")],
    out: Annotated[Path, Opt(help="the JSON file to write")],
    store: Annotated[Path, Opt(help="results database (SQLite)")] = Path("bench-results/results.sqlite"),
) -> None:
    """A grid's cells as one JSON file (config, metrics, per-epoch log, versions): raw numbers to commit."""
    from eigenguard.bench.exchange import export_grid
    from eigenguard.bench.store import ResultStore
    from eigenguard.run_directory import atomic_write_text, file_above

    if out.is_dir() or file_above(out) is not None:
        what = "is a directory" if out.is_dir() else f"is under '{file_above(out)}', a file"
        raise EigenguardError(f"--out '{out}' {what}; allowed: a JSON file's path")
    if not store.exists():
        raise EigenguardError(f"results store '{store}' does not exist; run `eigenguard bench GRID.yaml` first")
    results = ResultStore(store, read_only=True)
    record = export_grid(results, grid)
    results.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    typer.echo(f"{len(record['cells'])} cells -> {out}")


@app.command("import")
def import_results(
    files: Annotated[list[Path], typer.Argument(help="JSON files written by `eigenguard export`")],
    store: Annotated[Path, Opt(help="results database (SQLite)")] = Path("bench-results/results.sqlite"),
) -> None:
    """Record exported cells as done in this store: `eigenguard bench` then runs only the rest."""
    from eigenguard.bench.exchange import import_export, read_export
    from eigenguard.bench.store import ResultStore

    records = [read_export(path) for path in files]  # every file checked before any is written
    results = ResultStore(store)
    for path, record in zip(files, records, strict=True):
        s = import_export(results, record)
        typer.echo(
            f"{path}: grid {s.grid}: {s.imported} cells imported, {s.kept} already in the store, "
            f"{s.unfinished} unfinished (not imported)"
        )
    results.close()


app.command("scan")(scan)
app.command("clean")(clean)
app.command("predict")(predict)
app.add_typer(analyze_app, name="analyze")


def main() -> None:
    app()
