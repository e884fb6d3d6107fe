"""The command line: flags, YAML, overrides, exit codes and messages for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BASE = [
    "--dataset",
    "mnist",
    "--width",
    "0.125",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--device",
    "cpu",
    "--profile",
    "quick",
    "--quiet",
]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eigenguard", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_train_via_yaml_with_flag_override(mnist_root: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data_root: {mnist_root}\nattack: blend\npoison_rate: 0.05\nepochs: 5\n")
    proc = run_cli("train", "--config", str(cfg), *BASE, "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ACC" in proc.stdout and "ASR" in proc.stdout
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["epochs"] == 1  # flag beat the file's 5
    assert metrics["attack"]["name"] == "blend" and metrics["poisoned_images"] == 27


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "imagenet"], "invalid dataset = 'imagenet'"),
        (["--model", "alexnet"], "invalid model = 'alexnet'"),
        (["--attack", "trojan"], "invalid attack = 'trojan'"),
        (["--poison-rate", "1.5"], "invalid poison_rate = 1.5"),
        (["--epochs", "-1"], "invalid epochs = -1"),
        (["--attack-option", "alpha"], "expected KEY=VALUE"),
        (["--attack", "sig", "--attack-option", "sigma=3"], "unknown option 'sigma' for attack 'sig'; allowed: delta"),
        (["--defense", "ft", "--defense-option", "epoch=3"], "unknown option 'epoch' for defense 'ft'"),
        (["--defense", "ft"], "clean_samples 500 is more than the 60 images of the defense split"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str, mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    proc = run_cli("train", *BASE, "--data-root", str(mnist_root), "--out", str(out), *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_unreadable_data_and_existing_dir(mnist_root: Path, tmp_path: Path) -> None:
    raw = mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    raw.write_bytes(b"\x1f\x8b not really gzip")
    proc = run_cli("train", *BASE, "--data-root", str(mnist_root), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode == 2 and "train-images-idx3-ubyte" in proc.stderr
    assert not (tmp_path / "r").exists()
    (tmp_path / "existing").mkdir()
    proc = run_cli("train", *BASE, "--data-root", str(mnist_root), "--out", str(tmp_path / "existing"), cwd=tmp_path)
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_bad_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochs: 3\nlearning_rate: 0.1\n")
    proc = run_cli("train", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown option 'learning_rate'" in proc.stderr


def test_list(tmp_path: Path) -> None:
    proc = run_cli("list", cwd=tmp_path)
    assert proc.returncode == 0
    assert "fashion-mnist" in proc.stdout and "resnet18" in proc.stdout and "badnets" in proc.stdout
