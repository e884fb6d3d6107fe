"""Where a guarded training epoch spends its time, in one run: plain and guarded training steps (without and
with the paper's 100 anchor rows, which run with the batch or, `anchor_features=detached`, apart without
gradient) and the anchors' ranking pass, at the quick profile's shapes (ResNet-18 at width 0.25, batch 256,
1 x 28 x 28 images, 20,000 training images).

    python benchmarks/guard_epoch.py --out bench-results/guard-epoch-cpu.json

`--per-sample-training` adds the guard trained as per-sample inference filters (`defense.training=per-sample`:
each training image filtered alone against His and the anchors, one bordered eigh per image; question 4 of
the EigenGuard study), with the paper's 100 anchors in the batch as `eigenguard train` runs it; its steps
are the slowest, so it is off by default.

Random uint8 images stand in for Fashion-MNIST (the cost does not depend on the pixels). Step times are
medians of alternating steps, so drift in machine speed hits every variant alike; an epoch estimate is
steps x step time (+ the ranking pass from the second epoch on, when the anchors are chosen, unless they
are ranked by the training losses, `ranking=training`, which costs no pass).
"""

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import Normalize
from eigenguard.guard import guard, inference_mode
from eigenguard.models import create_model
from eigenguard.pipeline.run import cpu_name
from eigenguard.training.evaluate import per_sample_loss
from eigenguard.training.guarded import detached_features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--anchors", type=int, default=100)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    p.add_argument("--per-sample-training", action="store_true", help="also time defense.training=per-sample")
    p.add_argument("--out", type=Path, default=Path("bench-results/guard-epoch-cpu.json"))
    args = p.parse_args()
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    data = ImageDataset(images, labels, [str(i) for i in range(10)])
    normalize = Normalize((0.286,), (0.353,), device)
    anchors = normalize(images[: args.anchors])

    torch.manual_seed(0)
    plain = create_model("resnet18", in_channels=1, num_classes=10, width=args.width)
    torch.manual_seed(0)
    guarded = create_model("resnet18", in_channels=1, num_classes=10, width=args.width)
    module = guard(guarded, at="stage1", k=20, momentum=0.7)
    # name: (model, anchor rows, anchors detached, the guard's training mode)
    variants = {
        "plain": (plain, 0, False, "batch"),
        "guard_no_anchors": (guarded, 0, False, "batch"),
        "guard_anchors": (guarded, args.anchors, False, "batch"),
        "guard_anchors_detached": (guarded, args.anchors, True, "batch"),
    }
    if args.per_sample_training:
        variants["guard_anchors_per_sample_training"] = (guarded, args.anchors, False, "per-sample")
    source = detached_features(guarded, "stage1", anchors)
    optimizers = {m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (plain, guarded)}

    def step(model: torch.nn.Module, anchor_rows: int, detached: bool, mode: str) -> float:
        model.train()
        module.options = replace(module.options, training=mode)
        module.anchor_rows = 0 if detached else anchor_rows
        module.anchor_source = source if detached else None
        idx = torch.randint(0, args.images, (args.batch_size,), generator=g)
        x = normalize(images[idx])
        if anchor_rows and not detached:
            x = torch.cat([x, anchors])
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), labels[idx])
        optimizers[model].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[model].step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.steps + 2):
        for name, (model, rows, detached, mode) in variants.items():
            t = step(model, rows, detached, mode)
            if i >= 2:  # two warm-up rounds
                times[name].append(t)
    module.anchor_rows, module.anchor_source = 0, None
    module.options = replace(module.options, training="batch")
    start = time.perf_counter()
    with inference_mode([module], "batch"):
        per_sample_loss(guarded, data, normalize, args.batch_size)
    ranking = time.perf_counter() - start
    start = time.perf_counter()
    per_sample_loss(plain, data, normalize, args.batch_size)
    plain_pass = time.perf_counter() - start

    steps = args.images // args.batch_size
    step_s = {name: statistics.median(t) for name, t in times.items()}
    epoch_plain = steps * step_s["plain"]
    record = {
        "benchmark": "guard_epoch",
        "device": cpu_name(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "shape": {"width": args.width, "batch_size": args.batch_size, "image": [1, 28, 28], "images": args.images},
        "step_s": step_s,
        "step_ratio_to_plain": {name: s / step_s["plain"] for name, s in step_s.items()},
        "ranking_pass_s": ranking,
        "plain_forward_pass_s": plain_pass,
        "epoch_estimate_s": {
            "plain": epoch_plain,
            "guard_first_epoch": steps * step_s["guard_no_anchors"],
            "guard_later_epochs": steps * step_s["guard_anchors"] + ranking,
            "guard_later_epochs_ranked_by_training": steps * step_s["guard_anchors"],
            "guard_later_epochs_ranked_by_training_detached": steps * step_s["guard_anchors_detached"],
        },
    }
    if args.per_sample_training:
        per_sample = steps * step_s["guard_anchors_per_sample_training"] + ranking
        record["epoch_estimate_s"]["guard_later_epochs_per_sample_training"] = per_sample
    record["epoch_ratio_to_plain"] = {k: v / epoch_plain for k, v in record["epoch_estimate_s"].items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
