"""Training throughput: eigenguard's device-resident pipeline vs. a torchvision Dataset + DataLoader.

Both sides train the same model on the same images with the same augmentation (random crop, pad 4, and
horizontal flip); they differ only in how batches are made:
- device: the uint8 set lives on the device; a batch is an index, augmentation two batched tensor ops;
- loader: a torchvision-style Dataset yields PIL images through RandomCrop / RandomHorizontalFlip /
  ToTensor / Normalize, collated by a DataLoader with worker processes (pinned memory on CUDA).
Each is measured twice in one run: feeding batches alone ("data" images/s) and full SGD steps ("train").

    python benchmarks/throughput.py --out bench-results/throughput-cpu.json
    python benchmarks/throughput.py --synthetic-cifar --width 1 --device cuda --out throughput-gpu.json
"""

import argparse
import json
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from eigenguard.data import load_dataset
from eigenguard.data.transforms import Normalize, random_crop, random_flip
from eigenguard.models import create_model


class PILDataset(Dataset):
    """What a typical torchvision pipeline does: one PIL image per __getitem__, then transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform  # images: (N, H, W[, C]) uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def device_batches(
    images: torch.Tensor, labels: torch.Tensor, batch: int, norm: Normalize, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(images), device=images.device, generator=gen)
    for s in range(0, len(images) - batch + 1, batch):
        idx = order[s : s + batch]
        yield norm(random_flip(random_crop(images[idx], 4, gen), gen)), labels[idx]


def loader_batches(loader: DataLoader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def measure(batches: Iterator, step: Callable | None, max_images: int, device: torch.device) -> float:
    """Images per second over up to `max_images`, after two warm-up batches."""
    seen, start = 0, None
    for i, (x, y) in enumerate(batches):
        if step is not None:
            step(x, y)
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        elif start is not None:
            seen += len(x)
            if seen >= max_images:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    if start is None or seen == 0:
        raise SystemExit("not enough data for a measurement: lower --batch-size or raise --images")
    return seen / (time.perf_counter() - start)


def compare_pipelines(
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    model_name: str,
    width: float,
    batch_size: int,
    max_images: int,
    workers: int,
    device: torch.device,
) -> dict[str, float]:
    """Images per second of the device-resident pipeline and of a DataLoader, feeding alone and training."""
    c = images.shape[1]
    hwc = images.permute(0, 2, 3, 1).numpy()
    pil_images = hwc[..., 0] if c == 1 else hwc

    model = create_model(model_name, in_channels=c, num_classes=10, width=width).to(device)
    amp = device.type == "cuda"
    if amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    dev_images, dev_labels = images.to(device), labels.to(device)
    norm = Normalize(mean, std, device)
    size = images.shape[-1]
    tf = transforms.Compose(
        [
            transforms.RandomCrop(size, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    ds = PILDataset(pil_images, labels.numpy(), tf)

    def make_loader() -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
        )

    results: dict[str, float] = {}
    for mode, stepper in (("data", None), ("train", step)):
        gen = torch.Generator(device=device).manual_seed(0)
        results[f"device_{mode}_images_per_s"] = measure(
            device_batches(dev_images, dev_labels, batch_size, norm, gen), stepper, max_images, device
        )
        results[f"loader_{mode}_images_per_s"] = measure(
            loader_batches(make_loader(), device), stepper, max_images, device
        )
    for mode in ("data", "train"):
        results[f"{mode}_speedup"] = results[f"device_{mode}_images_per_s"] / results[f"loader_{mode}_images_per_s"]

    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--synthetic-cifar", action="store_true", help="random 50k x 3x32x32 instead of --dataset")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, default=5120, help="images timed per measurement")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("bench-results/throughput.json"))
    args = p.parse_args()
    device = torch.device(args.device)

    if args.synthetic_cifar:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (50000, 3, 32, 32), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (50000,), generator=g)
        mean, std, name = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "synthetic-cifar"
    else:
        train, _ = load_dataset(args.dataset)
        images, labels, mean, std, name = train.images, train.labels, train.mean, train.std, args.dataset
    results = compare_pipelines(
        images, labels, mean, std, model_name=args.model, width=args.width, batch_size=args.batch_size,
        max_images=args.images, workers=args.workers, device=device,
    )  # fmt: skip
    record = {
        "benchmark": "throughput",
        "dataset": name,
        "model": args.model,
        "width": args.width,
        "batch_size": args.batch_size,
        "images_timed": args.images,
        "loader_workers": args.workers,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": {k: round(v, 2) for k, v in results.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
