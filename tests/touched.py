"""The tests of what you touched: the test files that name a changed module, helper, config or page.

    python tests/touched.py [REF]     # prints pytest arguments, one per line (launch/test.sh --touched)

Changed: what differs from REF (default: where HEAD left the upstream branch, if there is one, else
HEAD), plus untracked files. Then:
- a test file: itself (unless deleted);
- `distid/a/b.py`: the test files naming `distid.a.b` (an import, `-m distid.a.b` in a command) or
  importing `b` from `distid.a`;
- a test helper `tests/x.py`: the test files naming `x`; `tests/conftest.py`: every test;
- a page with a tiny-run case in tests/test_docs.py: those cases and the page checks;
- anything else (a config, a launch script, another page): the test files naming its path, and the
  docs cases whose command names it.
A module no test names (a helper deep in the package) selects nothing: the full suite checks it.
Exit 2 with one line when git cannot answer (not a repository, an unknown REF).
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = sorted(t for t in (REPO / "tests").glob("test_*.py") if t.name != "test_touched.py")  # it names paths as examples
PAGE_CHECKS = ["tests/test_docs.py::test_every_lesson_page_has_a_command_its_output_and_an_exercise",
               "tests/test_docs.py::test_every_block_was_regenerated_and_names_its_machine"]


def git(*args: str, check: bool = True) -> list[str]:
    """git's NUL-separated output; on failure (check) one line and exit 2."""
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    if out.returncode and check:
        print(f"touched.py: git {' '.join(args)}: {(out.stderr.strip().splitlines() or ['failed'])[0]}", file=sys.stderr)
        sys.exit(2)
    return [x for x in out.stdout.split("\0") if x] if out.returncode == 0 else []


def changed(ref: str | None) -> list[str]:
    """Paths (relative to the repository) that differ from `ref`, or are untracked."""
    if ref is None:
        fork = git("merge-base", "HEAD", "@{upstream}", check=False)  # nothing without an upstream branch
        ref = fork[0].strip() if fork else "HEAD"
    return sorted(set(git("diff", "-z", "--name-only", ref)) | set(git("ls-files", "-z", "--others", "--exclude-standard")))


@functools.cache
def texts() -> dict[str, str]:
    """{test file (relative to the repository): its text}, read once."""
    return {str(t.relative_to(REPO)): t.read_text() for t in TESTS}


def naming(pattern: str) -> list[str]:
    """The test files whose text matches `pattern`."""
    rx = re.compile(pattern)
    return [name for name, text in texts().items() if rx.search(text)]


def docs_cases(match) -> list[str]:
    """Node ids of tests/test_docs.py's tiny-run cases for which match(page name, command) holds."""
    sys.path.insert(0, str(REPO / "tests"))
    import test_docs

    return [f"tests/test_docs.py::test_docs_command_runs_at_a_tiny_size[{page.name}:{i}]"
            for page, i, command, _ in test_docs.CASES if match(page.name, command)]


def for_module(p: Path) -> list[str]:
    parts = list(p.with_suffix("").parts)
    if parts[-1] in ("__init__", "__main__"):
        parts = parts[:-1]
    module, parent, name = ".".join(parts), ".".join(parts[:-1]), parts[-1]
    also = rf"|from {re.escape(parent)} import [^\n]*\b{name}\b" if parent else ""
    return naming(rf"\b{re.escape(module)}\b(?!\.\w)" + also)


def for_path(path: str) -> list[str]:
    """The tests of one changed path (see the module's docstring)."""
    p = Path(path)
    if p.parts[:1] == ("tests",) and p.suffix == ".py":
        if p.name == "conftest.py":
            return ["tests"]
        if p.name.startswith("test_"):
            return [path] if (REPO / p).exists() else []
        return naming(rf"\b{re.escape(p.stem)}\b")
    if p.parts[:1] == ("distid",) and p.suffix == ".py":
        return for_module(p)
    if p.parts[:1] == ("docs",) and (cases := docs_cases(lambda page, _: page == p.name)):
        return cases + PAGE_CHECKS + naming(re.escape(path))
    return naming(re.escape(path)) + docs_cases(lambda _, command: path in command)


def selection(paths: list[str]) -> list[str]:
    """pytest arguments for the tests of `paths`: whole files, or node ids of files not whole."""
    picked = list(dict.fromkeys(x for path in paths for x in for_path(path)))
    if "tests" in picked:
        return ["tests"]
    files = {x for x in picked if "::" not in x}
    return [x for x in picked if x.split("::")[0] not in files or "::" not in x]


if __name__ == "__main__":
    args = selection(changed(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None))
    if args:
        print("\n".join(args))
