"""Three cues to a backdoor's class that need no perturbation, per class, on a setting whose no-defense model
is in the cache (trigger inversion's `either` names nothing on Input-aware's seed 1: would one have named it?).

    python benchmarks/naming_cues.py input-aware 1 [none 0 ...]

- principal split: how cleanly a class's images split in two (Otsu's between-group share, detectors/
  refusals.py) along their own top principal component of the model's last-stage features, the line
  trigger inversion splits a named class along; for the target, the AUROC of that line for its poisons;
- pixel neighbours: the share of a class's images' 10 nearest training images in pixels (among 4,096
  drawn) labelled otherwise (a dirty-label poison looks like the class it came from);
- relabelling shares (`confirm: any`'s third test, detectors/inversion.py): the lower quartile over the other
  classes of the share of their images' pixel neighbours labelled the class, drawn as the detector draws.
For each cue the class that leads, and its lead over the runner-up class. Quick profile, CPU.
"""

import argparse

import torch
from rich.console import Console

from eigenguard.config import make_config
from eigenguard.defenses.base import auroc
from eigenguard.detectors.base import without
from eigenguard.detectors.inversion import neighbour_share, relabel_shares
from eigenguard.detectors.refusals import otsu
from eigenguard.detectors.spectral import top_direction
from eigenguard.errors import EigenguardError
from eigenguard.pipeline.backdoored import backdoored_entry, load_or_train_backdoored
from eigenguard.pipeline.components import resolve
from eigenguard.pipeline.prepare import prepare_data
from eigenguard.training.features import features
from eigenguard.training.trainer import Trainer


def leader(values: list[float]) -> str:
    t = torch.tensor(values)
    best = int(t.argmax())
    lead = values[best] / float(without(t, best).max())
    return f"class {best} leads at {values[best]:.3f}, {lead:.2f}x the runner-up"


def cues(attack: str, seed: int, relabel_only: bool) -> str:
    config = resolve(make_config({"profile": "quick", "dataset": "fashion-mnist", "attack": attack, "seed": seed}))
    device = torch.device("cpu")
    data = prepare_data(config, device, needs_clean_pool=False, say=lambda line: None)
    train = data.train_set
    relabels = relabel_shares(train.images, train.labels, train.num_classes, torch.Generator().manual_seed(seed + 17))
    shares_line = f"  relabelling shares {[round(float(v), 4) for v in relabels]}: {leader(relabels.tolist())}"
    if relabel_only:
        return f"{attack}, seed {seed} ({len(data.poison_indices)} poisons):\n{shares_line}"
    trainer = Trainer(config, device, data.normalize, data.flip, data.test, data.asr_set, console=Console(quiet=True))

    def not_cached(*_: object) -> None:
        raise EigenguardError(f"no cached no-defense model of {attack}, seed {seed}: run its cell first")

    entry = backdoored_entry(config, data.train_set, device)
    model, metrics, _ = load_or_train_backdoored(config, entry, device, trainer.new_model(), not_cached)
    model.eval()
    every = features(model, train.images, model.insertion_points[-1], trainer.normalize, batch_size=512, amp=False)
    poison = torch.zeros(len(train), dtype=torch.bool)
    poison[data.poison_indices] = True
    generator = torch.Generator().manual_seed(0)
    shares, disagree, lines = [], [], []
    for c in range(train.num_classes):
        rows = torch.nonzero(train.labels == c).flatten()
        centred = every[rows].double() - every[rows].double().mean(0)
        line = centred @ top_direction(centred)
        shares.append(float(otsu(line)[1]))
        disagree.append(1 - float(neighbour_share(train.images, train.labels, rows, c, generator).mean()))
        if poison[rows].any():
            score = auroc(line, torch.nonzero(poison[rows]).flatten())
            assert score is not None  # both poisons and clean images in the class
            count = f"{int(poison[rows].sum())} poisons of {len(rows)}"
            lines.append(f"  class {c}: {count}, AUROC of its principal line {max(score, 1 - score):.3f}")
    asr = metrics.get("asr")
    return "\n".join([
        f"{attack}, seed {seed} (no-defense ASR {'-' if asr is None else f'{asr:.3f}'}):",
        f"  principal split shares {[round(v, 3) for v in shares]}: {leader(shares)}",
        f"  pixel-neighbour disagreement {[round(v, 3) for v in disagree]}: {leader(disagree)}",
        shares_line,
        *lines,
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="ATTACK SEED, repeated")
    parser.add_argument("--relabel-only", action="store_true", help="the relabelling shares alone (no model)")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give ATTACK SEED pairs")
    for attack, seed in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        print(cues(attack, int(seed), args.relabel_only), flush=True)


if __name__ == "__main__":
    main()
