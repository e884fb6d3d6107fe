"""EigenGuard: the spectral-filter defense of the paper, as a drop-in module."""

from eigenguard.guard.insert import find_guards, guard
from eigenguard.guard.module import EigenGuard, GuardOptions, inference_mode
from eigenguard.guard.spectral_filter import filter_each_against, filter_rows_gram, filter_rows_svd

__all__ = [
    "EigenGuard",
    "GuardOptions",
    "filter_each_against",
    "filter_rows_gram",
    "filter_rows_svd",
    "find_guards",
    "guard",
    "inference_mode",
]
