"""Everything a short GPU loan should measure, in one run and one JSON file (about 8 minutes on one H200):

1. pipeline: the device-resident uint8 pipeline vs a torchvision Dataset + DataLoader (benchmarks/throughput.py),
   Fashion-MNIST, ResNet-18 at width 1, batch 256: images/s feeding alone and training;
2. guard_step: a training step with vs without the guard (and its 100 anchor rows), batch 256, 3x32x32
   (benchmarks/guard_overhead.py);
3. filter: the Gram fast path vs the literal SVD at the paper's matrix shape, 512 x 65536;
4. inference: plain vs guarded inference, width 1, a filled history: per-sample through the secular solver
   and through the dense eigh it replaced, and the batch protocol;
5. pair: the paper's setting on Fashion-MNIST (ResNet-18 width 1, batch 256, SGD 0.1, BadNets 10%), no defense
   vs EigenGuard, `--pair-epochs` epochs each (the paper's 100 do not fit a loan), bf16 autocast +
   channels_last (what the trainer does on CUDA); `--pair-compile` adds torch.compile (`compile: true`).

    bash scripts/gpu_carry.sh                                                        # here: assemble .gpu/
    python benchmarks/gpu_suite.py --data-root .gpu/data --out gpu-suite.json        # on the GPU machine
    python benchmarks/gpu_suite.py --smoke --out /tmp/gpu-suite-smoke.json           # CPU, seconds (tests)

On the project's loaned H200 (torch preinstalled, no pydantic, no network), the checkout travels with .gpu/
(the four Fashion-MNIST files and the wheels, from scripts/gpu_carry.sh; docs/results/performance.md has
the whole command). Every part records its own wall time; a part that fails records its error and the
suite goes on, so one bad part never costs the whole loan; the JSON is rewritten after every part.
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark scripts

import guard_overhead
import throughput

from eigenguard import TrainConfig, train
from eigenguard.data import load_dataset
from eigenguard.guard import guard, inference_mode
from eigenguard.guard.spectral_filter import frozen_history
from eigenguard.models import create_model
from eigenguard.run_directory import atomic_write_text


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    train_set, _ = load_dataset(args.dataset, args.data_root)
    n = args.pipeline_images * 2 + 4 * args.batch_size
    return throughput.compare_pipelines(
        train_set.images[:n], train_set.labels[:n], train_set.mean, train_set.std, model_name="resnet18",
        width=args.width, batch_size=args.batch_size, max_images=args.pipeline_images, workers=args.workers,
        device=device,
    )  # fmt: skip


def guard_step(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    options = argparse.Namespace(
        batch_size=args.batch_size, width=args.width, anchors=args.anchors, steps=args.steps, warmup=2,
        precision="float32",
    )  # fmt: skip
    return guard_overhead.step_times(options, device)


def filter_paths(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    rows, cols = args.matrix
    options = argparse.Namespace(matrix_rows=rows, matrix_cols=cols, repeats=3, precision="float32")
    return {"shape": [rows, cols], **guard_overhead.filter_paths(options, device)}


def inference(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Seconds to classify `inference_images` 1x28x28 images: plain, guard per-sample, guard batch protocol."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.inference_images, 1, 28, 28, generator=g).to(device)
    torch.manual_seed(0)
    plain = create_model("resnet18", in_channels=1, num_classes=10, width=args.width).to(device)
    torch.manual_seed(0)
    guarded = create_model("resnet18", in_channels=1, num_classes=10, width=args.width)
    module = guard(guarded, at="stage1", k=20)
    guarded = guarded.to(device)
    amp = device.type == "cuda"
    if amp:
        plain, guarded = plain.to(memory_format=torch.channels_last), guarded.to(memory_format=torch.channels_last)
    guarded.train()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for _ in range(3):  # fill the history with training batches
            guarded(torch.randn(args.batch_size, 1, 28, 28, generator=g).to(device))
    plain.eval()
    guarded.eval()

    def seconds(model: torch.nn.Module) -> float:
        def once() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                for start in range(0, len(x), args.batch_size):
                    model(x[start : start + args.batch_size])

        once()  # warm-up
        times = []
        for _ in range(3):
            sync(device)
            t0 = time.perf_counter()
            once()
            sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    result = {"images": len(x), "history_roots": len(frozen_history(module.history).lo), "plain_s": seconds(plain)}
    with inference_mode([module], "per-sample"):
        result["guard_per_sample_s"] = seconds(guarded)  # the secular solver (the default)
        module.options = replace(module.options, solver="eigh")
        result["guard_per_sample_eigh_s"] = seconds(guarded)  # the dense path it replaced
        module.options = replace(module.options, solver="secular")
    with inference_mode([module], "batch"):
        result["guard_batch_s"] = seconds(guarded)
    result["per_sample_ratio"] = result["guard_per_sample_s"] / result["plain_s"]
    result["per_sample_eigh_ratio"] = result["guard_per_sample_eigh_s"] / result["plain_s"]
    result["batch_ratio"] = result["guard_batch_s"] / result["plain_s"]
    return result


def pair(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The paper's setting on Fashion-MNIST for `pair_epochs` epochs, no defense vs EigenGuard."""
    out: dict[str, Any] = {"epochs": args.pair_epochs, "compile": args.pair_compile}
    with tempfile.TemporaryDirectory() as tmp:
        for defense in ("none", "eigenguard"):
            config = TrainConfig(
                profile="paper", dataset=args.dataset, data_root=args.data_root, width=args.width,
                attack="badnets", defense=defense, epochs=args.pair_epochs, eval_every=args.pair_epochs,
                device=str(device), out=str(Path(tmp) / defense), cache_dir=str(Path(tmp) / "cache"),
                compile=args.pair_compile,
                **({"train_subset": args.pair_subset} if args.pair_subset else {}),
            )  # fmt: skip
            metrics = train(config, progress=False).metrics
            keep = ("acc", "asr", "acc_paper", "asr_paper", "train_seconds", "train_images_per_second", "total_seconds")
            out[defense] = {k: metrics.get(k) for k in keep}
            out[defense]["log"] = (Path(tmp) / defense / "log.csv").read_text()
    out["train_seconds_ratio"] = out["eigenguard"]["train_seconds"] / out["none"]["train_seconds"]
    return out


PARTS: dict[str, Callable[[argparse.Namespace, torch.device], dict[str, Any]]] = {
    "pipeline": pipeline,
    "guard_step": guard_step,
    "filter": filter_paths,
    "inference": inference,
    "pair": pair,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None, help="where the dataset's files are (default: eigenguard's search)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--anchors", type=int, default=100)
    p.add_argument("--steps", type=int, default=20, help="timed guard steps per variant")
    p.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    p.add_argument("--pipeline-images", type=int, default=20480)
    p.add_argument("--matrix", type=int, nargs=2, default=[512, 65536], metavar=("ROWS", "COLS"))
    p.add_argument("--inference-images", type=int, default=4096)
    p.add_argument("--pair-epochs", type=int, default=15)
    p.add_argument("--pair-subset", type=int, default=None, help="training images for the pair (default: all)")
    p.add_argument("--pair-compile", action="store_true", help="torch.compile the pair's models")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, every part, in seconds")
    p.add_argument("--out", type=Path, default=Path("bench-results/gpu-suite.json"))
    args = p.parse_args()
    if args.smoke:
        # width 0.125, not 0.0625: at 4 channels, batch 32, oneDNN's convolution weight backward on the
        # project's 2-core AVX2 CPU (torch 2.14.1) sometimes spins forever (reproduced in isolation; 8
        # channels never did in 16 tries)
        args.device, args.width, args.batch_size, args.anchors, args.steps = "cpu", 0.125, 32, 4, 1
        args.workers, args.pipeline_images, args.matrix, args.inference_images = 0, 64, [64, 512], 64
        args.pair_epochs, args.pair_subset = 1, 256
    device = torch.device(args.device)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {', '.join(sorted(unknown))}; allowed: {', '.join(PARTS)}")

    record: dict[str, Any] = {
        "benchmark": "gpu_suite",
        "smoke": args.smoke,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "parts")},
        "parts": {},
    }
    started = time.perf_counter()
    for name in args.parts.split(","):
        t0 = time.perf_counter()
        try:
            result: dict[str, Any] = {"ok": True, **PARTS[name](args, device)}
        except Exception as e:  # a failed part is recorded, the suite goes on
            result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result["wall_s"] = round(time.perf_counter() - t0, 3)
        record["parts"][name] = result
        print(f"{name}: {'ok' if result['ok'] else result['error']} ({result['wall_s']:.1f}s)", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")  # after every part: a kill keeps the rest
    record["wall_s"] = round(time.perf_counter() - started, 3)
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    failed = [n for n, r in record["parts"].items() if not r["ok"]]
    print(f"{len(record['parts']) - len(failed)} of {len(record['parts'])} parts ok -> {args.out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
