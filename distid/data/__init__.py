"""MNIST / Fashion-MNIST from raw IDX files: fetch with checksums, memory-map, and shard
deterministic batches across ranks (no torchvision, no dataset hub)."""

from .checksum import ChecksumError
from .datasets import Split, load_split
from .fetch import DATASETS, FetchError, fetch
from .idx import read_idx, write_idx

__all__ = [
    "fetch", "load_split", "Split", "ShardedLoader", "ChecksumError", "FetchError",
    "read_idx", "write_idx", "DATASETS", "DataError", "load_splits",
]


def __getattr__(name: str):
    """Import ShardedLoader (and torch) only when used, so the fetch CLI starts fast."""
    if name == "ShardedLoader":
        from .loader import ShardedLoader

        return ShardedLoader
    if name in ("DataError", "load_splits"):  # torch.distributed: only for the runs that need it
        from . import splits

        return getattr(splits, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
