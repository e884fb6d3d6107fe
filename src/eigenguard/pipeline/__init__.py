"""The end-to-end run on top of the core, attacks and defenses: check the config against what exists
(components.py), load and poison the data (prepare.py), provide the backdoored model a defense repairs
(backdoored.py, its cache), let the defense train, measure, and write the run directory (run.py)."""

from eigenguard.pipeline.components import resolve
from eigenguard.pipeline.run import RunResult, train

__all__ = ["RunResult", "resolve", "train"]
