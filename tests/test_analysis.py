"""Section 3's analysis: effective rank, eigen-bands, the dimension edit, Proposition 1, the commands."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import tiny_config
from typer.testing import CliRunner

from eigenguard import load_model, train
from eigenguard.analysis.effective_rank import effective_rank, singular_values
from eigenguard.analysis.eigen_bands import band_coordinates, neighbour_purity
from eigenguard.analysis.proposition import check_proposition, check_remark
from eigenguard.analysis.run_loading import clean_and_triggered, features_at, load_run, poison_step, poisoned_share
from eigenguard.analysis.trigger_survival import survival, top_right_singular_vectors
from eigenguard.cli import app
from eigenguard.errors import EigenguardError
from eigenguard.guard import find_guards, inference_mode
from eigenguard.guard.dimension_edit import DimensionEdit
from eigenguard.guard.spectral_filter import filter_each_against, filter_jointly
from eigenguard.training.evaluate import accuracy


def matrix_with_singular_values(s: list[float], n: int = 40, d: int = 60, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, len(s), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


# -- effective rank --------------------------------------------------------------------------------------


def test_effective_rank_of_known_spectra() -> None:
    flat = matrix_with_singular_values([2.0] * 7)
    assert effective_rank(flat) == pytest.approx(math.log(7))  # Eq. 1 as printed: the entropy, in nats
    assert effective_rank(flat, "roy") == pytest.approx(7.0)  # Roy & Vetterli: exp of it
    skewed = matrix_with_singular_values([3.0, 1.0])
    p = np.array([0.75, 0.25])
    assert effective_rank(skewed) == pytest.approx(float(-(p * np.log(p)).sum()))
    assert effective_rank(matrix_with_singular_values([5.0])) == pytest.approx(0.0, abs=1e-9)
    assert effective_rank(torch.zeros(4, 9)) == 0.0
    assert effective_rank(flat) == pytest.approx(effective_rank(flat.T))  # N < D and N > D agree
    with pytest.raises(EigenguardError, match="definition 'shannon' unknown; allowed: entropy, roy"):
        effective_rank(flat, "shannon")


def test_singular_values_match_the_svd() -> None:
    a = torch.randn(30, 200, dtype=torch.float64)
    assert torch.allclose(singular_values(a), torch.linalg.svdvals(a), atol=1e-10)


# -- eigen-bands ----------------------------------------------------------------------------------------------


def test_bands_separate_a_trigger_living_in_the_top_directions() -> None:
    """Triggered rows = clean rows + one strong shared direction: the top band isolates them, the others not."""
    g = torch.Generator().manual_seed(0)
    n, d = 300, 400
    clean = torch.randn(n, d, generator=g, dtype=torch.float64)
    trigger = torch.zeros(d, dtype=torch.float64)
    trigger[:5] = 40.0  # far above the noise: its direction is the top singular direction
    triggered = torch.randn(60, d, generator=g, dtype=torch.float64) + trigger
    bands = band_coordinates(torch.cat([clean, triggered]))
    assert [(b.start, b.stop) for b in bands] == [(0, 10), (10, 100), (100, 360)]
    groups = np.r_[np.zeros(n, int), -np.ones(60, int)]
    is_triggered = groups == -1
    top = neighbour_purity(bands[0].coordinates, groups, is_triggered)
    rest = neighbour_purity(bands[2].coordinates, groups, is_triggered)
    assert top["triggered_purity"] > 0.95 and top["triggered_base_rate"] == pytest.approx(60 / 360, abs=1e-4)
    assert rest["triggered_purity"] < 0.5


def test_band_coordinates_are_the_projection_on_singular_directions() -> None:
    a = matrix_with_singular_values([9.0, 4.0, 1.0], n=20, d=30)
    (band,) = band_coordinates(a, ((0, 2),))
    assert np.allclose(np.linalg.norm(band.coordinates, axis=0), [9.0, 4.0])  # column norms = singular values
    with pytest.raises(EigenguardError, match="band 101-20 is empty"):
        band_coordinates(a, ((100, None),))


# -- Figure 1's dimension edit ------------------------------------------------------------------------------


def test_dimension_edit_removes_or_lifts_exactly_r_directions() -> None:
    x = matrix_with_singular_values([8.0, 6.0, 4.0, 2.0, 1.0], n=16, d=48).float().view(16, 3, 4, 4)
    reduced = torch.linalg.svdvals(DimensionEdit("reduce", 2)(x).flatten(1).double())
    assert torch.allclose(reduced[:3], torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64), atol=1e-4)
    added = torch.linalg.svdvals(DimensionEdit("add", 2)(x).flatten(1).double())
    assert torch.allclose(added[:5], torch.tensor([8.0, 8.0, 8.0, 2.0, 1.0], dtype=torch.float64), atol=1e-3)
    assert torch.equal(DimensionEdit("add", 0)(x), x)
    # a direction with nothing in it is not lifted: the edit cannot invent features
    assert torch.linalg.matrix_rank(DimensionEdit("add", 10)(x).flatten(1)) == 5
    # gradients flow through the features (singular vectors held constant)
    x.requires_grad_(True)
    DimensionEdit("reduce", 1)(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(EigenguardError, match="mode 'grow' unknown; allowed: reduce, add"):
        DimensionEdit("grow", 1)


# -- Proposition 1 and Remark 1 ---------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.3, 0.6])
def test_proposition_one_holds_and_is_tight_in_the_worst_case(beta: float) -> None:
    row = check_proposition(beta, trials=20_000, seed=1)
    assert row["draws_meeting_condition"] > 1000
    assert row["sufficiency_violations"] == 0 and row["worst_case_disagreements"] == 0


def test_a_weaker_bound_than_the_papers_is_caught() -> None:
    """The check can fail: with threshold 0.5 instead of 1 / (1 + beta) the worst case disagrees."""
    row = check_proposition(0.3, trials=20_000, seed=1, threshold=0.5)
    assert row["worst_case_disagreements"] > 0


def test_remark_one_beta_above_a_quarter() -> None:
    rows = check_remark(np.array([0.2, 0.25, 0.2501, 0.3, 0.9]))
    assert [r["natural"] for r in rows] == [False, False, True, True, True]
    assert all(r["natural"] == r["remark_predicts_natural"] for r in rows)


# -- what of a trigger passes the guard ----------------------------------------------------------------------


def test_top_right_singular_vectors_span_the_svds() -> None:
    h = matrix_with_singular_values([9.0, 5.0, 3.0, 1.0, 0.5], n=30, d=50)
    v = top_right_singular_vectors(h, 3)
    assert v.shape == (50, 3) and torch.allclose(v.T @ v, torch.eye(3, dtype=v.dtype), atol=1e-10)
    reference = torch.linalg.svd(h, full_matrices=False).Vh[:3].T
    assert torch.allclose(v @ v.T, reference @ reference.T, atol=1e-10)  # the same subspace
    assert top_right_singular_vectors(h, 40).shape == (50, 5)  # at most the rank


def test_a_trigger_outside_the_kept_directions_is_cut_in_training_batches() -> None:
    g = torch.Generator().manual_seed(2)
    d, k = 60, 3
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    strong, weak = basis[:, :k], basis[:, k:20]

    def images(n: int) -> torch.Tensor:  # clean content: strong in k directions, weak in 17 more
        return torch.randn(n, k, generator=g, dtype=torch.float64) @ strong.T * 10 + (
            torch.randn(n, 17, generator=g, dtype=torch.float64) @ weak.T * 0.3
        )

    history, clean = images(64), images(40)
    rows = torch.arange(0, 40, 10)  # a tenth of every batch triggered

    def measure(trigger: torch.Tensor) -> dict[str, float]:
        triggered = clean + trigger
        mixed = clean.clone()
        mixed[rows] = triggered[rows]
        per_sample = [filter_each_against(history, x, k=k, solver="eigh") for x in (clean, triggered)]
        batch = [filter_jointly(history, x, k=k) for x in (clean, mixed)]
        return survival(clean, triggered, *per_sample, history, k, *batch, rows)

    # the tail is set to floor * sigma_k whatever its size: a trigger well above that but below sigma_k is cut
    outside = measure(5 * basis[:, 30])  # a direction no clean image has
    inside = measure(5 * strong[:, 0])  # along the content the filter keeps
    assert outside["trigger_share_in_top_k"] < 1e-12 and inside["trigger_share_in_top_k"] > 0.99
    assert 0.9 < outside["clean_share_in_top_k"] < 1
    assert outside["batch_trigger_vs_clean_gain"] < 0.05 and inside["batch_trigger_vs_clean_gain"] > 0.5


# -- on a trained run ----------------------------------------------------------------------------------------


@pytest.fixture
def guarded_run(mnist_root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "guarded"
    guard = {"name": "eigenguard", "k": 4, "anchors": "none"}
    train(tiny_config(mnist_root, out, defense=guard), progress=False)
    return out


def test_load_run_rebuilds_the_guarded_model(guarded_run: Path) -> None:
    run = load_run(guarded_run)
    assert run.config.defense.name == "eigenguard" and run.attack is not None
    clean, triggered = clean_and_triggered(run, 30)
    assert len(clean) == len(triggered) == 30 and torch.equal(clean.labels, triggered.labels)
    assert not torch.equal(clean.images, triggered.images)
    feats = features_at(run, clean.images, "stage1")
    assert feats.shape == (30, run.model.features(run.normalize(clean.images[:1]), "stage1").numel())
    # the state dict loaded whole: the loaded model gives the ACC the training run recorded, per-sample
    metrics = json.loads((guarded_run / "metrics.json").read_text())
    with inference_mode(find_guards(run.model), "per-sample"):
        acc = accuracy(run.model, run.test, run.normalize, run.config.eval_batch_size)
        assert acc == pytest.approx(metrics["acc"], abs=1e-6)
    # load_model, with no dataset: the same model, so the same ACC (its normalisation inside, per-sample)
    ready = load_model(guarded_run)
    with torch.no_grad():
        predicted = torch.cat([ready(run.test.images[i : i + 256]).argmax(1) for i in range(0, len(run.test), 256)])
    assert (predicted == run.test.labels).double().mean().item() == pytest.approx(metrics["acc"], abs=1e-6)
    assert find_guards(ready) and all(g.inference == "per-sample" for g in find_guards(ready))
    # training's poisoned share comes from what the run poisoned, not from poison_rate (for CLB and SIG a
    # share of the target class): a run that poisoned a quarter of its images is measured at a quarter
    assert poisoned_share(run) == metrics["poisoned_images"] / metrics["train_images"]
    (guarded_run / "metrics.json").write_text(json.dumps({**metrics, "poisoned_images": metrics["train_images"] // 4}))
    assert poisoned_share(run) == 0.25 and poison_step(100, poisoned_share(run)) == 4
    (guarded_run / "metrics.json").unlink()
    assert poisoned_share(run) == run.config.poison_rate  # no metrics: the configured rate


def test_load_run_errors(tmp_path: Path) -> None:
    with pytest.raises(EigenguardError, match=r"not a finished run directory: config\.yaml is missing"):
        load_run(tmp_path)


def test_analyze_commands_on_a_run(guarded_run: Path, mnist_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    plain = tmp_path / "plain"
    train(tiny_config(mnist_root, plain), progress=False)
    out = tmp_path / "analysis"
    args = ["analyze", "erank", str(plain), str(guarded_run), "--samples", "40", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| Backdoor | ERank = -sum p_i log p_i" in result.output and "badnets (eigenguard)" in result.output
    (column, _) = json.loads(next(out.glob("erank_*.json")).read_text())
    assert column["clean_matrix"][0] == 40 and 0 < column["clean_entropy"] <= math.log(40) + 1e-9
    result = runner.invoke(
        app, ["analyze", "tsne", str(plain), "--samples", "150", "--triggered", "30", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    png = out / "tsne_plain_stage1.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "tsne_plain_stage1.json").read_text())
    assert [b["band"] for b in summary["bands"]] == [
        "singular directions 1-10", "singular directions 11-100", "singular directions 101-180"
    ]  # fmt: skip
    result = runner.invoke(app, ["analyze", "erank", str(plain), "--at", "stage9", "--out", str(out)])
    assert result.exit_code == 2 and "insertion point 'stage9' unknown" in result.output
    args = ["analyze", "survival", str(guarded_run), "--samples", "40", "--top", "2", "--top", "4", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(next(out.glob("survival_*.json")).read_text())
    assert row["images"] == 40 and 0 <= row["trigger_share_in_top_k"] <= 1 and row["batch_trigger_passed"] >= 0
    shares = row["shares_in_top"]
    assert shares["4"]["trigger"] == pytest.approx(row["trigger_share_in_top_k"])  # the guard's own k = 4
    assert shares["2"]["trigger"] <= shares["4"]["trigger"] and "| K = 2 | K = 4 |" in result.output
    result = runner.invoke(app, ["analyze", "survival", str(plain), "--out", str(out)])
    assert result.exit_code == 2 and "has no EigenGuard (defense: none)" in result.output
    result = runner.invoke(app, ["analyze", "test-time-guard", str(plain), "--k", "4", "--history-images", "64",
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = json.loads(next(out.glob("test_time_guard_*.json")).read_text())
    metrics = json.loads((plain / "metrics.json").read_text())
    assert row["without_guard"]["acc"] == pytest.approx(metrics["acc"]) and row["guard"]["history_images"] == 64
    assert set(row["with_test_time_guard"]) == {"acc", "asr", "acc_paper", "asr_paper"}
    result = runner.invoke(app, ["analyze", "test-time-guard", str(guarded_run), "--out", str(out)])
    assert result.exit_code == 2 and "must be an attacked run without a defense" in result.output
    result = runner.invoke(app, ["analyze", "proposition", "--trials", "5000", "--beta", "0.3"])
    assert result.exit_code == 0 and "predicted target despite it: 0" in result.output


@pytest.mark.slow
def test_analyze_dims_runs_the_sweep_through_the_harness(mnist_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["analyze", "dims", "--attack", "badnets", "--r", "0", "--r", "3", "--workers", "2", "--device", "cpu"]
    for setting in (
        "dataset=mnist", f"data_root={mnist_root}", "width=0.125", "epochs=1", "batch_size=64", "train_subset=null"
    ):  # fmt: skip
        args += ["--set", setting]
    args += ["--store", str(tmp_path / "r.sqlite"), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "a")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3/3 runs done" in result.output  # plain, reduce-3, add-3
    png = next((tmp_path / "a").glob("dims-*.png"))
    assert png.read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "a" / f"{png.stem}.csv").read_text().splitlines()
    assert rows[0] == "attack,mode,r,acc,asr,acc_mixed,asr_mixed,acc_edit_off,asr_edit_off,run_dir"
    table = {tuple(r.split(",")[1:3]): r.split(",") for r in rows[1:]}
    assert sorted(table) == [("add", "3"), ("plain", "0"), ("reduce", "3")]
    plain = table["plain", "0"]
    assert plain[5] == plain[7] and plain[6] == plain[8]  # r = 0: switching the edit off changes nothing
    assert all(0 <= float(v) <= 1 for row in table.values() for v in row[3:9])
    cache = json.loads((tmp_path / "a" / f"{png.stem}-protocols.json").read_text())
    assert len(cache) == 3  # measured once per run, reused by the next call


def test_mixed_batches_put_the_triggered_images_at_the_poison_rate_in_every_batch() -> None:
    from eigenguard.analysis.dims_sweep import mixed_batches
    from eigenguard.data.image_dataset import ImageDataset

    clean = ImageDataset(torch.zeros(30, 1, 2, 2, dtype=torch.uint8), torch.arange(30) % 3, ["a", "b", "c"])
    white = torch.full((7, 1, 2, 2), 255, dtype=torch.uint8)
    triggered = ImageDataset(white, torch.zeros(7, dtype=torch.int64), ["a", "b", "c"])
    mixed, trig, first_clean = mixed_batches(clean, triggered, batch_size=10, rate=0.2)
    assert len(mixed) == 40  # ceil(7 / 2) batches of 10
    per_batch = (mixed.images[:, 0, 0, 0] == 255).view(4, 10).sum(1)
    assert per_batch.tolist() == [2, 2, 2, 2]  # the last batch wraps around to image 0 of the triggered set
    assert int(trig.sum()) == 7 and int(first_clean.sum()) == 30  # each image counted once
    assert (mixed.labels[first_clean] == clean.labels).all()
    assert not (trig & first_clean).any()
