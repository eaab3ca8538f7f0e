"""Deterministic, rank-sharded mini-batches over a Split, independent of world size.

Epoch e draws one permutation from the generator keyed by (seed, "data order", e) (the same on
every rank); global batch k is perm[k*B:(k+1)*B] and rank r takes its r-th contiguous piece.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from distid import runtime

from .datasets import Split


class ShardedLoader:
    """Yield (x float32 [b,1,H,W] or [b,H*W], y int64 [b]) for this rank, b = B/world_size.

    drop_last=False keeps the final partial global batch, split np.array_split-style (a rank
    may get b=0). Iterating resumes at the saved position; finishing an epoch advances it.
    """

    def __init__(
        self,
        split: Split,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        flatten: bool = False,
        normalize: tuple[float, float] | None = None,
    ):
        if global_batch <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad global_batch={global_batch}, rank={rank}, world_size={world_size}")
        if global_batch % world_size != 0:
            raise ValueError(
                f"global_batch={global_batch} is not divisible by world_size={world_size}; "
                f"pick a multiple of {world_size} so every rank gets the same local batch"
            )
        self.split, self.global_batch, self.rank, self.world_size = split, global_batch, rank, world_size
        self.seed, self.shuffle, self.drop_last, self.flatten = seed, shuffle, drop_last, flatten
        self.mean, self.std = normalize if normalize is not None else split.normalize
        self.epoch, self.next_batch = 0, 0
        self.num_samples = len(split)
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def local_batch(self) -> int:
        """Per-rank batch size B / world_size."""
        return self.global_batch // self.world_size

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        n, b = self.num_samples, self.global_batch
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Switch to `epoch` from its first batch; a no-op for the current epoch (keeps a resume)."""
        if epoch != self.epoch:
            self.epoch, self.next_batch = epoch, 0

    def permutation(self, epoch: int | None = None) -> np.ndarray:
        """Order of all N sample indices in `epoch` (int64 [N]); identity if shuffle=False."""
        epoch = self.epoch if epoch is None else epoch
        if self._perm is None or self._perm[0] != epoch:
            n = self.num_samples
            if self.shuffle:
                g = runtime.generator(self.seed, "data order", epoch)
                perm = torch.randperm(n, generator=g).numpy()
            else:
                perm = np.arange(n, dtype=np.int64)
            self._perm = (epoch, perm)
        return self._perm[1]

    def global_batch_indices(self, k: int, epoch: int | None = None) -> np.ndarray:
        """Sample indices of global batch k (int64 [<=B]), identical for every world size."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range 0..{len(self) - 1}")
        return self.permutation(epoch)[k * self.global_batch : (k + 1) * self.global_batch]

    def batch_indices(self, k: int, epoch: int | None = None) -> np.ndarray:
        """This rank's contiguous piece of global batch k (int64 [B/n], fewer in a partial batch)."""
        return np.array_split(self.global_batch_indices(k, epoch), self.world_size)[self.rank]

    def collate(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather samples `idx` (one vectorised read, sorted for locality) and normalise."""
        order = np.argsort(idx, kind="stable")
        images = np.empty((len(idx), *self.split.images.shape[1:]), dtype=np.uint8)
        labels = np.empty(len(idx), dtype=np.int64)
        images[order] = self.split.images[idx[order]]
        labels[order] = self.split.labels[idx[order]]
        x = torch.from_numpy(images).to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        x = x.reshape(len(idx), -1) if self.flatten else x.unsqueeze(1)
        return x, torch.from_numpy(labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's batches from `next_batch` to the end of the current epoch."""
        while self.next_batch < len(self):
            k = self.next_batch
            self.next_batch = k + 1  # a checkpoint taken after using batch k resumes at k+1
            yield self.collate(self.batch_indices(k))
        self.epoch, self.next_batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """Position to resume from: epoch, next global batch index, and the settings it depends on."""
        return {"epoch": self.epoch, "next_batch": self.next_batch, "seed": self.seed,
                "global_batch": self.global_batch, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by state_dict() (any world size; same seed/batch/data)."""
        for key, mine in (("seed", self.seed), ("global_batch", self.global_batch),
                          ("num_samples", self.num_samples)):
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]}, this loader has {mine}")
        self.epoch, self.next_batch = int(state["epoch"]), int(state["next_batch"])
