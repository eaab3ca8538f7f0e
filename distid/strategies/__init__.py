"""The ways of keeping replicas together, one file each, chosen once from `dist.strategy`:

    none       single.py     one process, nothing synchronised
    ddp        ddp.py        DistributedDataParallel: every gradient all-reduced, or compressed by a hook (hooks.py)
    fsdp       fsdp.py       FSDP2: parameters sharded, gathered per layer, gradients reduce-scattered
    local_sgd  local_sgd.py  H local steps, then one all-reduce of the pseudo-gradient and an outer step (DiLoCo)
    streaming_diloco  streaming_diloco.py  DiLoCo a fragment at a time, staggered, each all-reduce overlapping τ steps
    sparse_loco       sparse_loco.py       DiLoCo whose pseudo-gradient is a 2-bit top-k with error feedback (all-gather)
    demo              demo.py              DeMo: each rank's momentum, its top-k DCT components all-gathered, sign descent

or any `Strategy` subclass outside distid, named by import path ("package.module:Class").
The interface and how strategies compose: base.py.
"""

from distid.strategies.base import Strategy, choose

__all__ = ["Strategy", "choose"]
