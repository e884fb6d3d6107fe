"""A restricted unpickler for the CIFAR python-format batches: numpy arrays and plain containers only.

`pickle.load` on an untrusted file can run arbitrary code, because a pickle may name any importable callable
(os.system, builtins.eval, ...) and call it. `SafeUnpickler.find_class` resolves only an allow-list of globals
that cannot execute code, so a malicious file fails with `EigenguardError` before anything it names is called.
"""

import _codecs
import builtins
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from eigenguard.errors import EigenguardError

try:  # numpy >= 2 keeps the implementation in numpy._core; numpy.core is a deprecated alias.
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]


def _encode_latin1(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for `_codecs.encode`, which protocol-2 pickles written by Python 3 use to rebuild `bytes`.

    The real function accepts any registered codec; only the text codecs such pickles use are allowed.
    """
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in {"latin1", "latin-1"}:
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return _codecs.encode(text, encoding, errors)


def _container_globals(module: str) -> dict[tuple[str, str], Any]:
    names = ("bytes", "bytearray", "dict", "list", "tuple", "set", "frozenset")
    return {(module, name): getattr(builtins, name) for name in names}


# Python 2 pickles (the CIFAR files were written by cPickle) name builtins `__builtin__.*`.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode_latin1,
    **_container_globals("builtins"),
    **_container_globals("__builtin__"),
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in `ALLOWED_GLOBALS` and refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise EigenguardError(
                f"refusing to unpickle global '{module}.{name}': only numpy arrays and plain containers "
                "are allowed in dataset files"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not supported")


def safe_load_pickle(path: str | Path) -> object:
    """Unpickle `path` with `SafeUnpickler` (encoding="bytes", as the Python 2 CIFAR files need).

    Strings pickled by Python 2 come back as `bytes` (so CIFAR dict keys are bytes). A refused global, a
    truncated or malformed file, or an unreadable path raises `EigenguardError` naming the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return SafeUnpickler(handle, encoding="bytes").load()
    except EigenguardError as exc:
        raise EigenguardError(f"{path}: {exc}") from None
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
    ) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise EigenguardError(f"cannot read pickle file {path}: {detail}") from None
