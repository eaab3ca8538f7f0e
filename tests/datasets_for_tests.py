"""Real MNIST when its files are present (DISTID_DATA, default ./data), else a small synthetic split."""

import os
from pathlib import Path

import numpy as np

from distid.data import Split, load_split

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = os.environ.get("DISTID_DATA", str(REPO / "data"))


def have_mnist(root: str = DATA_ROOT, folder: str = "MNIST") -> bool:
    return all((Path(root) / folder / "raw" / f).exists()
               for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"))


def have_dataset(name: str, root: str = DATA_ROOT) -> bool:
    """The training files of 'mnist' or 'fashion-mnist' are in ROOT (torchvision layout)."""
    return have_mnist(root, {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name])


def synthetic_split(n: int = 600, seed: int = 0) -> Split:
    """Random 28×28 uint8 images whose label is the brightest of 10 horizontal bands."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = images[:, :20].reshape(n, 10, -1).astype(np.int64).sum(-1).argmax(1).astype(np.uint8)
    return Split(images, labels, name="synthetic")


def train_split(root: str | None = DATA_ROOT) -> Split:
    return load_split("mnist", root, "train") if root and have_mnist(root) else synthetic_split()
