"""A reader for the IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.

Layout: two zero bytes, a data-type code (0x08 = unsigned byte), the number of dimensions, then one big-endian
uint32 per dimension, then the payload in C order.
"""

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from eigenguard.errors import EigenguardError

GZIP_MAGIC = b"\x1f\x8b"
UINT8_CODE = 0x08
MAX_DIMS = 8


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        if raw[:2] == GZIP_MAGIC:
            return gzip.decompress(raw)
        return raw
    except FileNotFoundError:
        raise EigenguardError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError, zlib.error) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise EigenguardError(f"cannot read IDX file {path}: {detail}") from None


def read_idx(path: str | Path) -> torch.Tensor:
    """Parse an IDX file of unsigned bytes into a uint8 tensor shaped by its header.

    A `.gz` file (recognised by its content, not its name) is decompressed first. A wrong magic number, an
    unsupported data type, or a payload whose length does not match the header raises `EigenguardError`.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise EigenguardError(f"IDX file {path} is truncated: {len(data)} bytes, no complete header")
    if data[0] != 0 or data[1] != 0:
        raise EigenguardError(f"IDX file {path} has a bad magic number 0x{data[:4].hex()}: not an IDX file")
    code, ndim = data[2], data[3]
    if code != UINT8_CODE:
        raise EigenguardError(f"IDX file {path} has data type 0x{code:02x}; only 0x08 (unsigned byte) is supported")
    if not 1 <= ndim <= MAX_DIMS:
        raise EigenguardError(f"IDX file {path} declares {ndim} dimensions; expected 1 to {MAX_DIMS}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise EigenguardError(f"IDX file {path} is truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(data) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "longer than its header says"
        raise EigenguardError(
            f"IDX file {path} is {problem}: header {dims} needs {expected} payload bytes, found {actual}"
        )
    array = np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)
    return torch.from_numpy(array.copy())
