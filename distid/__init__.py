"""distid: train in a random subspace (θ = θ₀ + P·d) or with LoRA, under DDP and FSDP,
measure what it costs, and learn the collectives underneath from send/recv."""

__version__ = "0.1.0"

import os as _os

# Back large CPU tensors (≥ 2 MiB) with transparent huge pages: a fresh θ, gradient or P·d of 10⁷
# floats then costs ~5× fewer page faults (measured: 31 → 11 ms for a new 40 MB tensor on the
# Intel Xeon). torch reads it once, at its first CPU allocation, so it acts when distid is imported
# before any tensor exists, as in every `python -m distid.…` entry; THP_MEM_ALLOC_ENABLE=0 turns it off.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
