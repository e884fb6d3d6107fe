"""The command line: flags, YAML, overrides, exit codes and messages for bad input."""

import json
import socket
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
    "--set",
    "batch_size=64",
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
        (["--set", "alpha"], "expected KEY=VALUE"),
        (["--attack", "sig", "--set", "attack.sigma=3"], "unknown option 'sigma' for attack 'sig'; allowed: delta"),
        (["--defense", "ft", "--set", "defense.epoch=3"], "unknown option 'epoch' for defense 'ft'"),
        (["--defense", "eigenguard", "--set", "defense.at=stage9"], "at 'stage9' is not an insertion point"),
        (["--set", "lr=[1"], "the value is not valid YAML"),
        (["--set", "epoch=3"], "unknown option 'epoch'"),
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
    assert "    k = 20  [a whole number >= 1]  top singular directions" in proc.stdout  # options, ranges, help
    assert "    momentum = 0.7  [a number [0, 1)]" in proc.stdout
    assert "dimension-edit" in proc.stdout
    assert "  recommended: a preset, inversion with along = 'principal', confirm = 'any'" in proc.stdout


def test_help_fits_a_screen_and_config_lists_every_setting(tmp_path: Path) -> None:
    from eigenguard.config import TrainConfig

    proc = run_cli("train", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) <= 45 and "--set" in proc.stdout
    proc = run_cli("config", "--profile", "quick", cwd=tmp_path)
    assert proc.returncode == 0
    for field in TrainConfig.model_fields:
        assert f"\n  {field} = " in proc.stdout
    assert "  width = 0.25: channel-width multiplier" in proc.stdout


def test_set_reaches_component_options_and_profile_matches_python(mnist_root: Path, tmp_path: Path) -> None:
    import yaml

    from eigenguard import TrainConfig, resolve

    args = ["--defense", "eigenguard", "--set", "defense.k=3", "--set", "defense.anchors=none"]
    proc = run_cli("train", *BASE, "--data-root", str(mnist_root), "--out", str(tmp_path / "g"), *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    recorded = yaml.safe_load((tmp_path / "g" / "config.yaml").read_text())
    assert recorded["defense"]["k"] == 3 and recorded["defense"]["anchors"] == "none"
    assert recorded["width"] == 0.125 and recorded["warmup_epochs"] == 0.5  # flag, and the quick profile
    python = TrainConfig(
        profile="quick", dataset="mnist", width=0.125, epochs=1, batch_size=64, device="cpu",
        data_root=str(mnist_root), out=str(tmp_path / "g"), defense={"name": "eigenguard", "k": 3,
        "anchors": "none"},
    )  # fmt: skip
    assert resolve(python) == TrainConfig(**recorded)


def test_old_layout_in_a_users_config_is_one_line_saying_how_to_write_it(mnist_root: Path, tmp_path: Path) -> None:
    """eigenguard 0.1's layout (flat guard fields, *_options); its run directories convert where they are read
    back (test_config)."""
    cfg = tmp_path / "old.yaml"
    cfg.write_text("attack: blend\nattack_options: {alpha: 0.3}\ndefense: none\ndefense_options: {}\nk: 20\n")
    proc = run_cli("train", "--config", str(cfg), *BASE, "--data-root", str(mnist_root), "--out",
                   str(tmp_path / "r"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "'attack_options' is eigenguard 0.1's layout: write attack: {name:" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_resume_through_the_cli(mnist_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert run_cli("train", *BASE, "--data-root", str(mnist_root), "--out", str(run), cwd=tmp_path).returncode == 0
    for args, message in (
        (["--resume", str(run)], "has finished (metrics.json is written)"),
        (["--resume", str(run), "--epochs", "3"], "--resume takes no other settings (got --epochs)"),
        (["--resume", str(tmp_path / "none")], "is not a run directory (no config.yaml)"),
    ):
        proc = run_cli("train", *args, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (run / "metrics.json").unlink()  # as if it had been killed after its last epoch's checkpoint... or none
    proc = run_cli("train", "--resume", str(run), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (run / "metrics.json").is_file() and "ACC" in proc.stdout


@pytest.mark.slow
def test_runs_lists_states(mnist_root: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = run_cli("train", *BASE, "--data-root", str(mnist_root), "--out", str(runs / "a"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    killed = runs / "b"
    killed.mkdir()
    (killed / "config.yaml").write_text((runs / "a" / "config.yaml").read_text())
    (killed / "state.json").write_text('{"state": "running", "host": "elsewhere-not", "pid": 1}')
    gone = runs / "c"
    gone.mkdir()
    (gone / "config.yaml").write_text((runs / "a" / "config.yaml").read_text())
    (gone / "state.json").write_text(json.dumps({"state": "running", "host": socket.gethostname(), "pid": 2**22 + 7}))
    proc = run_cli("runs", str(runs), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.strip()[:2] in ("│ ", "┃ ")
             and line.split()[1] in "abc"}  # fmt: skip
    assert "finished" in lines["a"] and "running" in lines["b"]  # another host's run: assumed alive
    assert "interrupted" in lines["c"] and "--resume" in lines["c"]
    proc = run_cli("runs", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr
