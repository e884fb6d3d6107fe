"""Decoding image files (PPM, PNG, JPEG, ...) into one uint8 (N, 3, S, S) tensor with PIL."""

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eigenguard.data.sources import one_line
from eigenguard.errors import EigenguardError

MAX_DECODE_THREADS = 8


def open_image(path: Path, mode: str) -> tuple[Image.Image, int]:
    """The image at `path` converted to PIL mode `mode`, and how many bands the file had; a file PIL cannot
    decode is one EigenguardError."""
    try:
        with Image.open(path) as image:
            return image.convert(mode), len(image.getbands())
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise EigenguardError(f"cannot decode image {path}: {one_line(exc) or type(exc).__name__}") from None


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image as RGB uint8 (size, size, 3), resized with antialiased bilinear filtering when needed."""
    rgb, _ = open_image(path, "RGB")
    if rgb.size != (size, size):
        # Pillow's bilinear filter widens its support when shrinking, i.e. it antialiases.
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_images(paths: Sequence[Path], size: int) -> torch.Tensor:
    """Decode every file in `paths` (a few threads; PIL releases the GIL while decoding and resizing)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def fill(index: int) -> None:
        out[index] = decode_image(paths[index], size)

    workers = max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1))
    if len(paths) < 64 or workers == 1:
        for index in range(len(paths)):
            fill(index)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(fill, range(len(paths))):
                pass
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
