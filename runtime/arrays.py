"""Read CLIP embeddings from outside files (``clipcap caption --embeddings``), torch-free.

Accepted: a ``.npy`` array [N, D] (or [D] for one image), and this project's embedding sets (a
folder written by ``clipcap embed``, or its ``embeddings.safetensors``, tensor ``image_embeds``).
Headers are checked against the file's size before anything is allocated, so a header claiming
1e9 rows is refused instead of allocating 238 GiB; pickles are never loaded; only real floating
dtypes (float16/32/64) are accepted, and NaN/Inf rows are refused by row number. Every failure is
one :class:`DataError` naming the file and saying what is accepted.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

import numpy as np

from clipcap.errors import ClipCapError, DataError

__all__ = ["ACCEPTED", "check_embeddings", "read_embeddings"]

ACCEPTED = (
    "a .npy float array [N, D], an embedding set folder from `clipcap embed`, or its embeddings.safetensors"
)
EMBEDS_FILE = "embeddings.safetensors"  # as clipcap/data/embeddings.py writes it
TENSOR_NAME = "image_embeds"
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
_MAX_HEADER = 100 << 20  # safetensors' own limit for its JSON header


def read_embeddings(path: str | os.PathLike[str]) -> np.ndarray:
    """The float32 embeddings [N, D] in ``path`` (see the module docstring for what is accepted).

    Raises DataError for anything else: a missing or special file, a bad header, a header that
    does not match the file size, a non-float dtype, a scalar or empty array, NaN or Inf values.
    """
    path = Path(path)
    if path.is_dir():
        path = path / EMBEDS_FILE
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise DataError(f"{path}: the file is empty (0 bytes); pass {ACCEPTED}")
        magic = f.read(6)
        f.seek(0)
        if magic == b"\x93NUMPY":
            array = _read_npy(f, path, size)
        elif path.suffix == ".safetensors" or magic[:1] != b"\x93":
            array = _read_safetensors(f, path, size)
        else:
            raise DataError(f"{path}: not a readable embeddings file; pass {ACCEPTED}")
    if array.ndim == 1:
        array = array[None, :]
    return check_embeddings(array, str(path))


def check_embeddings(
    array: Any, name: str, dim: int | None = None, error: type[ClipCapError] = DataError
) -> np.ndarray:
    """``array`` as float32 [N, D], refused (``error``: DataError for a file, OptionsError for an
    argument) unless it is a finite float array."""
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise error(f"{name}: dtype {array.dtype} is not a float array; pass float32 CLIP embeddings")
    if array.ndim != 2 or (dim is not None and array.shape[1] != dim) or array.shape[1] == 0:
        want = f"[batch, {dim}]" if dim is not None else "[N, D]"
        raise error(f"{name}: embeddings must have shape {want}, got {list(array.shape)}")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        rows = ", ".join(map(str, bad[:10])) + (", ..." if bad.size > 10 else "")
        raise error(f"{name}: rows {rows} hold NaN or Inf values; recompute those embeddings")
    return array.astype(np.float32, copy=False)


def _open_regular(path: Path):
    """Open only a regular file, without blocking on a FIFO swapped in after the check."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; pass {ACCEPTED}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{path}: not a regular file (a device, pipe or socket); pass {ACCEPTED}")
    return os.fdopen(fd, "rb")


def _read_npy(f, path: Path, size: int) -> np.ndarray:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, OSError, TypeError) as e:
        raise DataError(f"{path}: not a readable .npy header ({e}); pass {ACCEPTED}") from None
    if dtype.hasobject or dtype.kind != "f":
        raise DataError(f"{path}: dtype {dtype} is not a float array; pass float32 CLIP embeddings")
    if len(shape) not in (1, 2):
        raise DataError(f"{path}: embeddings must have shape [N, D] (or [D]), got {list(shape)}")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed != size - f.tell():
        raise DataError(
            f"{path}: the header says {list(shape)} {dtype} ({needed} bytes) but the file holds "
            f"{size - f.tell()} bytes of data: truncated or corrupt"
        )
    data = np.frombuffer(f.read(needed), dtype=dtype)
    return data.reshape(shape, order="F" if fortran else "C")


def _read_safetensors(f, path: Path, size: int) -> np.ndarray:
    def bad(problem: str) -> DataError:
        return DataError(f"{path}: not a readable safetensors embedding set ({problem}); pass {ACCEPTED}")

    if size < 8:
        raise bad("shorter than its header")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(_MAX_HEADER, size - 8):
        raise bad(f"a header of {n} bytes in a file of {size}")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"header: {e}") from None
    entry = header.get(TENSOR_NAME) if isinstance(header, dict) else None
    if not isinstance(entry, dict):
        raise bad(f"no {TENSOR_NAME!r} tensor")
    dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if dtype is None:
        raise DataError(
            f"{path}: dtype {entry.get('dtype')!r} is not a float tensor; pass float CLIP embeddings"
        )
    if not (_ints(shape) and len(shape) in (1, 2) and _ints(offsets) and len(offsets) == 2):
        raise bad(f"shape {shape!r} / data_offsets {offsets!r}")
    start, end = offsets
    needed = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if not 0 <= start <= end <= size - 8 - n or end - start != needed:
        raise bad(f"{list(shape)} {np.dtype(dtype)} needs {needed} bytes, the offsets give {end - start}")
    f.seek(8 + n + start)
    return np.frombuffer(f.read(needed), dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    )
