"""A pytest plugin: the suite writes nothing into the repository (runs/, docs/, configs/, …) —
only into temporary folders. It lists the repository's files when the session starts and fails
the session (exit status 1, naming the paths) when they differ at the end. Loaded by conftest.py;
DISTID_WATCH_ROOT names another folder to watch (tests/test_writes_nowhere.py uses it)."""

import os
from pathlib import Path

SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "distid.egg-info", "data"}  # caches, data
ROOT = Path(os.environ.get("DISTID_WATCH_ROOT", Path(__file__).resolve().parents[1]))


def files(root: Path) -> dict[str, int]:
    """{relative path: mtime in ns} of every file under root, SKIP folders left out."""
    found = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP]
        for name in names:
            path = Path(folder) / name
            try:
                found[str(path.relative_to(root))] = path.stat().st_mtime_ns
            except FileNotFoundError:
                pass
    return found


def pytest_sessionstart(session):
    session.config._distid_files = files(ROOT)


def pytest_sessionfinish(session, exitstatus):
    before, after = session.config._distid_files, files(ROOT)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        print(f"\nerror: the test session wrote into {ROOT} (tests write only into temporary folders): {shown}")
        session.exitstatus = 1
