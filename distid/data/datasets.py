"""Load one split of MNIST / Fashion-MNIST from raw IDX files as memory-mapped numpy arrays."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checksum import verify_file
from .fetch import fetch, find_idx, get_spec, raw_dir
from .idx import read_idx

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Split:
    """One split: images uint8 [N,H,W] (memmap for plain files), labels uint8 [N].

    `normalize` = (mean, std) of pixels scaled to [0,1], the loader's default.
    """

    images: np.ndarray
    labels: np.ndarray
    name: str = "mnist"
    split: str = "train"
    normalize: tuple[float, float] = (0.1307, 0.3081)

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.labels.ndim != 1:
            raise ValueError(f"images must be [N,H,W], labels [N]; got {self.images.shape}, {self.labels.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def only(self, classes: list[int]) -> "Split":
        """The samples whose label is in `classes` (a copy; [] = all), labels unchanged."""
        if not classes:
            return self
        keep = np.isin(self.labels, classes)
        if not keep.any():
            raise ValueError(f"no {self.name} {self.split} sample has a label in {classes}")
        return Split(np.ascontiguousarray(self.images[keep]), np.ascontiguousarray(self.labels[keep]),
                     self.name, self.split, self.normalize)


def _locate(name: str, root: Path, files: tuple[str, ...]) -> list[Path] | None:
    """Paths of `files` in ROOT/<Folder>/raw/ or directly in ROOT, whichever has them all."""
    for folder in (raw_dir(name, root), root):
        paths = [find_idx(folder, f) for f in files]
        if all(paths):
            return paths  # type: ignore[return-value]
    return None


def _load(path: Path, expected: str | None, ndim: int) -> np.ndarray:
    """Verify (if `expected`) and read one IDX file; must be uint8 with `ndim` dims."""
    if expected is not None:
        verify_file(path, expected, source="load_split")
    arr = read_idx(path)
    if arr.dtype != np.uint8 or arr.ndim != ndim:
        raise ValueError(f"{path}: expected uint8 with {ndim} dims, got {arr.dtype} {arr.shape}")
    return arr


def load_split(
    name: str,
    root: str | os.PathLike = "data",
    split: str = "train",
    fetch_if_missing: bool = False,
    verify: bool = True,
) -> Split:
    """Load `split` ('train' | 'test') of `name` ('mnist' | 'fashion-mnist').

    root: a folder with <Folder>/raw/ inside (torchvision layout) or holding the four files
    itself (plain or .gz). verify=False skips the SHA-256 check (for your own IDX data).
    Returns Split(images uint8 [N,28,28], labels uint8 [N]).
    """
    spec = get_spec(name)
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    files, root = SPLIT_FILES[split], Path(root)
    paths = _locate(spec.name, root, files)
    if paths is None and fetch_if_missing:
        fetch(spec.name, root, verify=verify)
        paths = _locate(spec.name, root, files)
    if paths is None:
        raise FileNotFoundError(
            f"{spec.name} {split} files {files} not found in {raw_dir(spec.name, root)} or {root}; "
            f"run `python -m distid.data fetch {spec.name} --root {root}` or pass fetch_if_missing=True"
        )
    sha = [spec.sha256[f] if verify else None for f in files]
    images, labels = _load(paths[0], sha[0], 3), _load(paths[1], sha[1], 1)
    return Split(images, labels, spec.name, split, (spec.mean, spec.std))
