"""EigenGuard's cost, in one run: (a) a ResNet-18 training step with vs. without the guard; (b) the fast Gram
path vs. the literal SVD at the paper's matrix shape ([His; F] = 512 x 65536 for batch 256, 64 x 32 x 32).

    python benchmarks/guard_overhead.py --batch-size 64 --out bench-results/guard-overhead-cpu.json   # CPU
    python benchmarks/guard_overhead.py --device cuda --out guard-overhead-gpu.json                  # GPU

Step times alternate plain / guarded steps and report medians, so drift in machine speed hits both alike.
Each guarded step includes the paper's 100 lowest-loss anchor rows unless --anchors 0: appended to the batch
(the paper, `guarded`) and, timed in the same alternation, run apart without gradient
(`defense.anchor_features=detached`, `guarded_detached`).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from eigenguard.guard import filter_rows_gram, filter_rows_svd, guard
from eigenguard.models import create_model
from eigenguard.pipeline.run import cpu_name
from eigenguard.training.guarded import detached_features


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def step_times(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    amp = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    anchors = torch.randn(args.anchors, 3, 32, 32, generator=g).to(device)
    names = ("plain", "guarded", "guarded_detached") if args.anchors else ("plain", "guarded")
    models, steps = {}, {}
    for name in names:
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=10, width=args.width)
        module = guard(model, at="stage1", k=20, momentum=0.7, precision=args.precision) if name != "plain" else None
        model = model.to(device)
        if amp:
            model = model.to(memory_format=torch.channels_last)
        if name == "guarded":
            module.anchor_rows = args.anchors
        elif name == "guarded_detached":
            module.anchor_source = detached_features(model, "stage1", anchors)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        inputs = torch.cat([x, anchors]) if name == "guarded" and args.anchors else x

        def step(model=model, opt=opt, inputs=inputs) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(inputs), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        models[name], steps[name] = model, step
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.steps):
        for name in names:
            times[name].append(timed(steps[name], device))
    plain, guarded = statistics.median(times["plain"]), statistics.median(times["guarded"])
    out = {"plain_step_s": plain, "guarded_step_s": guarded, "overhead": guarded / plain - 1.0}
    if "guarded_detached" in times:
        detached = statistics.median(times["guarded_detached"])
        out |= {"guarded_detached_step_s": detached, "overhead_detached": detached / plain - 1.0}
    return out


def filter_paths(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    rows, d = args.matrix_rows, args.matrix_cols
    # ReLU-like features with a shared mean direction, as after a residual stage
    feat = (torch.relu(torch.randn(rows, d, generator=g)) + 0.1 * torch.randn(rows, 1, generator=g)).to(device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.precision]
    fast = lambda: filter_rows_gram(feat, rows // 2, k=20, dtype=dtype)  # noqa: E731
    literal = lambda: filter_rows_svd(feat, rows // 2, k=20)  # noqa: E731
    fast(), literal()
    t_fast = statistics.median(timed(fast, device) for _ in range(args.repeats))
    t_literal = statistics.median(timed(literal, device) for _ in range(max(1, args.repeats // 3)))
    reference = filter_rows_svd(feat.double(), rows // 2, k=20)
    out_fast, out_literal = fast().double(), literal().double()
    scale = reference.abs().max().item()
    return {
        "fast_s": t_fast,
        "literal_svd_s": t_literal,
        "speedup": t_literal / t_fast,
        "max_abs_diff_fast_vs_literal": (out_fast - out_literal).abs().max().item(),
        "max_rel_diff_fast_float32_vs_float64_svd": (out_fast - reference).abs().max().item() / scale,
        "max_rel_diff_literal_float32_vs_float64_svd": (out_literal - reference).abs().max().item() / scale,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--anchors", type=int, default=100)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--matrix-rows", type=int, default=512)
    p.add_argument("--matrix-cols", type=int, default=65536)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=("float32", "float64"), default="float32", help="Gram/eigh dtype")
    p.add_argument("--skip-step", action="store_true", help="only the filter comparison")
    p.add_argument("--out", type=Path, default=Path("bench-results/guard-overhead.json"))
    args = p.parse_args()
    device = torch.device(args.device)
    record = {
        "benchmark": "guard_overhead",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "step": {
            "model": "resnet18",
            "width": args.width,
            "batch_size": args.batch_size,
            "image": [3, 32, 32],
            "anchors": args.anchors,
            "amp_bf16": device.type == "cuda",
            **step_times(args, device),
        },
        "filter": {"shape": [args.matrix_rows, args.matrix_cols], "k": 20, **filter_paths(args, device)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
