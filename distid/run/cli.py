"""The scaffold every config-driven entry point shares: argparse with --config/--set/--out, the
config, the process group, and one line per error with an exit code.

    sys.exit(cli.main(argv, "python -m distid.experiments.methods.compare", __doc__, body, add_args))

body(args, cfg) does the work and returns an exit code (None = 0). Exit codes: 0 done (or, with
--resume, found finished: said, nothing written); 2 the input is wrong (config, backend, data,
checkpoint, memory, a missing optional dependency), said once, by rank 0, since every rank finds
the same; 1 training diverged, or a peer rank failed (each survivor says what it saw). The group
is left cleanly after success, without the barrier after an error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from distid import runtime
from distid.config import ConfigError, add_config_args, load_config
from distid.data import DataError
from distid.models import MissingDependency
from distid.parallel.consistency import RanksDisagree, ReplicasDiverged
from distid.run.checkpoint import AlreadyFinished, CheckpointError
from distid.run.watchdog import Diverged, PeerFailure

INPUT_ERRORS = (ConfigError, runtime.BackendError, MemoryError, DataError, CheckpointError, RanksDisagree,
                MissingDependency)


def parser(prog: str, doc: str | None, config: bool = True, out: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser showing the module docstring; with --config/--set/--out when `config` (out:
    the default output folder, as the help names it)."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if config:
        add_config_args(p, *([out] if out else []))
    return p


def guarded(work, input_errors: tuple = (), every_rank=lambda: False) -> int:
    """work() → its exit code (None = 0), or the exit code of the error it raised, said in one line;
    `input_errors` adds exception types that mean "the input is wrong" (exit 2). every_rank(), asked
    when an error comes: True where each rank says its own error — ranks that do different work, as
    a sweep's split mode."""
    try:
        code = work()
    except INPUT_ERRORS + tuple(input_errors) as e:
        _say(e, everyone=every_rank())
        runtime.shutdown(clean=False)
        return 2
    except AlreadyFinished as e:  # --resume of a finished run: said, and nothing else happens
        if os.environ.get("RANK", "0") == "0":
            print(e, flush=True)
        runtime.shutdown(clean=False)
        return 0
    except (Diverged, PeerFailure, ReplicasDiverged) as e:
        _say(e, everyone=every_rank() or isinstance(e, PeerFailure))
        runtime.shutdown(clean=False)
        return 1
    runtime.shutdown()
    return code or 0


def main(argv, prog: str, doc: str | None, body, add_args=None, join: bool = True, every_rank=None,
         out: str | None = None) -> int:
    """Parse, load the config, join the group (unless `join` is False), then body(args, cfg).
    every_rank: a function of the config, True where each rank says its own error (see `guarded`);
    out: the default output folder as --help names it (default: runs/<config name>-<time>)."""
    p = parser(prog, doc, out=out)
    if add_args:
        add_args(p)
    args = p.parse_args(argv)

    loaded = []

    def work():
        loaded.append(load_config(args.config, args.overrides))
        if join:
            runtime.init(loaded[0].dist.timeout_s, loaded[0].dist.backend)
        return body(args, loaded[0])

    return guarded(work, every_rank=lambda: bool(every_rank and loaded and every_rank(loaded[0])))


SILENT_LINGER_S = 3.0


def _say(e: BaseException, everyone: bool) -> None:
    """Print the error (rank 0 only, unless `everyone`). A silent rank lingers a moment before it
    exits: torchrun stops every rank as soon as one exits with an error, and a silent rank exiting
    first could stop rank 0 before its line is out."""
    rank = os.environ.get("RANK", "0")
    if everyone or rank == "0":
        who = f"rank {rank}: " if everyone and int(os.environ.get("WORLD_SIZE", "1")) > 1 \
            and not str(e).startswith("rank ") else ""
        print(f"error: {who}{e}", file=sys.stderr, flush=True)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        time.sleep(SILENT_LINGER_S)
