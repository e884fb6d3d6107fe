"""Learning-rate schedules as per-step multipliers of the peak lr (for torch's LambdaLR).

All three start with an optional linear warm-up from 0. After it:
- cosine: half a cosine from 1 down to 0 at the last step (default of both profiles);
- multistep: x0.1 at 50% and again at 75% of training (the classic CIFAR step schedule);
- constant: stays at 1.
"""

import math
from collections.abc import Callable


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    total_steps = max(total_steps, 1)
    warmup_steps = min(max(warmup_steps, 0), total_steps - 1)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "multistep":
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        if schedule == "constant":
            return 1.0
        raise ValueError(f"unknown schedule '{schedule}'; allowed: cosine, multistep, constant")

    return multiplier
