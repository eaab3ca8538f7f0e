"""A pool of N gloo ranks that stays up across tests, with a watchdog.

`pool.run("module:function", *args)` calls that function on every rank and returns the N
results (rank order). If any rank raises, dies, or the call passes its timeout, every rank is
killed at once and the test fails with the failing rank's traceback — the same contract as
PyTorch's MultiProcessTestCase, without paying process start-up for every test.
"""

from __future__ import annotations

import importlib
import os
import queue
import tempfile
import time
import traceback
from datetime import timedelta

import torch.multiprocessing as mp

from distid.runtime import shutdown

INIT_TIMEOUT_S = 30


class RankFailed(RuntimeError):
    pass


def _call(target: str, args, kwargs):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(*args, **kwargs)


def _worker(rank: int, world_size: int, init_file: str, cmds, results) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=INIT_TIMEOUT_S))
    while (cmd := cmds.get()) is not None:
        try:
            results.put((rank, True, _call(*cmd)))
        except BaseException:  # report, then stay alive: the parent decides to kill
            results.put((rank, False, traceback.format_exc()))
    shutdown()  # barrier, destroy, and the last work freed by this thread (see its docstring)


class DistPool:
    def __init__(self, world_size: int):
        ctx = mp.get_context("spawn")
        self.world_size = world_size
        self._dir = tempfile.TemporaryDirectory()
        init_file = os.path.join(self._dir.name, "store")
        self._cmds = [ctx.Queue() for _ in range(world_size)]
        self._results = ctx.Queue()
        self._procs = [ctx.Process(target=_worker, args=(r, world_size, init_file, self._cmds[r], self._results),
                                   daemon=True) for r in range(world_size)]
        for p in self._procs:
            p.start()
        self.alive = True

    def run(self, target: str, *args, timeout: float = 60, **kwargs) -> list:
        if not self.alive:
            raise RankFailed("pool was killed by an earlier failure")
        for q in self._cmds:
            q.put((target, args, kwargs))
        out, deadline = {}, time.monotonic() + timeout
        while len(out) < self.world_size:
            self._check(deadline, target, out)
            try:
                rank, ok, value = self._results.get(timeout=0.2)
            except queue.Empty:
                continue
            if not ok:
                self.kill()
                raise RankFailed(f"rank {rank} of {self.world_size} failed in {target}:\n{value}")
            out[rank] = value
        return [out[r] for r in range(self.world_size)]

    def _check(self, deadline: float, target: str, out: dict) -> None:
        dead = [r for r, p in enumerate(self._procs) if not p.is_alive()]
        if dead:
            self.kill()
            raise RankFailed(f"rank(s) {dead} died during {target} (exit codes "
                             f"{[self._procs[r].exitcode for r in dead]})")
        if time.monotonic() > deadline:
            missing = sorted(set(range(self.world_size)) - set(out))
            self.kill()
            raise RankFailed(f"{target} timed out; ranks {missing} never answered (deadlock?)")

    def kill(self) -> None:
        self.alive = False
        for p in self._procs:
            if p.is_alive():
                p.kill()
        for p in self._procs:
            p.join(timeout=5)

    def close(self) -> None:
        if self.alive:
            for q in self._cmds:
                q.put(None)
            for p in self._procs:
                p.join(timeout=15)
        self.kill()
        self._dir.cleanup()
