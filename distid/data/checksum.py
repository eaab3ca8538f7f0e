"""SHA-256 verification of IDX files, cached per process by (path, mtime, size)."""

from __future__ import annotations

import os
from pathlib import Path

from .idx import sha256_idx

_CACHE: dict[tuple[str, int, int], str] = {}


class ChecksumError(ValueError):
    """A file's uncompressed SHA-256 is not the published one; the file is never used."""

    def __init__(self, file: str | os.PathLike, source: str, expected: str, actual: str):
        self.file, self.source, self.expected, self.actual = str(file), source, expected, actual
        super().__init__(
            f"checksum mismatch for {file} (from {source}): expected sha256 {expected}, got {actual}"
        )


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def remember(path: str | os.PathLike, digest: str) -> None:
    """Record that `path` (as it is now on disk) hashes to `digest`."""
    _CACHE[_key(Path(path))] = digest


def cached_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the uncompressed IDX bytes of `path` (plain or .gz); hashed once per version."""
    key = _key(Path(path))
    if key not in _CACHE:
        _CACHE[key] = sha256_idx(path)
    return _CACHE[key]


def verify_file(path: str | os.PathLike, expected: str, source: str = "local") -> None:
    """Raise ChecksumError naming `path` and `source` unless its hash equals `expected`."""
    actual = cached_sha256(path)
    if actual != expected:
        raise ChecksumError(path, source, expected, actual)


def clear_cache() -> None:
    """Forget all cached hashes (tests)."""
    _CACHE.clear()
