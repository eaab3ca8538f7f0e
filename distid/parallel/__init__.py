"""Parallelism strategies, one per file: data parallel by hand (lesson 2), DDP (and FSDP2 later)."""

from distid.parallel.ddp import wrap_ddp
from distid.parallel.hand_dp import HandDataParallel

__all__ = ["HandDataParallel", "wrap_ddp"]
