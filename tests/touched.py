"""The tests of what you touched: the test files that name a changed module, config or page.

    python tests/touched.py [BASE]     # prints pytest arguments, one per line (launch/test.sh --touched)

Changed: files differing from BASE (default: the upstream branch if there is one, else HEAD) plus
untracked files. A changed test file is selected; a changed `distid/a/b.py` selects the test files
that name `distid.a.b` (an import, or `-m distid.a.b` in a command) or import `b` from `distid.a`;
a changed `docs/page.md` that page's cases of tests/test_docs.py; any other changed file (a config,
a launch script) the tests that name its path. A module no test names directly (a helper deep in the package) selects nothing:
the full suite is the check for it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = sorted((REPO / "tests").glob("test_*.py"))


def git(*args: str) -> list[str]:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def changed(base: str | None) -> list[str]:
    """Paths (relative to the repository) that differ from `base` or are untracked."""
    if base is None:
        base = "@{upstream}" if git("rev-parse", "--verify", "-q", "@{upstream}") else "HEAD"
    return sorted(set(git("diff", "--name-only", base)) | set(git("ls-files", "--others", "--exclude-standard")))


def naming(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [str(t.relative_to(REPO)) for t in TESTS if rx.search(t.read_text())]


def selection(paths: list[str]) -> list[str]:
    """pytest arguments for the tests of `paths`."""
    picked: dict[str, None] = {}
    for path in paths:
        p = Path(path)
        if p.parts[:1] == ("tests",) and p.name.startswith("test_") and p.suffix == ".py":
            picked[path] = None
        elif p.parts[:1] == ("distid",) and p.suffix == ".py":
            parts = list(p.with_suffix("").parts)
            if parts[-1] in ("__init__", "__main__"):
                parts = parts[:-1]
            module, parent, name = ".".join(parts), ".".join(parts[:-1]), parts[-1]
            picked.update(dict.fromkeys(naming(rf"\b{re.escape(module)}\b(?!\.)"
                                               + (rf"|from {re.escape(parent)} import [^\n]*\b{name}\b" if parent else ""))))
        elif p.parts[:1] == ("docs",) and p.suffix == ".md" and p.name != "design.md":
            picked[path] = None  # replaced by that page's cases below
        else:  # a config, a launch script, any other file: the tests that name its path
            picked.update(dict.fromkeys(naming(re.escape(path))))
    pages = [k for k in picked if k.startswith("docs/")]
    for k in pages:
        del picked[k]
    if pages and "tests/test_docs.py" not in picked:  # each case of those pages, by its node id
        sys.path.insert(0, str(REPO / "tests"))
        import test_docs

        for page, i, _, _ in test_docs.CASES:
            if f"docs/{page.name}" in pages:
                picked[f"tests/test_docs.py::test_docs_command_runs_at_a_tiny_size[{page.name}:{i}]"] = None
    return list(picked)


if __name__ == "__main__":
    args = selection(changed(sys.argv[1] if len(sys.argv) > 1 else None))
    if args:
        print("\n".join(args))
    else:
        print("touched.py: no test names what changed (run the full suite)", file=sys.stderr)
