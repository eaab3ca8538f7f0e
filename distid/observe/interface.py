"""Bytes a network interface really carried, as the OS counts them (psutil's per-NIC counters):
the third byte figure, beside the ledger's wire and payload figures.

    window = InterfaceWindow("lo")                  # every rank of the group, together
    with window.segment(): ...collectives...        # as many segments as there are steps to count
    per_rank = window.result(repeats)               # bytes per rank per repeat

The counters are the host's: every local rank's traffic, and anything else on the interface. So
each segment is fenced by barriers (every local rank inside it), the count is divided by the ranks
on the host, and the same number of idle segments of the same lengths, fenced by the same barriers,
is measured at the end and subtracted: what other processes send at that rate and the fences' own
bytes cancel. What is left differs from the wire figure where the backend does: TCP/IP headers
(≈ 0.1 % on loopback's 64 kB segments), a per-message header and acknowledgement (large for
messages of a few kB), and gloo's own algorithms — its reduce-scatter is an all-reduce followed by
a copy, 2(N−1)/N·S, twice the ring's (N−1)/N·S. On loopback a byte sent is also a byte received;
`bytes_sent` is counted. Across hosts, name the interface the hosts talk over: "lo" then misses
what crosses between them (and a NIC misses what stays on a host).
"""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager

import psutil
import torch.distributed as dist

from distid import runtime


def check(name: str) -> None:
    """ValueError naming the interfaces there are, unless `name` is one."""
    there = sorted(psutil.net_io_counters(pernic=True))
    if name not in there:
        raise ValueError(f"dist.measure_interface = {name!r}: no such network interface here; "
                         f"choose one of {', '.join(there)} (\"lo\" when every rank is on this machine)")


def check_everywhere(name: str) -> None:
    """check() on every rank, the first problem raised on all of them (no rank left waiting)."""
    try:
        check(name)
        problem = None
    except ValueError as e:
        problem = str(e)
    if problem := runtime.first_problem(problem):
        raise ValueError(problem)


def _ranks_on_this_host() -> int:
    """Ranks of the group that share this host's counters (one all_gather_object of host names)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 1
    hosts: list = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    return hosts.count(socket.gethostname())


class InterfaceWindow:
    """Fenced measurements on interface `name`; every rank of the group makes the same calls."""

    def __init__(self, name: str):
        check(name)
        self.name, self.local = name, _ranks_on_this_host()
        self.busy, self.seconds = 0, []  # bytes counted in the segments; each segment's length
        self.idle_s = 0.0  # seconds the idle segments took (set by result())

    def _fence(self) -> tuple[float, int]:
        if dist.is_initialized():
            dist.barrier()
        return time.perf_counter(), psutil.net_io_counters(pernic=True)[self.name].bytes_sent

    @contextmanager
    def segment(self):
        t0, c0 = self._fence()
        yield
        t1, c1 = self._fence()
        self.busy += c1 - c0
        self.seconds.append(t1 - t0)

    def idle(self) -> tuple[int, float]:
        """(bytes, seconds) of idle segments as long as the measured ones, fenced the same way."""
        count, t_start = 0, time.perf_counter()
        for s in self.seconds:
            _, c0 = self._fence()
            time.sleep(s)
            _, c1 = self._fence()
            count += c1 - c0
        return count, time.perf_counter() - t_start

    def result(self, repeats: int = 1) -> float:
        """Bytes this interface carried per local rank per repeat in the segments, idle rate subtracted."""
        idle, self.idle_s = self.idle()
        return (self.busy - idle) / self.local / max(repeats, 1)
