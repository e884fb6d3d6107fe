"""The `eigenguard` command. Bad input -> one line on stderr, exit code 2, nothing written."""

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from eigenguard.errors import EigenguardError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train image classifiers on possibly poisoned data, and measure backdoors (ACC / ASR).",
)
err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _parse_options(items: list[str] | None, flag: str, example: str) -> dict[str, Any] | None:
    if not items:
        return None
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EigenguardError(f"invalid {flag} '{item}': expected KEY=VALUE, e.g. {example}")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    return options


Opt = typer.Option
QUIET_KEYS = (("acc", "ACC"), ("asr", "ASR"), ("acc_paper", "ACC(paper)"), ("asr_paper", "ASR(paper)"))


@app.command()
def train(
    config: Annotated[Path | None, Opt("--config", "-c", help="YAML file of options; flags override it")] = None,
    profile: Annotated[str | None, Opt(help="named defaults: paper (GPU, the paper's settings) or quick (CPU)")] = None,
    dataset: Annotated[str | None, Opt(help="cifar10, cifar100, gtsrb, mnist, fashion-mnist, imagefolder")] = None,
    data_root: Annotated[str | None, Opt(help="dataset directory (default: $EIGENGUARD_DATA)")] = None,
    download: Annotated[bool | None, Opt("--download/--no-download", help="fetch a missing dataset")] = None,
    image_size: Annotated[int | None, Opt(help="resize side for imagefolder")] = None,
    train_subset: Annotated[int | None, Opt(help="train on only this many images")] = None,
    defense_fraction: Annotated[float | None, Opt(help="share held back for defenses (0.1)")] = None,
    model: Annotated[str | None, Opt(help="resnet18, resnet34, vgg16, mobilenetv2")] = None,
    width: Annotated[float | None, Opt(help="channel-width multiplier")] = None,
    attack: Annotated[str | None, Opt(help="see `eigenguard list`, or none")] = None,
    poison_rate: Annotated[float | None, Opt(help="poisoned share; of target class for sig, clb")] = None,
    target: Annotated[int | None, Opt(help="target class")] = None,
    attack_option: Annotated[list[str] | None, Opt(help="extra attack argument KEY=VALUE (repeatable)")] = None,
    defense: Annotated[str | None, Opt(help="none, eigenguard, ft, anp, abl, ss, fp, nad")] = None,
    defense_option: Annotated[list[str] | None, Opt(help="extra defense argument KEY=VALUE (repeatable)")] = None,
    clean_samples: Annotated[int | None, Opt(help="the defender's clean images (500)")] = None,
    guard_at: Annotated[str | None, Opt(help="EigenGuard insertion point (stage1)")] = None,
    k: Annotated[int | None, Opt("--k", help="EigenGuard: top directions flattened (20)")] = None,
    momentum: Annotated[float | None, Opt(help="EigenGuard: history momentum (0.7)")] = None,
    history_init: Annotated[str | None, Opt(help="EigenGuard: first or zeros")] = None,
    guard_grad: Annotated[str | None, Opt(help="EigenGuard backward: constant or full")] = None,
    guard_precision: Annotated[str | None, Opt(help="EigenGuard eigh dtype: float32 or float64")] = None,
    lowest_loss_samples: Annotated[int | None, Opt(help="EigenGuard: lowest-loss samples joined (100)")] = None,
    epochs: Annotated[int | None, Opt(help="training epochs")] = None,
    batch_size: Annotated[int | None, Opt(help="batch size")] = None,
    lr: Annotated[float | None, Opt(help="peak learning rate")] = None,
    sgd_momentum: Annotated[float | None, Opt(help="SGD momentum")] = None,
    weight_decay: Annotated[float | None, Opt(help="weight decay")] = None,
    schedule: Annotated[str | None, Opt(help="cosine, multistep or constant")] = None,
    warmup_epochs: Annotated[float | None, Opt(help="linear warm-up, epochs")] = None,
    augment: Annotated[bool | None, Opt("--augment/--no-augment", help="random crop + flip")] = None,
    flip: Annotated[bool | None, Opt("--flip/--no-flip", help="override the dataset's flip default")] = None,
    seed: Annotated[int | None, Opt(help="master seed")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu, cuda, cuda:N")] = None,
    compile: Annotated[bool | None, Opt("--compile/--no-compile", help="torch.compile the model")] = None,
    eval_batch_size: Annotated[int | None, Opt(help="evaluation batch size")] = None,
    eval_every: Annotated[int | None, Opt(help="evaluate every N epochs (last always)")] = None,
    out: Annotated[str | None, Opt(help="run directory to create (must not exist)")] = None,
    runs_dir: Annotated[str | None, Opt(help="parent of auto-named run directories")] = None,
    cache_dir: Annotated[str | None, Opt(help="reused artifacts (default $EIGENGUARD_CACHE)")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress output")] = False,
) -> None:
    """Train one model on a (possibly poisoned) dataset; write a run directory with metrics and weights."""
    # Every flag is a config field of the same name; first thing, before any other local exists.
    overrides = {k: v for k, v in locals().items() if k not in ("config", "quiet", "attack_option", "defense_option")}
    from eigenguard.config import load_yaml, resolve_config
    from eigenguard.training.pipeline import train as run_training

    try:
        overrides["attack_options"] = _parse_options(attack_option, "--attack-option", "alpha=0.1")
        overrides["defense_options"] = _parse_options(defense_option, "--defense-option", "epochs=20")
        file_values = load_yaml(config) if config else {}
        resolved = resolve_config(file_values, overrides)
        result = run_training(resolved, progress=not quiet)
    except EigenguardError as e:
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    if quiet:
        typer.echo(
            f"ACC {100 * result.metrics['acc']:.2f}%"
            + ("" if result.metrics["asr"] is None else f"  ASR {100 * result.metrics['asr']:.2f}%")
            + f"  run {result.run_dir}"
        )


@app.command("list")
def list_components() -> None:
    """List the registered datasets, models, attacks and profiles."""
    from eigenguard.attacks import ATTACKS
    from eigenguard.config import PROFILES
    from eigenguard.data import DATASETS
    from eigenguard.models import MODELS

    for kind, names in (
        ("datasets", DATASETS.names()),
        ("models", MODELS.names()),
        ("attacks", ["none", *ATTACKS.names()]),
        ("profiles", list(PROFILES)),
    ):
        typer.echo(f"{kind}: {', '.join(names)}")
    from eigenguard.attacks import attack_options
    from eigenguard.defenses import DEFENSES, defense_options

    typer.echo(f"defenses: {', '.join(DEFENSES.names())}")
    typer.echo("attack options (--attack-option KEY=VALUE) and default poison rates:")
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        options = ", ".join(f"{k}={v}" for k, v in attack_options(name).items()) or "-"
        rate = f"{cls.default_rate:g} of the {'target class' if cls.clean_label else 'training set'}"
        typer.echo(f"  {name}: {options}; rate {rate}")
    typer.echo("defense options (--defense-option KEY=VALUE; EigenGuard's are flags: --k, --momentum, ...):")
    for name in DEFENSES.names():
        options = ", ".join(f"{k}={v}" for k, v in defense_options(name).items()) or "-"
        post = " (repairs the cached backdoored model)" if DEFENSES.get(name).post_training else ""
        typer.echo(f"  {name}: {options}{post}")


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
    dry_run: Annotated[bool, Opt("--dry-run", help="list the cells and their state, run nothing")] = False,
) -> None:
    """Run every unfinished cell of a grid; results go to the store, one run directory per cell."""
    from eigenguard.bench.grid import load_grid
    from eigenguard.bench.runner import run_grid
    from eigenguard.bench.store import ResultStore

    try:
        if executor not in ("local", "ray"):
            raise EigenguardError(f"executor '{executor}' unknown; allowed: local, ray")
        if workers is not None and workers < 1:
            raise EigenguardError(f"workers {workers} must be >= 1")
        spec = load_grid(grid)
        results = ResultStore(store)
        if dry_run:
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
    except EigenguardError as e:
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
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

    try:
        if not store.exists():
            raise EigenguardError(f"results store '{store}' does not exist; run `eigenguard bench GRID.yaml` first")
        written = write_report(ResultStore(store), out, grid)
    except EigenguardError as e:
        raise _fail(str(e)) from None
    for path in written:
        typer.echo(str(path))


def main() -> None:
    app()
