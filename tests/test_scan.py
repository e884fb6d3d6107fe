"""`eigenguard scan`: detectors rank a training set's images; a user's own folder end to end."""

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from eigenguard import load_model
from eigenguard.cli import app
from eigenguard.detectors import DETECTORS, create_detector
from eigenguard.detectors.base import within_class_z
from eigenguard.errors import EigenguardError

COLOURS = {"apple": (200, 40, 40), "leaf": (40, 180, 60), "sky": (60, 90, 210)}


def stamp(pixels: torch.Tensor) -> torch.Tensor:
    """A faint 4x4 checker (+-15) in the bottom-right corner: the hidden trigger. Faint, so a stamped image
    stays among its source class's nearest pixel neighbours, as a real relabelled poison does."""
    checker = torch.tensor([[15, -15] * 2, [-15, 15] * 2] * 2, dtype=torch.int16)
    pixels = pixels.to(torch.int16)
    pixels[-5:-1, -5:-1, :] += checker[..., None]
    return pixels.clamp(0, 255).to(torch.uint8)


def make_shop(root: Path, per_class: int = 60, planted: int = 15, seed: int = 0) -> list[Path]:
    """A 3-class image folder of 32x32 PNGs (a colour per class, plus noise); `planted` images of the other
    classes carry the checker and sit in apple/ (a relabelled, dirty-label backdoor). Returns their files."""
    g = torch.Generator().manual_seed(seed)
    files = []
    for split, n in (("train", per_class), ("test", 10)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = torch.tensor(colour, dtype=torch.int16)[None, None, :]
                noise = torch.randint(-40, 40, (32, 32, 3), generator=g, dtype=torch.int16)
                pixels = (base + noise).clamp(0, 255).to(torch.uint8)
                poisoned = split == "train" and name != "apple" and i < planted // 2 + (name == "leaf")
                folder = root / split / ("apple" if poisoned else name)
                path = folder / f"{name}_{i:03d}.png"
                Image.fromarray((stamp(pixels) if poisoned else pixels).numpy()).save(path)
                if poisoned:
                    files.append(path)
    return files


def test_detectors_are_registered_with_their_options() -> None:
    assert DETECTORS.names() == ["abl", "ac", "d-br", "inversion", "sieve", "spectre", "ss"]
    assert create_detector("ss").describe() == {"name": "ss", "epsilon": 0.1, "removal_factor": 1.5}
    with pytest.raises(EigenguardError, match="invalid option epsilon = 0 for detector 'ss'"):
        create_detector("ss", epsilon=0)


def test_within_class_z_makes_each_class_comparable() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 100.0, 10.0, 20.0, 30.0, 40.0])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    z = within_class_z(scores, labels)
    assert z.argmax() == 3 and z[4:].max() < z[3]


def test_activation_clustering_flags_a_small_cluster_of_its_own() -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(300, 16, generator=g)
    labels = torch.arange(300) // 100
    rows[:20] += 6.0  # a fifth of class 0 far from the rest: its own cluster
    # two components: the cluster's direction and noise (with ten, whitening levels the cluster's variance
    # with nine noise directions and k-means settles for a worse split; real activations separate in many)
    detection = create_detector("ac", dims=2).cluster(rows.double().numpy(), labels, 3)
    assert set(detection.flagged.tolist()) == set(range(20))
    assert set(detection.scores.argsort(descending=True)[:20].tolist()) == set(range(20))
    assert detection.report["classes"]["0"]["poisoned"] and not detection.report["classes"]["1"]["poisoned"]
    assert detection.class_scores.argmax() == 0


def test_own_images_scan_clean_train_predict(tmp_path: Path) -> None:
    # as a user would: a folder with a hidden patch on some files; scan flags them, clean drops them,
    # train on what is left, predict on new files
    runner = CliRunner()
    planted = make_shop(tmp_path / "shop")
    # lr 0.02 for 10 epochs: the tiny model settles on every thread count (at 0.05 its test accuracy swings)
    tiny = ["--device", "cpu", "-q", "--set", "width=0.125", "--set", "epochs=10", "--set", "batch_size=32",
            "--set", "augment=false", "--set", "lr=0.02"]  # fmt: skip
    scan_dir = tmp_path / "scan"
    args = ["scan", "--dataset", "imagefolder", "--data-root", str(tmp_path / "shop"), "--out", str(scan_dir), *tiny,
            "--set", "detector.steps=30"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((scan_dir / "suspects.csv").open()))
    assert len(rows) == 3 * 60 and "poisoned" not in rows[0]  # own images: the whole folder, no truth
    top = {Path(r["file"]).name for r in rows[: len(planted)]}
    found = len(top & {p.name for p in planted})
    assert found >= len(planted) - 3, f"{found} of {len(planted)} planted files among the top suspects"
    report = json.loads((scan_dir / "detection.json").read_text())
    assert report["target"]["class_name"] == "apple" and "truth" not in report
    assert report["detector"]["name"] == "inversion"  # the default
    assert (scan_dir / "suspects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "target class: apple" in result.output
    # the runner-up class of a planted file is the class it shows
    planted_rows = [r for r in rows if Path(r["file"]).name in top and r["label"] == "apple"]
    assert sum(Path(r["file"]).name.startswith(r["runner_up"]) for r in planted_rows) >= len(planted_rows) - 3

    result = runner.invoke(app, ["clean", str(scan_dir), "--out", str(tmp_path / "clean"), "--top", "15"])
    assert result.exit_code == 0 and "165 training images kept, 15 dropped" in result.output, result.output
    kept = {p.name for p in (tmp_path / "clean" / "train").rglob("*.png")}
    assert len(kept) == 165 and len(kept & {p.name for p in planted}) <= 3
    assert len(list((tmp_path / "clean" / "test").rglob("*.png"))) == 30

    run_dir = tmp_path / "run"
    args = ["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "clean"), "--out", str(run_dir), *tiny]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["attack"] == {"name": "none"} and config["defense_fraction"] == 0.0  # nothing planted or held back
    new = tmp_path / "new"
    new.mkdir()
    g = torch.Generator().manual_seed(1)
    for name, colour in COLOURS.items():  # drawn as the shop's images are, at another size: resized
        noise = torch.randint(-40, 40, (48, 48, 3), generator=g, dtype=torch.int16)
        pixels = (torch.tensor(colour, dtype=torch.int16)[None, None, :] + noise).clamp(0, 255)
        Image.fromarray(pixels.to(torch.uint8).numpy()).save(new / f"{name}.png")
    result = runner.invoke(app, ["predict", str(run_dir), str(new), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    predicted = {Path(r["file"]).stem: r["class"] for r in csv.DictReader((tmp_path / "p.csv").open())}
    assert predicted == {name: name for name in COLOURS}
    model = load_model(run_dir)
    assert model.classes == list(COLOURS) and not model.training

    # or the recommended defense on the folder as it is: it sets the planted files aside by itself
    defended = tmp_path / "defended"
    args = ["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "shop"), "--out", str(defended), *tiny,
            "--defense", "recommended", "--set", "defense.steps=30"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    aside = {Path(r["file"]).name for r in csv.DictReader((defended / "set_aside.csv").open())}
    assert len(aside & {p.name for p in planted}) >= len(planted) - 3 and len(aside) < 60
    result = runner.invoke(app, ["predict", str(defended), str(new), "--out", str(tmp_path / "d.csv")])
    assert result.exit_code == 0, result.output
    assert {Path(r["file"]).stem: r["class"] for r in csv.DictReader((tmp_path / "d.csv").open())} == predicted


def test_set_aside_rows_name_a_folders_files(tmp_path: Path) -> None:
    from eigenguard import TrainConfig, resolve
    from eigenguard.pipeline.prepare import prepare_data
    from eigenguard.pipeline.run import set_aside_rows

    planted = make_shop(tmp_path / "shop")
    config = resolve(TrainConfig(dataset="imagefolder", data_root=str(tmp_path / "shop"), device="cpu"))
    data = prepare_data(config, torch.device("cpu"), needs_clean_pool=False)
    apples = torch.nonzero(data.train_set.labels == 0).flatten()  # apple/: 60 apples and the 15 planted files
    rows = set_aside_rows(config, data, apples, "dropped")
    assert rows[0] == ["index", "file", "label", "set_aside"]  # own images: no truth column
    assert len(rows) == 1 + 75 and {Path(r[1]).name for r in rows[1:]} >= {p.name for p in planted}
    assert all(Path(r[1]).parent.name == r[2] == "apple" and r[3] == "dropped" for r in rows[1:])


def test_predict_bad_input_is_one_line(mnist_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run_dir = tmp_path / "run"
    args = ["train", "--dataset", "mnist", "--data-root", str(mnist_root), "--attack", "none", "--out", str(run_dir),
            "--device", "cpu", "-q", "--set", "width=0.125", "--set", "epochs=1", "--set", "batch_size=64"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    (tmp_path / "big.png").write_bytes(b"")
    Image.new("L", (32, 32)).save(tmp_path / "big.png")
    Image.new("RGB", (28, 28), (200, 10, 10)).save(tmp_path / "colour.png")
    Image.new("L", (28, 28)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "empty").mkdir()
    for given, says in (
        ([str(tmp_path / "nope"), str(tmp_path / "good.png")], "is not a finished run directory"),
        ([str(run_dir), str(tmp_path / "big.png")], "is 32x32 with 1 band; this model takes 28x28 grey images"),
        ([str(run_dir), str(tmp_path / "colour.png")], "this model takes 28x28 grey images"),
        ([str(run_dir), str(tmp_path / "broken.png")], "cannot decode image"),
        ([str(run_dir), str(tmp_path / "empty")], "no image files under"),
        ([str(run_dir), str(tmp_path / "missing.png")], "does not exist"),
    ):
        result = runner.invoke(app, ["predict", *given, "--out", str(tmp_path / "p.csv")])
        assert result.exit_code == 2 and says in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "p.csv").exists()
    result = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "good.png")])
    assert result.exit_code == 0 and "good.png" in result.output


def scan_badnets_mnist(mnist_root: Path, out: Path, *settings: str) -> Any:
    """`eigenguard scan` of the tiny MNIST set with BadNets planted, a tiny model; `settings` added."""
    args = ["scan", "--dataset", "mnist", "--data-root", str(mnist_root), "--attack", "badnets", "--out", str(out),
            "--device", "cpu", "-q", "--set", "width=0.125", "--set", "batch_size=64", *settings]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_scan_of_a_planted_attack_scores_itself(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "scan"
    options = ["--detector", "ss", "--set", "epochs=2", "--set", "detector.epsilon=0.2"]
    result = scan_badnets_mnist(mnist_root, out, *options)
    report = json.loads((out / "detection.json").read_text())
    truth = report["truth"]
    assert truth["poisoned"] == 54 and 0 <= truth["auroc"] <= 1 and 0 <= truth["tpr_at_5fpr"] <= 1
    assert report["detector"] == {"name": "ss", "epsilon": 0.2, "removal_factor": 1.5}
    assert report["flagged"] == len([r for r in csv.DictReader((out / "suspects.csv").open()) if r["flagged"] == "1"])
    assert isinstance(report["target"]["correct"], bool) and "AUROC" in result.output


def test_abl_isolation_flags_the_lowest_loss_and_judges_the_target_by_where_they_sit(
    mnist_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scan"
    scan_badnets_mnist(mnist_root, out, "--detector", "abl", "--set", "epochs=5")
    report = json.loads((out / "detection.json").read_text())
    assert report["flagged"] == 54 and report["found"] == {"isolation_epochs": 1}  # 10% of 540; 20% of 5 epochs
    rows = list(csv.DictReader((out / "suspects.csv").open()))
    flagged = [r for r in rows if r["flagged"] == "1"]
    assert [r["rank"] for r in flagged] == [str(i) for i in range(1, 55)]  # the flagged set is the lowest loss
    assert "of the 54 top suspects" in report["target"]["evidence"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("detector", "options"),
    [
        ("spectre", ["--set", "detector.dims=20"]),
        ("d-br", ["--set", "detector.intra_epochs=1"]),
        ("sieve", ["--set", "detector.sieve_epochs=1"]),
    ],
)
def test_every_detector_scans_through_the_cli(mnist_root: Path, tmp_path: Path, detector: str, options: list) -> None:
    out = tmp_path / "scan"
    scan_badnets_mnist(mnist_root, out, "--detector", detector, "--set", "epochs=2", *options)
    report = json.loads((out / "detection.json").read_text())
    assert report["detector"]["name"] == detector and 0 < report["flagged"] < report["images"] == 540
    assert 0 <= report["truth"]["auroc"] <= 1 and report["truth"]["poisoned"] == 54


def test_scan_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, says in (
        (["--detector", "nope"], "invalid detector = 'nope': unknown detector"),
        (["--detector", "none"], "a scan needs a detector; allowed: abl, ac"),
        (["--set", "detector.steps=0"], "invalid option steps = 0 for detector 'inversion'"),  # the default
        (["--detector", "ss", "--set", "detector.epsilon=2"], "invalid option epsilon = 2"),
        (["--dataset", "imagefolder", "--data-root", str(tmp_path / "missing")], "does not exist"),
        (["--dataset", "imagefolder", "--data-root", str(tmp_path)], "dataset 'imagefolder' not found"),
        (["--defense", "ft"], "No such option"),
    ):
        result = runner.invoke(app, ["scan", "--out", str(tmp_path / "scan"), *args])
        assert result.exit_code == 2 and says in result.output, result.output
        assert not (tmp_path / "scan").exists()
    result = runner.invoke(app, ["train", "--set", "detector=ss", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "that is a scan; run eigenguard scan" in result.output
    assert not (tmp_path / "run").exists()


def test_own_images_train_plants_nothing_holds_nothing_back_and_says_how_long(tmp_path: Path) -> None:
    make_shop(tmp_path / "shop", per_class=12, planted=0)
    args = ["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "shop"), "--profile", "quick",
            "--out", str(tmp_path / "run"), "--device", "cpu", "--set", "width=0.125", "--set", "epochs=1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "36 training images (0 poisoned), 0 clean images for the defender" in said
    assert "profile quick: 1 epoch, about 1 min of plain training on this CPU" in said


def test_a_grid_cell_with_a_detector_is_a_scan(mnist_root: Path, tmp_path: Path) -> None:
    from eigenguard.bench.exchange import export_grid, import_export
    from eigenguard.bench.executors import LocalExecutor
    from eigenguard.bench.grid import parse_grid
    from eigenguard.bench.runner import run_grid
    from eigenguard.bench.store import ResultStore

    base = {"profile": "quick", "dataset": "mnist", "data_root": str(mnist_root), "width": 0.125, "epochs": 1,
            "batch_size": 64, "train_subset": None, "device": "cpu"}  # fmt: skip
    grid = parse_grid({"name": "scans", "base": base, "axes": {"attack": ["badnets"], "detector": ["ss", "none"]}})
    scan_cell, plain_cell = grid.cells
    assert scan_cell.after == plain_cell.key  # the scan reads the no-defense model: that cell runs first
    store, runs = ResultStore(tmp_path / "r.sqlite"), tmp_path / "runs"
    summary = run_grid(grid, store, LocalExecutor(store, runs, workers=1, device="cpu"), runs)
    assert summary.done == 2 and summary.failed == 0
    scanned = next(r for r in store.records("scans") if r["key"] == scan_cell.key)
    assert scanned["metrics"]["truth"]["poisoned"] == 54 and scanned["acc"] == scanned["metrics"]["model"]["acc"]
    assert scanned["metrics"]["model"]["cache_hit"]  # the plain cell's model, from the cache
    assert {p.name for p in Path(scanned["run_dir"]).iterdir()} == {
        "config.yaml",
        "detection.json",
        "suspects.csv",
        "suspects.png",
    }
    moved = ResultStore(tmp_path / "other.sqlite")
    assert import_export(moved, export_grid(store, "scans")).imported == 2
    assert moved.status(scan_cell.key) == "done"


def test_a_folder_that_changed_after_loading_is_one_error_not_misnamed_rows(tmp_path: Path) -> None:
    from eigenguard.data.image_folder import image_folder_files, load_image_folder

    make_shop(tmp_path / "shop", per_class=6, planted=0)
    train, _ = load_image_folder(tmp_path / "shop")
    everything = torch.arange(len(train))
    files = image_folder_files(tmp_path / "shop", everything, train.labels)
    assert [train.classes[c] for c in train.labels.tolist()] == [f.parent.name for f in files]
    moved = files[0]
    moved.rename(tmp_path / "shop" / "train" / train.classes[-1] / ("z" + moved.name))  # to another class
    with pytest.raises(EigenguardError, match="changed while it was read"):
        image_folder_files(tmp_path / "shop", everything, train.labels)
    (tmp_path / "shop" / "train" / train.classes[-1] / ("z" + moved.name)).unlink()
    with pytest.raises(EigenguardError, match="changed while it was read"):
        image_folder_files(tmp_path / "shop", everything)  # one file fewer: an index past the end


def test_a_target_no_other_class_shares_is_named_in_words_not_as_infinity() -> None:
    from eigenguard.data.image_dataset import ImageDataset
    from eigenguard.detectors.base import Detection
    from eigenguard.pipeline.scan import estimate_target

    data = ImageDataset(torch.zeros(6, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c"],
                        (0.5,), (0.25,))  # fmt: skip
    detection = Detection(torch.zeros(6), torch.tensor([2]), class_scores=torch.tensor([0.0, 0.3, 0.0]))
    found = estimate_target(detection, data)
    assert found["class_name"] == "b" and found["lift"] is None  # JSON has no infinity
    assert "no other class scores" in found["evidence"] and "inf" not in found["evidence"]

    vetoed = estimate_target(Detection(torch.zeros(6), torch.tensor([], dtype=torch.long),
                                       class_scores=torch.tensor([0.1, 0.5, 0.1]), veto="it does not split"),
                             data)  # fmt: skip
    assert vetoed["class"] is None and vetoed["lift"] == 5.0 and "not named: it does not split" in vetoed["evidence"]

    # the class the detector's rule weighs is the one judged and named, not the highest score
    scores = torch.tensor([0.1, 0.5, 0.25])
    weighed = estimate_target(Detection(torch.zeros(6), torch.tensor([4]), class_scores=scores, candidate=2), data)
    assert weighed["class_name"] == "c" and weighed["lift"] == 2.5 and "'c' 0.25" in weighed["evidence"]
