"""Data parallelism from first principles (lesson 2: by hand, against PyTorch's DDP), the DDP and
FSDP2 wrappers the strategies use, and the checks that ranks built and hold the same model."""

from distid.parallel.ddp import wrap_ddp
from distid.parallel.hand_dp import HandDataParallel

__all__ = ["HandDataParallel", "wrap_ddp"]
