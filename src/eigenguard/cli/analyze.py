"""`eigenguard analyze`: the spectral analysis of Section 3 (analysis/commands.py does the work)."""

from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer

from eigenguard.cli.common import Opt, err_console, parse_settings
from eigenguard.errors import EigenguardError

analyze_app = typer.Typer(
    no_args_is_help=True, help="The spectral analysis of Section 3: effective rank, eigen-band t-SNE, Figure 1."
)
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
def analyze_guard_after_training(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished attacked runs without a defense")],
    k: Annotated[int, Opt(help="the guard's k")] = 20,
    history_images: Annotated[int, Opt(help="training images that fill His")] = 5120,
    device: Annotated[str, Opt(help="cpu or cuda")] = "cpu",
    out: Annotated[Path, Opt(help="output directory")] = ANALYSIS_OUT,
) -> None:
    """EigenGuard inserted after training, nothing retrained: ACC and ASR with and without it."""
    from eigenguard.analysis.commands import guard_after_training_table

    table = guard_after_training_table
    _echo_table(out, lambda: table(run_dirs, out, k=k, history_images=history_images, device=device))


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
    base = merge_settings(base, parse_settings(set_, "--set", "epochs=12"))
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
