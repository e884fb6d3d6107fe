"""The benchmark scripts that travel to a GPU machine run end to end here, at tiny sizes, on CPU."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_gpu_suite_smoke(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--dataset", "mnist"]
    proc = subprocess.run([*command, "--data-root", str(mnist_root), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    assert record["smoke"] and list(record["parts"]) == ["pipeline", "guard_step", "filter", "inference", "pair"]
    parts = record["parts"]
    assert all(p["ok"] for p in parts.values()), {n: p.get("error") for n, p in parts.items()}
    assert parts["pipeline"]["device_train_images_per_s"] > 0 and parts["pipeline"]["loader_train_images_per_s"] > 0
    assert parts["guard_step"]["guarded_step_s"] > 0 and parts["filter"]["speedup"] > 0
    assert parts["inference"]["per_sample_ratio"] > 0 and parts["inference"]["per_sample_eigh_ratio"] > 0
    assert 0 <= parts["pair"]["eigenguard"]["acc"] <= 1 and parts["pair"]["none"]["train_seconds"] > 0


def test_gpu_suite_refuses_an_unknown_part(tmp_path: Path) -> None:
    script = str(ROOT / "benchmarks" / "gpu_suite.py")
    proc = subprocess.run(
        [sys.executable, script, "--parts", "pipeline,warp"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2 and "unknown parts warp; allowed: pipeline" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written
