"""IDX file format (LeCun's MNIST container): parse, memory-map, write, hash.

Layout: 2 zero bytes, 1 dtype code, 1 ndim byte, ndim big-endian uint32 dims,
then prod(dims) items, big-endian, row-major.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np

# dtype code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("=").str[1:]: code for code, dt in IDX_DTYPES.items()}


def _parse_header(head: bytes, total: int, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, shape, header_size) from the first bytes of an IDX file of `total` bytes."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES:
        raise ValueError(f"{name}: not an IDX file (bad magic {head[:4].hex() or 'empty'})")
    dtype, ndim = IDX_DTYPES[head[2]], head[3]
    header = 4 + 4 * ndim
    if len(head) < header:
        raise ValueError(f"{name}: truncated IDX header ({total} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", head[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if total != expected:
        raise ValueError(
            f"{name}: IDX size mismatch: shape {shape} {dtype} needs {expected} bytes, file has {total}"
        )
    return dtype, tuple(shape), header


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Memory-map an uncompressed IDX file (read-only); `.gz` files are decompressed into memory.

    Returns an array of shape `dims` (e.g. [N,28,28] uint8 images, [N] uint8 labels);
    multi-byte dtypes stay big-endian.
    """
    path = Path(path)
    if path.suffix == ".gz":
        return parse_idx_bytes(gzip_bytes(path), str(path))
    total = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4 + 4 * 255)
    dtype, shape, header = _parse_header(head, total, str(path))
    if 0 in shape:  # np.memmap refuses zero-length maps
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=header, shape=shape)


def parse_idx_bytes(buf: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse a whole IDX file held in memory; returns a read-only array of shape `dims`."""
    dtype, shape, header = _parse_header(buf[: 4 + 4 * 255], len(buf), name)
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)


def gzip_bytes(path: str | os.PathLike) -> bytes:
    """Decompressed content of a gzip file; a corrupt archive raises ValueError naming it."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot decompress: {e}") from e


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write `array` (uint8/int8/int16/int32/float32/float64, any shape) as an IDX file."""
    array = np.asarray(array)
    key = array.dtype.newbyteorder("=").str[1:]
    if key not in _CODES:
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX code")
    code = _CODES[key]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes())
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (as stored; see `sha256_idx` for `.gz`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_idx(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the *uncompressed* IDX bytes of a plain or `.gz` file."""
    if Path(path).suffix != ".gz":
        return sha256_file(path)
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot decompress: {e}") from e
    return h.hexdigest()
