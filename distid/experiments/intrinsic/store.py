"""OUT/sweep.json: the sweep's finished points, written atomically after every point.

Layout: {"points": {KEY: record, ...}, ...the last report's fields}. Writers take an fcntl lock on
OUT/.sweep.lock, read, change, write OUT/sweep.json.tmp, fsync and rename, so that ranks sharing
the folder never lose each other's points and a crash never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def _locked(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read(out: Path) -> dict:
    path = out / "sweep.json"
    if not path.exists():
        return {"points": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): move it away to start the sweep afresh") from e
    data.setdefault("points", {})
    return data


def _write(out: Path, data: dict) -> None:
    tmp = out / "sweep.json.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / "sweep.json")


def record(out: Path, *records: dict) -> None:
    """Add finished points (each with its 'key') to OUT/sweep.json."""
    with _locked(out):
        data = _read(out)
        data["points"].update({r["key"]: r for r in records})
        _write(out, data)


def stored(out: Path) -> dict:
    """{key: record} of every point in OUT/sweep.json."""
    with _locked(out):
        return _read(out)["points"]


def finished(out: Path, points: list[dict], key: Callable[[dict], str], fingerprint: Callable[[dict], str]) -> dict:
    """{key: record} of the planned points already in OUT/sweep.json with an unchanged config."""
    with _locked(out):
        stored = _read(out)["points"]
    return {key(p): stored[key(p)] for p in points
            if key(p) in stored and stored[key(p)].get("hash") == fingerprint(p)}


def report(out: Path, fields: dict) -> list[dict]:
    """Store the report's fields (analysis, machine, ...) beside the points, and append this
    invocation (wall time, ranks, points trained) to the list of them; returns that list."""
    with _locked(out):
        data = _read(out)
        runs = data.get("invocations", [])
        runs.append({k: fields[k] for k in ("wall_time_s", "ranks", "mode", "trained") if k in fields})
        data.update({k: v for k, v in fields.items() if k != "points"}, invocations=runs)
        _write(out, data)
    return runs
