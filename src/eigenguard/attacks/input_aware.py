"""Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020): every image gets its own trigger.

A generator G (an encoder-decoder) makes an image-specific pattern and a mask generator M an
image-specific mask; the triggered image is x + (G(x) - x) * m(x) with m = tanh(20 M(x) - 10) / 2 + 1/2 (a
steep step at 1/2), in [0, 1] pixel space (the official code works on normalised tensors, the same map
since normalisation is affine per channel). A trigger made for one image does not work on another:
cross samples x1 + (G(x2) - x1) m(x2) keep their true label.

The attacker trains them, as the official code (VinAIResearch/input-aware-backdoor-attack-release):
1. M alone, `mask_epochs`: loss 100 mean(relu(m(x1) - 0.032)) + the diversity loss
   mean(|x1 - x2| / |m(x1) - m(x2)|) (RMS distances, pairs of images from two independent shuffles); Adam
   lr 0.01, betas (0.5, 0.9), the lr divided by 10 at 40% and 80% of the epochs (official: 10 and 20 of 25).
2. G and a surrogate classifier C jointly, `generator_epochs`, M frozen: per batch of 128, 10% get their
   own trigger and the target label, 10% a cross trigger and their label, the rest stay clean; loss = CE
   over the batch + the diversity loss of the patterns; C: SGD lr 0.01, momentum 0.9, wd 5e-4; G: Adam lr
   0.01, betas (0.5, 0.9). Random crop (pad 5; flip for colour images) before the triggers.
Generator sizes: 16 channels and 2 down/up steps for single-channel images (the official MNIST
network), 32 and 3 otherwise (CIFAR-10, GTSRB); conv 3x3 + BatchNorm (momentum 0.05) + ReLU blocks,
max-pool down, bilinear up, output tanh / 2 + 1/2.

Our choices: the official code plants the backdoor by training the victim itself (600 epochs); here the
trained G and M poison a fixed `rate` of the training set (its default 0.1 = p_a), plus `cross_ratio` as
many cross samples (1 = p_c / p_a), recorded as `cross_indices`, and the victim trains as in every other
attack (the data-poisoning version of backdoor-toolbox's "dynamic" attack, which uses the authors' trained
generators). The surrogate C is a quarter-width ResNet-18 of our zoo; the budget defaults to 5 + 20 epochs
(official 25 + 575), an attacker's choice on a CPU. G and M are cached under <cache>/input-aware/ by a
hash of the training set, the seed, every option but cross_ratio (poisoning, not training) and the device
type, so a sweep over cross_ratio trains them once; they are not checkpointed within
their training (a killed run trains them again). The RMS distances' squares are floored at 1e-12 (a floor
we add): two identical patterns otherwise give NaN weights, and a loss that turns non-finite stops the
run with an error instead of poisoning with NaN triggers.
"""

import json
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.attacks.base import Attack, PoisonedTrainingSet
from eigenguard.cache import cache_root, cached_tensors, digest, fingerprint
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import augment
from eigenguard.errors import EigenguardError
from eigenguard.models import create_model
from eigenguard.options import component, option, options_of

EPS = 1e-7


def conv_block(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class TriggerGenerator(nn.Module):
    """The official encoder-decoder: `steps` x (two conv blocks, max-pool), a middle block, `steps` x
    (upsample, two conv blocks), the last without ReLU; output tanh(h) / (2 + 1e-7) + 1/2, in (0, 1)."""

    def __init__(self, in_channels: int, out_channels: int, width: int, steps: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(steps):
            layers += [conv_block(c, width * 2**i), conv_block(width * 2**i, width * 2**i), nn.MaxPool2d(2)]
            c = width * 2**i
        layers.append(conv_block(c, c))
        for i in reversed(range(steps)):
            last = i == 0
            nxt = out_channels if last else width * 2 ** (i - 1)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), conv_block(c, c)]
            layers.append(conv_block(c, nxt, relu=not last))
            c = nxt
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x)) / (2 + EPS) + 0.5


def threshold(m: torch.Tensor) -> torch.Tensor:
    return torch.tanh(20 * m - 10) / (2 + EPS) + 0.5


def rms(x: torch.Tensor) -> torch.Tensor:
    """Each row's root mean square, its square floored at 1e-12: two identical patterns (a saturated tanh)
    otherwise meet sqrt's infinite gradient at 0, which is NaN. Above the floor, value and gradient are
    exactly sqrt's."""
    return x.pow(2).flatten(1).mean(1).clamp_min(1e-12).sqrt()


def diversity(a: torch.Tensor, b: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """mean(RMS(a - b) / RMS(pa - pb)): different inputs must get different patterns (or masks)."""
    return (rms(a - b) / (rms(pa - pb) + EPS)).mean()


@component
class InputAware(Attack):
    name = "input-aware"

    cross_ratio: float = option(1.0, "cross-trigger samples (another image's trigger, true label) per poison", ">= 0")
    mask_epochs: int = option(5, "epochs of the mask generator's own training", ">= 1")
    generator_epochs: int = option(20, "epochs of the joint training of the generators and the classifier", ">= 1")
    mask_density: float = option(0.032, "the mask's target density", "[0, 1]")
    lambda_norm: float = option(100.0, "weight of the mask's density loss", ">= 0")
    lambda_div: float = option(1.0, "weight of the diversity loss", ">= 0")
    batch_size: int = option(128, "batch size of the attacker's training", ">= 10")
    surrogate_width: float = option(0.25, "width multiplier of the attacker's classifier", "[0.01, 16]")

    def __post_init__(self) -> None:
        super().__post_init__()
        c, h, w = self.image_shape
        self.width, self.steps = (16, 2) if c == 1 else (32, 3)
        if h % 2**self.steps or w % 2**self.steps:
            raise EigenguardError(f"input-aware needs image sides divisible by {2**self.steps}, got {h} x {w}")
        self.cache_folder = cache_root(self.cache_dir) / "input-aware"
        self.pattern_net: TriggerGenerator | None = None
        self.mask_net: TriggerGenerator | None = None
        self.report: dict[str, Any] = {}

    # -- the trigger ----------------------------------------------------------------------------------

    @torch.no_grad()
    def _triggered(self, images: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """x + (G(s) - x) m(s) for images x and trigger sources s (uint8, the same shape), in batches."""
        if self.pattern_net is None or self.mask_net is None:
            raise EigenguardError("input-aware: the trigger generators are trained by poison() first")
        self.pattern_net.eval(), self.mask_net.eval()
        out, net_device = [], next(self.pattern_net.parameters()).device
        for start in range(0, len(images), 512):
            x = images[start : start + 512].to(net_device).float() / 255
            s = sources[start : start + 512].to(net_device).float() / 255
            t = x + (self.pattern_net(s) - x) * threshold(self.mask_net(s))
            out.append((t * 255).round().clamp(0, 255).to(torch.uint8).to(images.device))
        return torch.cat(out) if out else images.clone()

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return self._triggered(images, images)

    # -- the attacker's training ------------------------------------------------------------------------

    def _networks(self, device: torch.device, classes: int) -> tuple[TriggerGenerator, TriggerGenerator, nn.Module]:
        c = self.image_shape[0]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed + 21)
            pattern = TriggerGenerator(c, c, self.width, self.steps).to(device)
            mask = TriggerGenerator(c, 1, self.width, self.steps).to(device)
            classifier = create_model("resnet18", in_channels=c, num_classes=classes, width=self.surrogate_width)
        return pattern, mask, classifier.to(device)

    def train_generators(self, train: ImageDataset) -> None:
        device = train.images.device
        g = torch.Generator(device=device).manual_seed(self.seed + 22)
        pattern, mask, classifier = self._networks(device, train.num_classes)
        mean = torch.tensor(train.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(train.std, device=device).view(1, -1, 1, 1)
        n, b = len(train), min(self.batch_size, len(train))

        def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
            one, two = torch.randperm(n, generator=g, device=device), torch.randperm(n, generator=g, device=device)
            return [(one[s : s + b], two[s : s + b]) for s in range(0, n - b + 1, b)]

        def pixels(idx: torch.Tensor) -> torch.Tensor:
            return augment(train.images[idx], 5, self.image_shape[0] == 3, g).float() / 255

        opt_m = torch.optim.Adam(mask.parameters(), lr=0.01, betas=(0.5, 0.9))
        milestones = [round(0.4 * self.mask_epochs), round(0.8 * self.mask_epochs)]
        sched_m = torch.optim.lr_scheduler.MultiStepLR(opt_m, milestones, 0.1)
        mask.train()
        for epoch in range(1, self.mask_epochs + 1):
            started, total_loss, steps = time.perf_counter(), torch.zeros((), device=device), 0
            for i1, i2 in batches():
                x1, x2 = pixels(i1), pixels(i2)
                m1, m2 = threshold(mask(x1)), threshold(mask(x2))
                loss = self.lambda_norm * F.relu(m1 - self.mask_density).mean() + self.lambda_div * diversity(
                    x1, x2, m1, m2
                )
                opt_m.zero_grad(set_to_none=True)
                loss.backward()
                opt_m.step()
                total_loss, steps = total_loss + loss.detach(), steps + 1  # summed on the device: no sync a step
            sched_m.step()
            self._finite(total_loss, "mask", epoch)
            self.say(
                f"input-aware mask {epoch:>3}/{self.mask_epochs}  loss {float(total_loss) / max(steps, 1):.4f}  "
                f"({time.perf_counter() - started:.1f}s)"
            )
        mask.eval().requires_grad_(False)
        self.report["mask_density"] = round(
            float(threshold(mask(pixels(torch.arange(min(n, 256), device=device)))).mean()), 4
        )

        opt_c = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        opt_g = torch.optim.Adam(pattern.parameters(), lr=0.01, betas=(0.5, 0.9))
        n_bd = n_cross = int(0.1 * b)
        pattern.train(), classifier.train()
        for epoch in range(1, self.generator_epochs + 1):
            started, steps, total = time.perf_counter(), 0, 0
            total_loss, correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.int64, device=device)
            for i1, i2 in batches():
                x1, x2, y = pixels(i1), pixels(i2), train.labels[i1]
                p_bd, m_bd = pattern(x1[:n_bd]), threshold(mask(x1[:n_bd]))
                p_cross, m_cross = pattern(x2[n_bd : n_bd + n_cross]), threshold(mask(x2[n_bd : n_bd + n_cross]))
                bd = x1[:n_bd] + (p_bd - x1[:n_bd]) * m_bd
                cross = x1[n_bd : n_bd + n_cross] + (p_cross - x1[n_bd : n_bd + n_cross]) * m_cross
                inputs = torch.cat([bd, cross, x1[n_bd + n_cross :]])
                labels = torch.cat([torch.full_like(y[:n_bd], self.target), y[n_bd:]])
                logits = classifier((inputs - mean) / std)
                div = diversity(x1[:n_bd], x2[n_bd : n_bd + n_cross], p_bd, p_cross)
                loss = F.cross_entropy(logits, labels) + self.lambda_div * div
                opt_c.zero_grad(set_to_none=True), opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step(), opt_g.step()
                correct += (logits.argmax(1)[:n_bd] == self.target).sum()
                total, total_loss, steps = total + n_bd, total_loss + loss.detach(), steps + 1
            self._finite(total_loss, "generator", epoch)
            self.report["surrogate_train_asr"] = round(int(correct) / max(total, 1), 4)
            self.say(
                f"input-aware generator {epoch:>3}/{self.generator_epochs}  "
                f"loss {float(total_loss) / max(steps, 1):.4f}  "
                f"surrogate ASR {int(correct) / max(total, 1):.1%}  ({time.perf_counter() - started:.1f}s)"
            )
        self.pattern_net, self.mask_net = pattern.eval(), mask

    @staticmethod
    def _finite(total_loss: torch.Tensor, phase: str, epoch: int) -> None:
        # a NaN weight makes every trigger NaN, stored as 0: black images that "implant" trivially
        if not torch.isfinite(total_loss):
            raise EigenguardError(f"input-aware: the {phase} training's loss is {float(total_loss)} at epoch {epoch}")

    def _trained(self, train: ImageDataset) -> None:
        """G and M from the cache, or trained (and stored) first."""
        # cross_ratio only says how many cross samples poison() adds: the generators' training does not see it
        trained_by = {k: v for k, v in options_of(self).items() if k != "cross_ratio"}
        key = digest({**trained_by, "seed": self.seed, "device": train.images.device.type}, fingerprint(train))
        path = self.cache_folder / f"generators-{key}.safetensors"

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
            started = time.perf_counter()
            self.train_generators(train)
            self.report["generator_seconds"] = round(time.perf_counter() - started, 1)
            assert self.pattern_net is not None and self.mask_net is not None
            tensors = {f"pattern.{k}": v for k, v in self.pattern_net.state_dict().items()}
            tensors |= {f"mask.{k}": v for k, v in self.mask_net.state_dict().items()}
            return tensors, {"report": json.dumps(self.report)}

        stored, hit = cached_tensors(path, compute, device=train.images.device)
        self.report["cache_hit"] = hit
        if hit:
            pattern, mask, _ = self._networks(train.images.device, train.num_classes)
            pattern.load_state_dict({k[8:]: v for k, v in stored.items() if k.startswith("pattern.")})
            mask.load_state_dict({k[5:]: v for k, v in stored.items() if k.startswith("mask.")})
            self.pattern_net, self.mask_net = pattern.eval(), mask.eval()

    def poison(self, train: ImageDataset, rate: float, generator: torch.Generator) -> PoisonedTrainingSet:
        self._trained(train)
        result = super().poison(train, rate, generator)  # the poisons: each image's own trigger
        cross = self.cross_samples(result, round(self.cross_ratio * len(result.poison_indices)), generator)
        if len(cross):
            sources = torch.randint(0, len(train), (len(cross),), generator=generator).to(train.images.device)
            sources = torch.where(sources == cross, (sources + 1) % len(train), sources)
            result.dataset.images[cross] = self._triggered(train.images[cross], train.images[sources])
        result.cross_indices = cross
        return result

    def describe(self) -> dict[str, object]:
        return {**super().describe(), **self.report}
