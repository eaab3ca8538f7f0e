"""Bytes a network interface really carried, as the OS counts them (psutil's per-NIC counters):
the third byte figure, beside the ledger's wire and payload figures.

    window = InterfaceWindow("lo")
    window.start(); ...collectives...; per_rank = window.stop(repeats)   # every rank calls both

The counters are the host's: every local rank's traffic, and anything else on the interface. So
a window is fenced by barriers (every local rank inside it), the count is divided by the local
ranks, and an idle window of the same length, fenced by the same barriers, is measured right after
and subtracted: what other processes send at that rate and the fences' own bytes cancel. What is
left differs from the wire figure where the backend does: TCP/IP headers (≈ 0.1 % on loopback's
64 kB segments), a per-message header and acknowledgement (large for messages of a few kB), and
gloo's own algorithms — its reduce-scatter is an all-reduce followed by a copy, 2(N−1)/N·S, twice
the ring's (N−1)/N·S. On loopback a byte sent is also a byte received; `bytes_sent` is counted.
"""

from __future__ import annotations

import socket
import time

import psutil
import torch.distributed as dist


def check(name: str) -> None:
    """ValueError naming the interfaces there are, unless `name` is one."""
    there = sorted(psutil.net_io_counters(pernic=True))
    if name not in there:
        raise ValueError(f"dist.measure_interface = {name!r}: no such network interface here; "
                         f"choose one of {', '.join(there)} (\"lo\" when every rank is on this machine)")


def _ranks_on_this_host() -> int:
    """Ranks of the group that share this host's counters (one all_gather_object of host names)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 1
    hosts: list = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    return hosts.count(socket.gethostname())


def _sent(name: str) -> int:
    return psutil.net_io_counters(pernic=True)[name].bytes_sent


class InterfaceWindow:
    """One fenced measurement on interface `name`; every rank of the group calls start() and stop()."""

    def __init__(self, name: str):
        check(name)
        self.name, self.local = name, _ranks_on_this_host()
        self.t0 = self.c0 = 0

    def _fence(self) -> tuple[float, int]:
        if dist.is_initialized():
            dist.barrier()
        return time.perf_counter(), _sent(self.name)

    def start(self) -> None:
        self.t0, self.c0 = self._fence()

    def stop(self, repeats: int = 1) -> float:
        """Bytes this interface carried per local rank per repeat, the idle rate subtracted."""
        t1, c1 = self._fence()
        _, i0 = self._fence()
        time.sleep(t1 - self.t0)
        _, i1 = self._fence()
        busy, idle = c1 - self.c0, i1 - i0
        return (busy - idle) / self.local / max(repeats, 1)
