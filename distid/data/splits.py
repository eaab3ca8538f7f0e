"""The train and test splits a distributed run reads, or one clear error on every rank.

Local rank 0 of each node verifies the files (under a file lock: two "nodes" may share a host and a
folder; files are used in place or unpacked from .gz, never downloaded here) while the other ranks
wait; every rank learns of a problem and raises it; then each memory-maps the splits.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


from distid import runtime

from .datasets import Split, load_split
from .fetch import FetchError, fetch


class DataError(ValueError):
    """The data of the config is missing or corrupt; the message says how to fetch it."""


def load_splits(name: str, root: str) -> tuple[Split, Split]:
    """(train, test) of data set `name` under `root`; DataError (one line) on every rank if unusable."""
    problem = None
    if os.environ.get("LOCAL_RANK", "0") == "0":
        try:
            Path(root).mkdir(parents=True, exist_ok=True)
            with open(Path(root) / ".fetch.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                fetch(name, root, sources=("local",))
        except (FetchError, ValueError, OSError) as e:
            problem = _data_problem(name, root, e)
    problem = runtime.first_problem(problem)
    try:
        if problem is None:
            return load_split(name, root, "train"), load_split(name, root, "test")
    except (FileNotFoundError, ValueError) as e:
        problem = _data_problem(name, root, e)
    raise DataError(problem)


def _data_problem(name: str, root: str, e: BaseException) -> str:
    """One line: what is wrong with the data, and the command that fetches it."""
    bad = [msg for source, msg in getattr(e, "failures", []) if source == "existing"]
    if bad:
        what = f"{bad[0]} (the file was renamed *.bad)"
    elif isinstance(e, FetchError):
        what = f"{name} data not found in {root} (looked for the four IDX files, plain or .gz)"
    else:
        what = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{what}; get it with `python -m distid.data fetch {name} --root {root}`"
