"""Lesson 1: broadcast, all-reduce, reduce-scatter and all-gather built from dist.send/recv only,
each counting the bytes it moves, checked against torch.distributed."""

from distid.primitives.meter import ByteMeter
from distid.primitives.naive import naive_all_reduce
from distid.primitives.ring import chunk_bounds, ring_all_gather, ring_all_reduce, ring_reduce_scatter
from distid.primitives.tree import tree_broadcast

__all__ = [
    "ByteMeter", "chunk_bounds", "naive_all_reduce", "ring_all_gather", "ring_all_reduce",
    "ring_reduce_scatter", "tree_broadcast",
]
