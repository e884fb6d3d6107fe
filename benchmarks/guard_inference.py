"""What a deployed guarded model pays per image: per-sample inference through the secular solver vs. the
dense eigh path it replaced, against plain inference, in one run; and, for finished runs, whether the
solver moves their ACC / ASR.

    python benchmarks/guard_inference.py --out bench-results/guard-inference.json
    python benchmarks/guard_inference.py --runs bench-results/runs/*eigenguard* --out ...   # + the trained

(a) Timing: ResNet-18 in eval mode on 1 x 28 x 28 inputs (Fashion-MNIST's shape), batch 256: at width 0.25,
2048 images; at width 1, 512 images (the shapes of the performance issue's table). The guard's history is
filled by four training-mode batches of real Fashion-MNIST images, or with --runs taken from a trained
run (its history is far from full rank, which is what the secular solver exploits). Each configuration is
timed `--repeats` times, alternating, and the median is reported.
(b) Agreement: the guard's output on 256 test images under both solvers, against a float64 dense
reference with float32's zero-direction threshold (the definition at the guard's precision).
(c) With --runs: each run's per-sample ACC and ASR recomputed with both solvers.
"""

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from eigenguard.analysis.run_loading import load_run
from eigenguard.data import load_dataset
from eigenguard.data.transforms import Normalize
from eigenguard.guard import find_guards, guard
from eigenguard.guard import spectral_filter as sf
from eigenguard.models import create_model
from eigenguard.pipeline.run import cpu_name
from eigenguard.training.evaluate import accuracy


def seconds_of(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def timing(images: torch.Tensor, width: float, count: int, repeats: int, trained: dict | None) -> dict:
    torch.manual_seed(0)
    plain = create_model("resnet18", in_channels=1, num_classes=10, width=width).eval()
    guarded = create_model("resnet18", in_channels=1, num_classes=10, width=width)
    g = guard(guarded, at="stage1", k=20)
    if trained is not None:
        guarded.load_state_dict(trained)
    else:
        guarded.load_state_dict(plain.state_dict(), strict=False)
        guarded.train()
        for i in range(4):
            guarded(images[i * 256 : (i + 1) * 256])
    guarded.eval()
    x = images[:count]

    def run(model: torch.nn.Module) -> None:
        for start in range(0, count, 256):
            model(x[start : start + 256])

    frozen = sf.frozen_history(g.history)
    result = {"width": width, "images": count, "history_roots": len(frozen.lo), "history_rows": len(g.history)}
    paths = {"plain": (plain, None, None), "secular": (guarded, "per-sample", "secular")}
    paths |= {"eigh": (guarded, "per-sample", "eigh"), "batch": (guarded, "batch", "secular")}

    def timed(name: str) -> float:
        model, inference, solver = paths[name]
        if inference is not None:
            g.inference, g.options = inference, replace(g.options, solver=solver)
        return seconds_of(lambda: run(model))

    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for name in paths:
        timed(name)  # warm-up (and the guard's cached decomposition, as in deployment)
    for _ in range(repeats):  # alternate, so that drift in machine speed hits every path alike
        for name in paths:
            seconds[name].append(timed(name))
    g.inference, g.options = "per-sample", replace(g.options, solver="secular")
    for name, values in seconds.items():
        result[f"{name}_seconds"] = round(statistics.median(values), 4)
    for name in ("secular", "eigh", "batch"):
        result[f"{name}_vs_plain"] = round(result[f"{name}_seconds"] / result["plain_seconds"], 3)
    result["secular_speedup_over_eigh"] = round(result["eigh_seconds"] / result["secular_seconds"], 2)
    return result


@torch.no_grad()
def agreement(images: torch.Tensor, width: float, trained: dict | None) -> dict:
    """The guard's own input at stage 1 for 256 images, filtered by both solvers and by the reference."""
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, num_classes=10, width=width)
    g = guard(model, at="stage1", k=20)
    if trained is not None:
        model.load_state_dict(trained)
    else:
        model.train()
        for i in range(4):
            model(images[i * 256 : (i + 1) * 256])
    model.eval()
    seen: list[torch.Tensor] = []
    hook = g.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].flatten(1)))
    model(images[:256])
    hook.remove()
    history, x = g.history, seen[0]
    fast = sf.filter_each_against(history, x, k=20)
    dense = sf.filter_each_against(history, x, k=20, solver="eigh")
    reference = dense_reference(history.double(), x.double(), 20, torch.finfo(torch.float32).eps)

    def row_error(out: torch.Tensor) -> dict:
        err = (out.double() - reference).abs().amax(1) / reference.abs().amax(1).clamp_min(1e-30)
        return {"max": float(err.max()), "median": float(err.median()), "rows_above_1e-4": int((err > 1e-4).sum())}

    return {"width": width, "secular": row_error(fast), "eigh": row_error(dense)}


def dense_reference(history: torch.Tensor, x: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """Every row of x filtered against history by a dense float64 eigh of its bordered Gram matrix, with
    the zero-direction threshold of the precision `eps` belongs to."""
    m = len(history)
    cross = x @ history.T
    gram = torch.zeros(len(x), m + 1, m + 1, dtype=torch.float64)
    gram[:, :m, :m] = history @ history.T
    gram[:, :m, m], gram[:, m, :m], gram[:, m, m] = cross, cross, (x * x).sum(1)
    values, vectors = torch.linalg.eigh(gram)
    values, vectors = values.flip(-1), vectors.flip(-1)
    ratio = sf._filter_ratio(values, k, 1e-3, m + 1, "paper", eps)
    w = (vectors * (ratio * vectors[:, m, :]).unsqueeze(1)).sum(-1)
    return w[:, :m] @ history + w[:, m:] * x


def run_metrics(run_dir: Path, data_root: str | None) -> dict:
    run = load_run(run_dir, data_root=data_root)
    asr_set = run.attack.asr_test_set(run.test) if run.attack is not None else None
    out: dict = {"run": run_dir.name}
    for name in ("secular", "eigh"):
        for g in find_guards(run.model):
            g.options = replace(g.options, solver=name)
        start = time.perf_counter()
        out[f"acc_{name}"] = accuracy(run.model, run.test, run.normalize, 256)
        out[f"asr_{name}"] = None if asr_set is None else accuracy(run.model, asr_set, run.normalize, 256)
        out[f"eval_seconds_{name}"] = round(time.perf_counter() - start, 2)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out["acc_recorded"], out["asr_recorded"] = metrics.get("acc"), metrics.get("asr")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="finished guarded run directories")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-results/guard-inference.json"))
    args = parser.parse_args()
    _, test = load_dataset("fashion-mnist", args.data_root)
    images = Normalize(test.mean, test.std, torch.device("cpu"))(test.images[:2048])
    trained = None
    if args.runs:  # the first run's weights and history stand for "a trained quick-profile guard"
        loaded = load_run(args.runs[0], data_root=args.data_root)
        if loaded.config.width == 0.25 and find_guards(loaded.model):
            trained = loaded.model.state_dict()
    results: dict = {
        "command": "python benchmarks/guard_inference.py "
        + " ".join(str(a) for a in [*(["--runs", *args.runs] if args.runs else []), "--repeats", args.repeats]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{cpu_name()}, {torch.backends.cpu.get_cpu_capability()}",
        "timing": [timing(images, 0.25, 2048, args.repeats, None), timing(images, 1.0, 512, args.repeats, None)],
        "agreement": [agreement(images, 0.25, None), agreement(images, 1.0, None)],
    }
    if trained is not None:
        results["timing"].append({"history": "trained", **timing(images, 0.25, 2048, args.repeats, trained)})
        results["agreement"].append({"history": "trained", **agreement(images, 0.25, trained)})
    results["runs"] = [run_metrics(r, args.data_root) for r in args.runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
