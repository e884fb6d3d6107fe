"""Trigger inversion by universal perturbations (`inversion`): this project's own detector, built on two
published ideas and no clean data.

A backdoor is a shortcut: its target class is reachable from any image by a small input change (Neural
Cleanse's premise, Wang et al., IEEE S&P 2019, which inverts a mask and a pattern per class on clean data).
Here the change is a universal additive perturbation (Moosavi-Dezfooli et al., CVPR 2017) of a fixed
size, and the images it moves are the training set's own: for an all-to-one attack with target t, every
image whose given label is not t is clean (a dirty-label poison carries t; a clean-label poison is a t).
  1. for every class c, projected gradient descent on one perturbation delta_c (L2 norm at most `budget`
     per pixel, root-mean-square, in pixel units on [0, 255]) lowers the trained model's loss of c on
     `images` training images neither labelled nor predicted c (`steps` steps on batches of `batch`); the
     success rate is the share of those images delta_c sends to c;
  2. the trigger as the model sees it: for every class, the mean change delta_c makes to those images'
     last-stage features; each class's images are projected on their own class's direction and split in
     two by Otsu's rule (detectors/refusals.py), whose between-group share of the variance measures how
     cleanly they split (a normal distribution gives 2/pi, two distinct groups near 1);
  3. the target (`confirm`): a backdoor's class is reached at least TARGET_LIFT (2) times the other classes'
     median (detectors/base.py), and it shows in one of two ways, each judged against the data's own
     classes, not a tuned constant: it is reached TARGET_LIFT times more than any other class (the trigger
     is a shortcut no natural class offers), or its images split more cleanly than any other class's, for
     it holds images that carry the trigger and images that do not, while a class merely easy to reach
     (ankle boots from sneakers) splits no more than its peers. `either` names the class that leads the
     runner-up class TARGET_LIFT times in one test: the best-reached class where it is reached 2x any
     other, else the class that splits most cleanly where its split share's excess over the other classes'
     median share is 2x any other class's and it is reached 2x the median. `any` (the default) adds a third
     test, read from the data alone, where neither names a class: a dirty-label poison keeps the look of
     the class it was drawn from (k-nearest-neighbour label noise, as in Peri et al., ECCV 2020 workshops,
     there in feature space), so images of nearly every class have pixel neighbours labelled the target,
     while a natural look-alike (shirts of T-shirts) shares neighbours with a few classes only; the class
     whose lower quartile over the other classes of that share (`relabel_shares`) leads the runner-up
     TARGET_LIFT times is named. It needs an attack that relabels (not SIG's clean labels), a poisoning
     rate that gives every source class a share, and pixels that carry the class (Fashion-MNIST here; on
     natural images pixel neighbours agree with labels far less). A weakly learnt
     trigger (a warp the model follows on half the triggered images) may not split its class along
     delta_t; a weak trigger into a class unlike the rest is outdone in reach by a class its neighbours
     resemble; on clean data a class that is naturally easy to reach leads neither test by 2x. `reach`
     names the class that splits most cleanly where it is reached 2x the median, whatever the runner-up's
     split; `split` the best-reached class at 2x only where it also splits most cleanly; `none` the
     best-reached class at 2x. Else no class is named and nothing is flagged;
  4. the named class's split (`along`): `principal` (the default) splits its images along their own top
     principal component (Spectral Signatures' direction, Tran et al. 2018), which separates every attack's
     poisons here. Which of the two groups holds the poisons, three votes decide, each from one property
     poisons have: it carries more of what delta_t adds (the premise above); its feature spread (mean
     distance to its centroid over the centroid's norm) lies farther, in log ratio, from the other classes'
     median spread (the clean part of a class looks like a class, while poisons collapse onto a strong
     trigger, as Blend's and SIG's, or keep the diversity of the classes they came from); its images' nearest
     neighbours in pixels are less often labelled the target (a relabelled image looks like its own class).
     Each vote fails somewhere (the first on Input-aware, the second on a target of unusual spread, the third
     on global triggers, whose poisons are one another's neighbours); the report names the dissenters.
     `direction` flags the high group along delta_t's feature change, the images that already carry what it
     adds; it fails where delta_t does not resemble the trigger (Input-aware's per-image triggers: delta_t
     reaches the class by its natural features, and its direction's high group is mostly clean). Every
     image's score is its projection on the line split (a robust z-score inside its class);
  5. (`widen: trigger`) the sieve's step 4b (detectors/refusals.py): the mean image difference between the
     flagged images and the target's others estimates the trigger in pixels; the others' high group along
     it is flagged too. A few dozen poisons the first split leaves can still plant a backdoor.
Pixels alone do not separate them: a trigger is a small part of an image's variance, while the model's
features amplify exactly the part the backdoor reads. The model read is the one trained on the data
without a defense (as SS, AC and SPECTRE read it), in eval mode; no clean image, no ground truth.
"""

import math
import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from eigenguard.detectors.base import (
    TARGET_LIFT,
    Detection,
    DetectionContext,
    Detector,
    flagged_first,
    score_lift,
    within_class_z,
    without,
)
from eigenguard.detectors.refusals import otsu, widen
from eigenguard.detectors.spectral import top_direction
from eigenguard.options import component, option
from eigenguard.training.evaluate import eval_logits
from eigenguard.training.features import features

STEP = 0.1  # each step moves delta by a tenth of the budget along the normalised gradient


Forward = Callable[[torch.Tensor], torch.Tensor]  # uint8-range float images in, logits out


def universal_perturbation(
    forward: Forward, images: torch.Tensor, target: int, radius: float, steps: int, batch: int,
    generator: torch.Generator,
) -> torch.Tensor:  # fmt: skip
    """One perturbation (1, C, H, W) in pixel units, L2 norm <= `radius`, that sends uint8 `images` to
    `target` under `forward`, by normalised gradient steps."""
    delta = torch.zeros(1, *images.shape[1:], device=images.device, requires_grad=True)
    if len(images) == 0:  # every image is the class already (or labelled it): nothing to send there
        return delta.detach()
    wanted = torch.full((min(batch, len(images)),), target, device=images.device)
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(0, len(images), (len(wanted),), generator=generator).to(images.device)
            loss = F.cross_entropy(forward((images[rows].float() + delta).clamp(0, 255)), wanted)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= STEP * radius * grad / grad.norm().clamp_min(1e-12)
                delta *= (radius / delta.norm().clamp_min(1e-12)).clamp(max=1.0)
    return delta.detach()


def success_rate(forward: Forward, images: torch.Tensor, delta: torch.Tensor, target: int, chunk: int) -> float:
    """The share of uint8 `images` that `delta` sends to `target`."""
    hits = sum(
        int((forward((part.float() + delta).clamp(0, 255)).argmax(1) == target).sum()) for part in images.split(chunk)
    )
    return hits / max(len(images), 1)


def stamped(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """uint8 `images` with `delta` added, rounded back to uint8 (what a feature pass reads)."""
    return (images.float() + delta).round_().clamp_(0, 255).to(torch.uint8)


NEIGHBOURS = 10  # pixel-space neighbours an image's label agreement is read from (step 4, third vote)
REFERENCE = 4096  # training images drawn as the neighbours' pool: a bounded cost on any dataset size
PIXEL_ROWS = 512  # images drawn per class whose neighbours step 3's third test reads: a bounded cost


def spread(rows: torch.Tensor) -> float:
    """Mean distance of `rows` to their centroid over the centroid's norm (scale-free)."""
    centre = rows.mean(0)
    return float((rows - centre).norm(dim=1).mean() / centre.norm().clamp_min(1e-12))


def reference_pool(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """REFERENCE training images drawn (indices, on the images' device) as the pool neighbours come from."""
    return torch.randperm(len(images), generator=generator)[:REFERENCE].to(images.device)


def neighbour_labels(
    images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, pool: torch.Tensor
) -> torch.Tensor:  # fmt: skip
    """The labels (rows, NEIGHBOURS) of the nearest images in pixels to each of `rows` (indices) among the
    training images `pool` (indices), an image never its own neighbour."""
    reference = images[pool].flatten(1).float()
    found = []
    for part in rows.split(1024):
        distances = torch.cdist(images[part].flatten(1).float(), reference)
        distances[part[:, None] == pool[None, :]] = float("inf")
        found.append(labels[pool][distances.topk(min(NEIGHBOURS, len(pool)), largest=False).indices])
    return torch.cat(found)


def neighbour_share(
    images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, target: int, generator: torch.Generator
) -> torch.Tensor:
    """For each of `rows` (indices), the share of its NEIGHBOURS nearest training images in pixels (among a
    random REFERENCE of them, itself excluded) that are labelled `target`."""
    return (neighbour_labels(images, labels, rows, reference_pool(images, generator)) == target).double().mean(1)


def relabel_shares(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Step 3's third test, per class c: the lower quartile, over the other classes d, of the share of d's
    images' NEIGHBOURS nearest training images in pixels (among a random REFERENCE) labelled c (PIXEL_ROWS
    images drawn per class). Natural look-alikes share neighbours with a few classes only; the target of a
    dirty-label attack, whose poisons look like the classes they were drawn from, with nearly every class."""
    pool = reference_pool(images, generator)
    shares = torch.full((num_classes, num_classes), float("nan"), dtype=torch.float64)
    for d in range(num_classes):
        rows = torch.nonzero(labels == d).flatten()
        if len(rows) == 0:
            continue
        rows = rows[torch.randperm(len(rows), generator=generator)[:PIXEL_ROWS].to(rows.device)]
        found = neighbour_labels(images, labels, rows, pool)
        shares[d] = torch.bincount(found.flatten().cpu(), minlength=num_classes)[:num_classes].double() / found.numel()
    out = torch.zeros(num_classes, dtype=torch.float64)
    for c in range(num_classes):
        column = without(shares[:, c], c)
        column = column[~column.isnan()]
        out[c] = float(column.quantile(0.25)) if len(column) else 0.0
    return out


def principal_split(
    every: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, target: int, direction: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float, dict[str, object]]:  # fmt: skip
    """Every image's projection on the `target` images' top principal component (centred on them), signed
    so that the Otsu group the votes name (module docstring, step 4) lies high; the threshold between the
    groups; the votes and what they read. `direction`: the target's perturbation's mean feature change."""
    mine = labels == target
    centre = every[mine].mean(0)
    projection = (every - centre) @ top_direction(every[mine] - centre)
    threshold, _ = otsu(projection[mine])
    groups = (mine & (projection > threshold), mine & (projection <= threshold))
    others = [spread(every[labels == c]) for c in labels.unique().tolist() if c != target and (labels == c).sum() > 1]
    reference = float(torch.tensor(others).median()) if others else 1.0
    spreads = [spread(every[g]) for g in groups]
    offs = [abs(math.log(max(v, 1e-12) / reference)) for v in spreads]
    rows = torch.nonzero(mine).flatten()
    share = neighbour_share(images, labels, rows, target, generator)
    inside = [share[g[mine]].mean().item() for g in groups]
    carried = [float((every[g] @ direction).mean()) for g in groups]
    votes = {  # each names the group (0: high, 1: low) it takes for the poisons
        "perturbation": 0 if carried[0] >= carried[1] else 1,  # it carries more of what delta_t adds
        "spread": 0 if offs[0] >= offs[1] else 1,  # it looks less like a class
        "neighbours": 0 if inside[0] <= inside[1] else 1,  # its images look more like other classes'
    }
    low = sum(votes.values()) >= 2
    if low:
        projection, threshold = -projection, -threshold
    order = (1, 0) if low else (0, 1)
    report = {
        "dissent": [name for name, vote in votes.items() if vote != order[0]],  # votes for the kept group
        "flagged_spread": round(spreads[order[0]], 4),
        "kept_spread": round(spreads[order[1]], 4),
        "class_spread_median": round(reference, 4),
        "flagged_neighbour_share": round(inside[order[0]], 4),
        "kept_neighbour_share": round(inside[order[1]], 4),
    }
    return projection, threshold, report


def named_target(
    rates: torch.Tensor, separations: torch.Tensor, confirm: str, relabels: torch.Tensor | None = None
) -> tuple[int, float, float, bool, str]:  # fmt: skip
    """Step 3 from the classes' success rates, split shares and (`any`) relabelling shares: (the class
    weighed, its rate over the other classes' median, that median, whether it is named, the test that named
    it: reach, split, pixels or '')."""
    cleanest = int(separations.argmax())
    if confirm in ("either", "any"):
        best = int(rates.argmax())
        if rates[best] > 0 and rates[best] >= TARGET_LIFT * runner_up(rates, best):
            return *score_lift(rates, best), True, "reach"
        chosen, lift, median = score_lift(rates, cleanest)
        excess = separations - without(separations, cleanest).median()
        if lift >= TARGET_LIFT and float(excess[cleanest]) >= TARGET_LIFT * runner_up(excess, cleanest):
            return chosen, lift, median, True, "split"
        if confirm == "any" and relabels is not None:
            top = int(relabels.argmax())
            if relabels[top] > 0 and relabels[top] >= TARGET_LIFT * runner_up(relabels, top):
                return *score_lift(rates, top), True, "pixels"
        return chosen, lift, median, False, ""
    chosen, lift, median = score_lift(rates, cleanest if confirm == "reach" else None)
    named = lift >= TARGET_LIFT and (confirm != "split" or chosen == cleanest)
    by = {"split": "reach", "none": "reach", "reach": "split"}[confirm]  # the test the rule's class leads in
    return chosen, lift, median, named, by if named else ""


def runner_up(values: torch.Tensor, best: int) -> float:
    """The highest value of a class other than `best`."""
    return float(without(values, best).max()) if len(values) > 1 else 0.0


@component
class TriggerInversion(Detector):
    name = "inversion"

    budget: float = option(
        4.5, "root-mean-square size of each class's perturbation, pixel units on [0, 255]", "(0, 255]"
    )
    steps: int = option(60, "gradient steps per class", ">= 1")
    batch: int = option(128, "images per step", ">= 1")
    widen: Literal["none", "trigger"] = option(
        "trigger", "widen the flagged set along the pixel trigger estimate (step 5)"
    )
    images: int = option(
        512, "training images (labelled and predicted otherwise) each class's perturbation is fitted on", ">= 1"
    )
    confirm: Literal["none", "split", "reach", "either", "any"] = option(
        "any",
        "the class named (step 3): the best-reached (none); it only where its images also split most cleanly "
        "(split); the one whose images split most cleanly, where it too is reached at >= 2x (reach); the "
        "one that leads the runner-up class 2x in reach, or in split where it too is reached at >= 2x (either); "
        "either's, else the one that leads the runner-up 2x in sharing pixel neighbours with other classes (any)",
    )
    along: Literal["direction", "principal"] = option(
        "principal",
        "the line the named class's images are split along: its perturbation's feature change or "
        "its own top principal component, the side three votes name flagged (step 4)",
    )

    def detect(self, ctx: DetectionContext) -> Detection:
        data, t = ctx.train_set, ctx.trainer
        model = ctx.trained()
        t0 = time.perf_counter()  # the detector's own time, not that of the model it reads
        mode = model.training
        model.eval()

        def forward(images: torch.Tensor) -> torch.Tensor:
            return model(t.normalize(images))

        radius = self.budget * math.sqrt(math.prod(data.image_shape))
        generator = torch.Generator().manual_seed(t.config.seed + 15)
        chunk = t.config.eval_batch_size
        with torch.no_grad():
            predicted = eval_logits(model, data, t.normalize, chunk).argmax(1)
        rates, deltas, samples = [], [], []
        for c in range(data.num_classes):
            others = torch.nonzero((data.labels != c) & (predicted != c)).flatten().cpu()
            chosen = others[torch.randperm(len(others), generator=generator)[: self.images]].to(data.images.device)
            sample = data.images[chosen]
            delta = universal_perturbation(forward, sample, c, radius, self.steps, self.batch, generator)
            with torch.no_grad():
                rates.append(success_rate(forward, sample, delta, c, chunk))
            deltas.append(delta)
            samples.append(sample)
        model.train(mode)
        class_scores = torch.tensor(rates, dtype=torch.float64)
        point = model.insertion_points[-1]

        def read(images: torch.Tensor) -> torch.Tensor:
            return features(model, images, point, t.normalize, batch_size=chunk, amp=t.amp).double()

        every = read(data.images)
        directions = torch.stack([
            (read(stamped(sample, delta)) - read(sample)).mean(0) if len(sample) else torch.zeros_like(every[0])
            for sample, delta in zip(samples, deltas, strict=True)
        ])  # fmt: skip
        projections = every @ directions.T  # (images, classes): each image on every class's direction
        labels = data.labels.to(projections.device)
        splits = [otsu(projections[labels == c, c]) for c in range(data.num_classes)]
        separations = torch.tensor([share for _, share in splits], dtype=torch.float64)
        draw = torch.Generator().manual_seed(t.config.seed + 17)  # apart: `either` draws as before `any` existed
        relabels = relabel_shares(data.images, data.labels, data.num_classes, draw)
        chosen, lift, median, named, named_by = named_target(class_scores, separations, self.confirm, relabels)
        cleanest, best = int(separations.argmax()), int(class_scores.argmax())
        second = runner_up(class_scores, best)
        reached = lift >= TARGET_LIFT
        veto = "" if named or not reached else f"its images split less cleanly than those of {data.classes[cleanest]!r}"
        projection, threshold, spreads = projections[:, chosen], splits[chosen][0], {}
        if named and self.along == "principal":
            projection, threshold, spreads = principal_split(
                every, data.images, labels, chosen, directions[chosen], generator
            )
        flagged = (labels == chosen) & (projection > threshold) & named
        first, separation = int(flagged.sum()), 0.0
        if named and self.widen == "trigger":
            extra, separation = widen(data.images, data.labels, chosen, flagged.to(data.labels.device))
            flagged |= extra.to(flagged.device)
        report = {
            "success_rates": [round(r, 4) for r in rates],
            "estimated_target": chosen if named else None,
            "best_class": best,
            "best_over_runner_up": round(float(class_scores[best]) / second, 3) if second > 0 else None,
            "others_median_rate": round(median, 4),
            "target_lift": round(lift, 3) if math.isfinite(lift) else None,  # None: no other class was reached
            "split_shares": [round(float(v), 4) for v in separations],
            "cleanest_split": cleanest,
            "relabel_shares": [round(float(v), 4) for v in relabels],
            "named_by": named_by or None,
            "first_flagged": first,
            **spreads,
            "widen_separation": round(separation, 4),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        scores = flagged_first(within_class_z(projection, labels), flagged)
        evidence = "share of the other classes' images a universal perturbation of the budget sends to the class"
        if named_by == "pixels":  # the scan weighs the class by the test that named it
            class_scores = relabels
            evidence = (
                "lower quartile over the other classes of the share of their images' pixel neighbours labelled it"
            )
        return Detection(
            scores.cpu(),
            torch.nonzero(flagged).flatten().cpu(),
            report,
            class_scores,
            evidence,
            veto=veto,
            candidate=chosen,
        )
