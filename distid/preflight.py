"""`python -m distid.preflight`: the checks a workshop student runs the day before, one line each,
go or no-go, then a summary line; exit 0 when all go, 1 otherwise.

- python, torch: their versions against pyproject.toml's `requires-python` and `torch` requirement;
- venv: this Python is the repository's `.venv` (made by launch/setup.sh) and `torchrun` is its own;
- datasets: every dataset the lessons use (the configs their pages name, and any `data.dataset=`
  on a page) is fetched under --data-root and its SHA-256 checksums match (distid.data's own);
- kernel: Fastfood's C kernel (distid/subspace/kernel.py) builds and loads;
- ranks: `--nproc` gloo ranks start under torchrun (`--standalone`) and all-reduce a tensor to the
  right sum, within RANK_TIMEOUT_S;
- disk: DISK_NEED_GB free where runs/ and the data go. The lessons' runs as the pages show them wrote
  0.9 GB into runs/ (lesson 8's frontier 0.64 GB of it, each of its two shaped networks 0.1 GB); the two
  datasets take 0.1 GB: 2 GB leaves room for a second try;
- memory: MEMORY_NEED_GB available (go). The lessons' runs peak at 0.4-0.8 GB resident per rank
  (4 ranks: up to 3.2 GB), except lesson 6's two tables, whose ranks train every cell in turn and
  grow to 1.7-1.9 GB each (docs/sources/doc_compare*.json, peak_rss_mb_per_rank): WIDE_NEED_GB for
  all of lesson 6. Between the two, the line still says go and names what will not fit.

A check that raises is a no-go with the exception's one-line message.
"""

from __future__ import annotations

import argparse
import operator
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

DISK_NEED_GB = 2.0
MEMORY_NEED_GB = 4.0
WIDE_NEED_GB = 7.5  # lesson 6's tables: 4 ranks of up to 1.9 GB
RANK_TIMEOUT_S = 30.0  # torchrun and its ranks, start to finish
INIT_TIMEOUT_S = 20.0  # a rank's wait for the others in init_process_group and the all-reduce
RANK_ERROR = "preflight rank error:"  # a rank's failure, one line on stderr
RANK_OK = "preflight ranks ok:"
PACKAGE = Path(__file__).resolve().parent
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
        "<": operator.lt}

Check = Callable[[], tuple[bool, str]]


def repo_root() -> Path:
    """The clone distid runs from (an editable install), else the current folder."""
    return PACKAGE.parent if (PACKAGE.parent / "pyproject.toml").is_file() else Path.cwd()


def version_tuple(text: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0): the leading numbers of a version."""
    m = re.match(r"\d+(\.\d+)*", text)
    if m is None:
        raise ValueError(f"cannot read the version {text!r}")
    return tuple(int(x) for x in m.group().split("."))


def satisfies(version: tuple[int, ...], spec: str) -> bool:
    """`version` meets every clause of `spec` ('>=3.10', '>=2.5,<3'), compared on the clause's digits."""
    for clause in spec.split(","):
        m = re.fullmatch(r"\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)\s*", clause)
        if m is None:
            raise ValueError(f"cannot read the version requirement {clause.strip()!r}")
        want = version_tuple(m[2])
        if not _OPS[m[1]](version[:len(want)], want):
            return False
    return True


def declared(name: str, root: Path | None = None) -> str:
    """pyproject.toml's requirement on 'python' (requires-python) or a dependency, e.g. '>=2.5'."""
    text = ((root or repo_root()) / "pyproject.toml").read_text(encoding="utf-8")
    pattern = r'^requires-python\s*=\s*"([^"]+)"' if name == "python" else rf'^\s*"{re.escape(name)}\s*([<>=!][^";]*)"'
    m = re.search(pattern, text, re.M)
    if m is None:
        raise ValueError(f"pyproject.toml declares no requirement on {name}")
    return m[1].strip()


def check_python() -> tuple[bool, str]:
    """This Python against requires-python."""
    spec, have = declared("python"), ".".join(map(str, sys.version_info[:3]))
    ok = satisfies(tuple(sys.version_info[:3]), spec)
    return ok, f"Python {have} (pyproject: {spec})" + ("" if ok else "; install a Python that meets it")


def check_torch() -> tuple[bool, str]:
    """The installed torch against pyproject's torch requirement."""
    import torch

    spec = declared("torch")
    ok = satisfies(version_tuple(torch.__version__), spec)
    return ok, f"torch {torch.__version__} (pyproject: torch{spec})" + ("" if ok else "; run `bash launch/setup.sh`")


def check_venv(root: Path | None = None) -> tuple[bool, str]:
    """sys.prefix is ROOT/.venv and `torchrun` on PATH is that venv's."""
    venv = (root or repo_root()) / ".venv"
    if not (venv / "bin" / "python").exists():
        return False, f"no virtual environment at {venv}: run `bash launch/setup.sh`, then `. .venv/bin/activate`"
    if Path(sys.prefix).resolve() != venv.resolve():
        return False, f"this Python runs from {sys.prefix}, not {venv}: run `. .venv/bin/activate`"
    found = shutil.which("torchrun")
    if found is None or Path(found).resolve().parent != (venv / "bin").resolve():
        return False, f"`torchrun` on PATH is {found or 'missing'}, not {venv}/bin's: run `. .venv/bin/activate`"
    return True, f"{venv}, with its torchrun"


def lesson_datasets(root: Path | None = None) -> list[str]:
    """The datasets the lessons use: data.dataset of each config a docs/lesson*.md page names, and any
    `data.dataset=NAME` on a page; every known dataset when there are no lesson pages."""
    from distid.config import load_config
    from distid.data import DATASETS

    root = root or repo_root()
    pages = sorted((root / "docs").glob("lesson*.md"))
    if not pages:
        return list(DATASETS)
    names: set[str] = set()
    for page in pages:
        text = page.read_text(encoding="utf-8")
        names.update(re.findall(r"data\.dataset=[\"']?([\w-]+)", text))
        for config in set(re.findall(r"configs/[\w-]+\.toml", text)):
            names.add(load_config(str(root / config)).data.dataset)
    return sorted(names, key=lambda n: (list(DATASETS).index(n) if n in DATASETS else len(DATASETS), n))


def check_datasets(data_root: str, names: list[str] | None = None) -> tuple[bool, str]:
    """Each dataset's train and test files are in DATA_ROOT and match their SHA-256 (distid.data's)."""
    names = lesson_datasets() if names is None else names
    problems = [p for p in (_dataset_problem(name, data_root) for name in names) if p]
    if problems:
        return False, "; ".join(problems)
    return True, f"{', '.join(names)} in {data_root}, checksums match"


def _dataset_problem(name: str, data_root: str) -> str | None:
    """What is wrong with one dataset's files in DATA_ROOT and the command that mends it, or None."""
    from distid.data import ChecksumError, load_split

    fetch = f"`python -m distid.data fetch {name} --root {data_root}`"
    for split in ("train", "test"):
        try:
            load_split(name, data_root, split)
        except FileNotFoundError:
            return f"{name} is not fetched in {data_root}: run {fetch}"
        except ChecksumError as e:
            return f"{name}: {Path(e.file).name} fails its checksum: run {fetch} (it sets the bad file aside)"
        except ValueError as e:
            return f"{name} {split}: {one_line(e)}: run {fetch}"
    return None


def check_kernel() -> tuple[bool, str]:
    """Fastfood's C kernel builds (cached under ~/.cache/distid) and loads."""
    from distid.subspace import kernel

    if kernel.library() is not None:
        return True, "Fastfood's C kernel (distid/subspace/kernel.c) builds and loads"
    fallback = "the lessons run on the torch path in distid/subspace/fastfood.py instead, slower"
    if os.environ.get("DISTID_KERNEL") == "torch":
        return False, f"DISTID_KERNEL=torch turns the C kernel off: {fallback}"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return False, f"no C compiler (cc, gcc or $CC): {fallback}; install gcc"
    return False, f"{cc} {' '.join(kernel.FLAGS)} could not build distid/subspace/kernel.c: {fallback}"


def rank_main() -> int:
    """One rank (under torchrun): all-reduce rank + 1 over gloo and check the sum N(N+1)/2."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    try:
        dist.init_process_group("gloo", timeout=timedelta(seconds=INIT_TIMEOUT_S))
        n = dist.get_world_size()
        t = torch.full((1024,), float(rank + 1))
        dist.all_reduce(t)
        if not torch.all(t == n * (n + 1) / 2):
            raise RuntimeError(f"all-reduce gave {t[0].item():g}, expected {n * (n + 1) // 2}")
        dist.barrier()
        dist.destroy_process_group()
    except Exception as e:  # one line for the parent, not a traceback
        print(f"{RANK_ERROR} rank {rank}: {one_line(e)}", file=sys.stderr, flush=True)
        return 1
    if rank == 0:
        print(f"{RANK_OK} sum {n * (n + 1) // 2} on every rank", flush=True)
    return 0


def check_ranks(nproc: int = 4, timeout: float = RANK_TIMEOUT_S) -> tuple[bool, str]:
    """`nproc` gloo ranks start under torchrun and all-reduce; past `timeout` torchrun and its ranks
    (torchrun starts each rank in a session of its own) are killed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "distid.preflight", "--rank-check"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
        out.seek(0), err.seek(0)
        said, errors = out.read(), err.read()
    if proc.returncode == 0 and RANK_OK in said:
        return True, f"{nproc} gloo ranks started under torchrun and all-reduced: {said.split(RANK_OK)[1].strip()}"
    if proc.returncode == -signal.SIGKILL:
        return False, f"{nproc} ranks did not finish in {timeout:g} s (killed): {last_line(errors, said)}"
    return False, f"torchrun exited {proc.returncode}: {last_line(errors, said)}"


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and every process under it, then reap it."""
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    for p in kids:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.kill()
    proc.wait()


def last_line(err: str, out: str) -> str:
    """A rank's own error line if one printed it, else the last line of stderr (then stdout)."""
    for line in err.splitlines():
        if RANK_ERROR in line:
            return line.split(RANK_ERROR, 1)[1].strip()
    lines = [ln.strip() for ln in (err + "\n" + out).splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _existing(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (where it would be made)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk(data_root: str, runs: str = "runs") -> tuple[bool, str]:
    """DISK_NEED_GB free where runs/ and the data go (one figure when they share a file system)."""
    places = {"runs/": _existing(Path(runs)), data_root: _existing(Path(data_root))}
    free = {name: shutil.disk_usage(p).free / 1e9 for name, p in places.items()}
    ok = all(gb >= DISK_NEED_GB for gb in free.values())
    if len({p.stat().st_dev for p in places.values()}) == 1:
        said = f"{free['runs/']:.1f} GB free where runs/ and {data_root} go"
    else:
        said = ", ".join(f"{gb:.1f} GB free at {name}" for name, gb in free.items())
    return ok, f"{said} (need {DISK_NEED_GB:g})" + ("" if ok else ": free some space")


def check_memory() -> tuple[bool, str]:
    """MEMORY_NEED_GB of memory available (psutil)."""
    import psutil

    mem = psutil.virtual_memory()
    gb = mem.available / 1e9
    ok = gb >= MEMORY_NEED_GB
    said = f"{gb:.1f} GB available of {mem.total / 1e9:.1f} GB (need {MEMORY_NEED_GB:g})"
    if not ok:
        return ok, said + ": close other programs"
    if gb < WIDE_NEED_GB:
        return ok, said + f"; lesson 6's tables need {WIDE_NEED_GB:g}: read their blocks, or run them on 2 ranks"
    return ok, said


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def run_check(check: Check) -> tuple[bool, str]:
    """Run one check; one that raises is a no-go with the exception's one-line message."""
    try:
        return check()
    except Exception as e:
        return False, one_line(e)


def checks(args: argparse.Namespace) -> list[tuple[str, Check]]:
    """(name, check) in the order they run."""
    return [
        ("python", check_python),
        ("torch", check_torch),
        ("venv", check_venv),
        ("datasets", lambda: check_datasets(args.data_root)),
        ("kernel", check_kernel),
        ("ranks", lambda: check_ranks(args.nproc)),
        ("disk", lambda: check_disk(args.data_root)),
        ("memory", check_memory),
    ]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distid.preflight", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("DISTID_DATA", "data"),
                   help="where the datasets are (default: $DISTID_DATA, else data, as the lessons use)")
    p.add_argument("--nproc", type=int, default=4, help="ranks the all-reduce check starts (default: 4)")
    p.add_argument("--rank-check", action="store_true", help=argparse.SUPPRESS)  # one rank, under torchrun
    return p


def main(argv: list[str] | None = None) -> int:
    """Run every check, a line each, then the summary; 0 when all go, 1 otherwise."""
    args = _parser().parse_args(argv)
    if args.rank_check:
        return rank_main()
    failed = []
    for name, check in checks(args):
        ok, detail = run_check(check)
        print(f"{'go' if ok else 'no-go':5s}  {name:8s}  {detail}", flush=True)
        if not ok:
            failed.append(name)
    print("preflight: all go" if not failed else f"preflight: {len(failed)} no-go ({', '.join(failed)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
