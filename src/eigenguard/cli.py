"""The `eigenguard` command. Bad input -> one line on stderr, exit code 2, nothing written."""

import json
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from eigenguard.errors import EigenguardError

err_console = Console(stderr=True)


class OneLineUsageErrors(TyperGroup):
    """Every bad input is one line naming it, exit 2: a flag's bad value or an unknown flag (click would print
    the usage box) and an EigenguardError from any command, mapped here once."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:  # the base of click's usage errors, as typer ships them
            if type(e).__name__ == "NoArgsIsHelpError":  # a bare command: its help, as before
                e.show()  # type: ignore[attr-defined]
                sys.exit(2)
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            errors = getattr(e.__cause__, "errors", None)  # typer checks a flag's type with pydantic
            param = getattr(e, "param", None)
            if callable(errors) and errors() and param is not None:
                flag = "/".join(getattr(param, "opts", [])) or str(param.name)
                message = f"invalid {flag} = {errors()[0].get('input')!r}: {errors()[0].get('msg', message)}"
            err_console.print(
                f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True
            )
            sys.exit(2)
        except EigenguardError as e:  # bad input found by any command: the one place it becomes a line
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:  # finished cells and epochs are kept; `train` says how to resume
            sys.exit(130)
        except typer.Abort:
            err_console.print("Aborted.")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Train image classifiers on possibly poisoned data, and measure backdoors (ACC / ASR).",
)


def _parse_settings(items: list[str] | None, flag: str = "--set", example: str = "defense.k=40") -> dict[str, Any]:
    """KEY=VALUE items as settings; values are read as YAML (numbers, booleans, lists, null)."""
    settings: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EigenguardError(f"invalid {flag} '{item}': expected KEY=VALUE, e.g. {example}")
        try:
            settings[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise EigenguardError(f"invalid {flag} '{item}': the value is not valid YAML") from None
    return settings


Opt = typer.Option


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
    defense: Annotated[str | None, Opt(help="defense name (default none)")] = None,
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
            values = merge_settings(values, _parse_settings(set_))
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
    """The registered datasets, models, attacks and defenses, with every component's options."""
    from eigenguard.attacks import ATTACKS
    from eigenguard.config import PROFILES
    from eigenguard.data import DATASETS
    from eigenguard.defenses import DEFENSES
    from eigenguard.models import MODELS

    for kind, names in (
        ("datasets", DATASETS.names()),
        ("models", MODELS.names()),
        ("attacks", ["none", *ATTACKS.names()]),
        ("defenses", DEFENSES.names()),
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


analyze_app = typer.Typer(
    no_args_is_help=True, help="The spectral analysis of Section 3: effective rank, eigen-band t-SNE, Figure 1."
)
app.add_typer(analyze_app, name="analyze")
ANALYSIS_OUT = Path("bench-results/analysis")


def _echo_table(out: Path, make: Callable[[], tuple[str, list[Path]]]) -> None:
    """Run a table command of analysis/commands.py: print its table and the files it wrote in `out` (exit 2 on bad
    input)."""
    from eigenguard.run_directory import check_output_dir

    check_output_dir(out, "--out")
    text, paths = make()
    typer.echo(text + "\n".join(str(p) for p in paths))


@analyze_app.command("erank")
def analyze_erank(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished run directories (one column each)")],
    at: Annotated[str | None, Opt(help="insertion point (default: the run's defense.at, else stage1)")] = None,
    samples: Annotated[int, Opt(help="test images per matrix")] = 1000,
    device: Annotated[str, Opt(help="cpu or cuda")] = "cpu",
    out: Annotated[Path, Opt(help="output directory")] = ANALYSIS_OUT,
) -> None:
    """Table 2: effective rank of triggered vs clean features (Eq. 1 as printed, and Roy & Vetterli's)."""
    from eigenguard.analysis.commands import erank_table

    _echo_table(out, lambda: erank_table(run_dirs, out, at=at, samples=samples, device=device))


@analyze_app.command("survival")
def analyze_survival(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished guarded run directories (one row each)")],
    samples: Annotated[int, Opt(help="test images (clean and triggered)")] = 1000,
    top: Annotated[list[int] | None, Opt(help="also the shares in His's top K, for this K (repeatable)")] = None,
    device: Annotated[str, Opt(help="cpu or cuda")] = "cpu",
    out: Annotated[Path, Opt(help="output directory")] = ANALYSIS_OUT,
) -> None:
    """How much of the trigger gets through the guard, against the clean images' variation."""
    from eigenguard.analysis.commands import survival_table

    if any(kk < 1 for kk in top or []):
        raise EigenguardError(f"--top {min(top or [])} must be >= 1")
    _echo_table(out, lambda: survival_table(run_dirs, out, samples=samples, device=device, other_ks=tuple(top or [])))


@analyze_app.command("test-time-guard")
def analyze_test_time_guard(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished attacked runs without a defense")],
    k: Annotated[int, Opt(help="the guard's k")] = 20,
    history_images: Annotated[int, Opt(help="training images that fill His")] = 5120,
    device: Annotated[str, Opt(help="cpu or cuda")] = "cpu",
    out: Annotated[Path, Opt(help="output directory")] = ANALYSIS_OUT,
) -> None:
    """EigenGuard inserted after training, nothing retrained: ACC and ASR with and without it."""
    from eigenguard.analysis.commands import test_time_guard_table

    _echo_table(out, lambda: test_time_guard_table(run_dirs, out, k=k, history_images=history_images, device=device))


@analyze_app.command("tsne")
def analyze_tsne(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    at: Annotated[str | None, Opt(help="insertion point (default: the run's defense.at, else stage1)")] = None,
    samples: Annotated[int, Opt(help="clean test images")] = 1000,
    triggered: Annotated[int, Opt(help="triggered test images")] = 200,
    seed: Annotated[int, Opt(help="t-SNE seed")] = 0,
    device: Annotated[str, Opt(help="cpu or cuda")] = "cpu",
    out: Annotated[Path, Opt(help="output directory")] = ANALYSIS_OUT,
) -> None:
    """Figures 2 and 4: t-SNE of the top-10, next-90 and remaining singular directions, triggered in pink."""
    from eigenguard.analysis.commands import tsne_map
    from eigenguard.run_directory import check_output_dir

    check_output_dir(out, "--out")
    summary, paths = tsne_map(
        run_dir, out, at=at, samples=samples, triggered_samples=triggered, seed=seed, device=device
    )
    for band in summary["bands"]:
        typer.echo(
            f"{band['band']}: 10-NN purity triggered {band['triggered_purity']:.3f} "
            f"(base rate {band['triggered_base_rate']:.3f}), clean {band['clean_purity']:.3f}"
        )
    typer.echo("\n".join(str(p) for p in paths))


@analyze_app.command("dims")
def analyze_dims(
    attack: Annotated[list[str] | None, Opt(help="attack (repeatable; default badnets and blend)")] = None,
    r: Annotated[list[int] | None, Opt("--r", help="directions removed / added (repeatable; 0 5 20 50)")] = None,
    mode: Annotated[list[str] | None, Opt(help="reduce and/or add (default both)")] = None,
    config: Annotated[Path | None, Opt("--config", "-c", help="YAML of base settings (default: quick)")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="base setting KEY=VALUE (repeatable)")] = None,
    store: Annotated[Path, Opt(help="results database")] = Path("bench-results/results.sqlite"),
    runs_dir: Annotated[Path, Opt(help="where the runs go")] = Path("bench-results/runs"),
    workers: Annotated[int | None, Opt(help="runs at once")] = None,
    device: Annotated[str, Opt(help="auto, cpu, cuda")] = "auto",
    out: Annotated[Path, Opt(help="output directory")] = ANALYSIS_OUT,
) -> None:
    """Figure 1: train with the top r directions removed or r small ones lifted; ACC/ASR curves (PNG, CSV)."""
    from eigenguard.analysis.dims_sweep import (
        DEFAULT_R,
        add_test_time_protocols,
        dims_figure,
        dims_grid,
        dims_table_csv,
    )
    from eigenguard.bench.executors import LocalExecutor
    from eigenguard.bench.runner import run_grid
    from eigenguard.bench.store import ResultStore
    from eigenguard.config import load_yaml, merge_settings
    from eigenguard.run_directory import atomic_write_bytes, check_output_dir

    check_output_dir(out, "--out")
    check_output_dir(runs_dir, "--runs-dir")
    base = {"profile": "quick", "eval_every": 100, **(load_yaml(config) if config else {})}
    base = merge_settings(base, _parse_settings(set_, "--set", "epochs=12"))
    grid = dims_grid(attack or ["badnets", "blend"], r or list(DEFAULT_R), mode or ["reduce", "add"], base)
    with closing(ResultStore(store)) as results:
        executor = LocalExecutor(results, runs_dir, workers=workers, device=device)
        summary = run_grid(grid, results, executor, runs_dir, console=err_console)
        records = results.records(grid.name)
    out.mkdir(parents=True, exist_ok=True)
    records = add_test_time_protocols(records, out / f"{grid.name}-protocols.json", executor.devices[0])
    png = out / f"{grid.name}.png"
    atomic_write_bytes(png, dims_figure(records, f"{grid.name}: {grid.description}"))
    csv_path = out / f"{grid.name}.csv"
    atomic_write_bytes(csv_path, dims_table_csv(records))
    typer.echo(f"{summary.done}/{len(grid.cells)} runs done, {summary.failed} failed\n{png}\n{csv_path}")
    if not summary.ok:
        raise typer.Exit(1)


@analyze_app.command("proposition")
def analyze_proposition(
    beta: Annotated[list[float] | None, Opt(help="beta values (repeatable; default 0.1 0.25 0.5 0.9)")] = None,
    trials: Annotated[int, Opt(help="random draws per beta")] = 100_000,
) -> None:
    """Proposition 1 and Remark 1 (Section 3.5) checked on random draws and the worst case."""
    from eigenguard.analysis.proposition import check_proposition, check_remark

    failed = False
    if trials < 1:
        raise EigenguardError(f"--trials {trials} must be >= 1")
    for b in beta or [0.1, 0.25, 0.5, 0.9]:
        if not 0 < b < 1:
            raise EigenguardError(f"beta {b} must lie in (0, 1)")
        row = check_proposition(b, trials)
        failed |= bool(row["sufficiency_violations"] or row["worst_case_disagreements"])
        typer.echo(
            f"beta {b:g}: condition sum(alpha_1..4) > {row['threshold']:.4f} met by {row['draws_meeting_condition']}"
            f" of {row['draws']} draws; predicted target despite it: {row['sufficiency_violations']}; "
            f"worst case, condition != prediction: {row['worst_case_disagreements']}; natural without the "
            f"condition: {row['natural_without_condition']}"
        )
    remark = check_remark()
    wrong = [r for r in remark if r["natural"] != r["remark_predicts_natural"]]
    failed |= bool(wrong)
    natural = [r["beta"] for r in remark if r["natural"]]
    typer.echo(
        f"Remark 1 (k = 5, alpha_i = 1/5): worst case natural for beta in {natural[0]}..{natural[-1]}, "
        f"target for beta <= 0.25; disagreements with 'beta > 0.25': {len(wrong)}"
    )
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()
