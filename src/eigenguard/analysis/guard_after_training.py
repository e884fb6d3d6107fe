"""EigenGuard put into a model trained without it, at test time only: does the filter by itself remove a
backdoor the weights have learned?

The run's trained model gets a guard at its insertion point after training (`guard`), with nothing
retrained. Its history His is filled as training would fill it, but without a gradient or any change to
the weights or BatchNorm statistics: the guard alone in training mode, batches of the run's batch size
from the first `history_images` images of the training split, the run's poison rate of them triggered
(the poisoned training set itself is not rebuilt; its clean images and the trigger are what His sees).
Then ACC and ASR under both inference protocols, beside the model's own without the guard.
docs/results/eigenguard-study.md uses it to separate what the filter does at inference from what training
with it does.
"""

from pathlib import Path
from typing import Any

import torch

from eigenguard.analysis.run_loading import load_run, poison_step, poisoned_share
from eigenguard.config import DEFENSE_NONE
from eigenguard.data import load_dataset
from eigenguard.errors import EigenguardError
from eigenguard.guard import guard
from eigenguard.training.evaluate import evaluate_protocols


@torch.no_grad()
def guard_after_training(
    run_dir: str | Path,
    *,
    at: str = "stage1",
    k: int = 20,
    momentum: float = 0.7,
    history_images: int = 5120,
    device: str = "cpu",
) -> dict[str, Any]:
    run = load_run(run_dir, device)
    if run.config.defense.name != DEFENSE_NONE or run.attack is None:
        raise EigenguardError(
            f"run '{run_dir}' must be an attacked run without a defense (attack: {run.config.attack.name}, "
            f"defense: {run.config.defense.name})"
        )
    if history_images < run.config.batch_size:
        raise EigenguardError(
            f"history_images {history_images} must be >= the run's batch size {run.config.batch_size}"
        )
    model, cfg = run.model.eval(), run.config
    asr_set = run.attack.asr_test_set(run.test)
    protocols = {"eval_batch_size": cfg.eval_batch_size, "paper_batch_size": cfg.batch_size}
    plain = evaluate_protocols(model, [], run.test, asr_set, run.normalize, **protocols)
    module = guard(model, at=at, k=k, momentum=momentum).to(run.device)
    train_split, _ = load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.image_size)
    images = train_split.images[:history_images].to(run.device)
    step = poison_step(len(images), poisoned_share(run))
    images[::step] = run.attack.apply(images[::step])
    module.train()  # only the guard: it updates His, the weights and BatchNorm stay as trained
    for start in range(0, len(images) - cfg.batch_size + 1, cfg.batch_size):
        model.features(run.normalize(images[start : start + cfg.batch_size]), at)
    module.eval()
    guarded = evaluate_protocols(model, [module], run.test, asr_set, run.normalize, **protocols)
    return {
        "run": str(run_dir),
        "attack": cfg.attack.name,
        "guard": {"at": at, "k": k, "momentum": momentum, "history_images": len(images), "triggered_every": step},
        "without_guard": plain,
        "with_test_time_guard": guarded,
    }
