"""The import graph against the map in docs/design.md: each layer imports only the layers its row
lists (an entry may also name one file, `observe/memory.py`); only experiments import distid/train.py;
no file of distid imports itself around a loop."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "distid"


def layer_table() -> list[tuple[str, list[str], list[str]]]:
    """[(layer, its files or folders, what it may import)] from the table headed
    `| layer | files | may import |` in docs/design.md (files: the backticked paths before " — ")."""
    rows, inside = [], False
    for line in (REPO / "docs" / "design.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:3] == ["layer", "files", "may import"]:
            inside = True
            continue
        if inside and not line.startswith("|"):
            break
        if inside and not set(cells[0]) <= set("-: "):
            may = [m.strip(" `") for m in cells[2].split(",") if m.strip(" `—-")]
            files = cells[1].split(" — ")[0]  # paths first, then " — " and what they hold
            rows.append((cells[0].strip("*` "), re.findall(r"`([^`]+)`", files), may))
    assert rows, "docs/design.md has no table headed | layer | files | may import |"
    return rows


def layer_of(path: Path, table) -> str:
    rel = path.relative_to(PKG).as_posix()
    hits = [(len(f), layer) for layer, files, _ in table for f in files
            if rel == f or (f.endswith("/") and rel.startswith(f))]
    assert hits, f"distid/{rel} is in no layer of docs/design.md's table"
    return max(hits)[1]


def module_file(name: str) -> Path | None:
    """distid.a.b → distid/a/b.py or distid/a/b/__init__.py (None if neither exists)."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports(path: Path, package: str | None = None, type_only: bool = True) -> set[Path]:
    """Files of distid that `path` imports anywhere (top level or inside functions); `package`
    resolves relative imports (default: the one `path` is in); type_only=False leaves out those under
    `if TYPE_CHECKING:`, which only a type checker runs."""
    package = package or ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    tree, found, skip = ast.parse(path.read_text()), set(), set()
    for node in ast.walk(tree):
        if not type_only and isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                                      "typing.TYPE_CHECKING"):
            skip |= {id(n) for statement in node.body for n in ast.walk(statement)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "distid" and (f := module_file(name)) not in (None, PKG / "__init__.py"):
                found.add(f)
    return found


def import_graph() -> dict[Path, set[Path]]:
    """{file of distid: the files of distid it imports when run (imports, top level or inside functions,
    not under `if TYPE_CHECKING:`)}, without the edges from a file to the `__init__.py` of a package
    holding it: importing the file has begun importing that package, so a package's `__init__.py`,
    which may import its own modules to re-export them, counts as part of the package rather than a
    module its modules import."""
    return {path: {f for f in imports(path, type_only=False)
                   if not (f.name == "__init__.py" and path.is_relative_to(f.parent))}
            for path in sorted(PKG.rglob("*.py"))}


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """One loop [a, b, …, a] (a shortest one from its first file) through each set of files that
    reach one another in `graph` (Tarjan's strongly connected components)."""
    index, low, stack, parts = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while not part or v not in part:
                part.add(stack.pop())
            if len(part) > 1 or v in graph.get(v, ()):
                parts.append(part)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    loops = []
    for part in parts:
        start = min(part)
        came, queue = {start: None}, [start]
        while start not in graph.get(queue[0], ()):  # breadth first, until a file imports start
            v = queue.pop(0)
            for w in sorted((graph.get(v, set()) & part) - came.keys()):
                came[w] = v
                queue.append(w)
        loop, v = [start], queue[0]
        while v is not None:
            loop.insert(1, v)
            v = came[v]
        loops.append(loop[1:] + [start])
    return sorted(loops)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (top level or inside functions):\n" + "\n".join(
        " → ".join(p.relative_to(REPO).as_posix() for p in loop) for loop in found)


def test_cycle_finder_names_each_loop():
    a, b, c, d, e = map(Path, "abcde")
    assert cycles({a: {b}, b: {c}, c: {a, d}, d: set(), e: {e}}) == [[a, b, c, a], [e, e]]
    assert cycles({a: {b, c}, b: {d}, c: {d}, d: set()}) == []


def test_every_import_follows_the_map():
    table = layer_table()
    allowed = {layer: set(may) for layer, _, may in table}
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        mine = layer_of(path, table)
        for target in imports(path):
            theirs = layer_of(target, table)
            rel = target.relative_to(PKG).as_posix()
            if theirs != mine and not {theirs, rel} & allowed[mine]:
                bad.append(f"{path.relative_to(REPO)} ({mine}) imports {rel} ({theirs})")
    assert not bad, "imports against docs/design.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer, forbidden", [
    ("models", ("parallel", "strategies", "observe/ledger.py", "run", "train.py")),
    ("subspace", ("parallel", "strategies", "observe/ledger.py", "run", "train.py", "lora.py")),
    ("lora", ("parallel", "strategies", "observe/ledger.py", "run", "train.py", "subspace")),
    ("parallel", ("subspace", "lora.py", "strategies", "run", "train.py")),
    ("strategies", ("subspace", "lora.py", "models", "run", "train.py")),  # models and strategies meet in run/
    ("foundation", ("primitives", "data", "observe", "models", "parallel", "run", "experiments", "train.py")),
    ("primitives", ("data", "observe", "models", "parallel", "run", "experiments", "train.py")),
    ("data", ("observe", "models", "parallel", "run", "experiments", "train.py")),
    ("observe", ("models", "subspace", "lora.py", "parallel", "run", "experiments", "train.py")),
    ("run", ("experiments", "train.py")),
])
def test_the_rules_the_map_must_keep(layer, forbidden):
    """The table itself may not grant what the design forbids (the map could otherwise drift)."""
    rows = {name: (files, may) for name, files, may in layer_table()}
    files, may = rows[layer]
    for f in forbidden:
        owner = next((name for name, (fs, _) in rows.items() if f in fs), f)
        assert f not in may and owner not in may, f"docs/design.md lets {layer} import {f}"


def test_import_checker_sees_a_bad_import(tmp_path):
    """The checker itself: function-level, relative and `from distid import …` imports are found."""
    probe = tmp_path / "probe.py"
    probe.write_text("from distid import lora\nfrom .ledger import CommLedger\n"
                     "def f():\n    from distid.train import main\n"
                     "if TYPE_CHECKING:\n    from distid.config import Config\n")
    assert imports(probe, package="distid.observe") == {PKG / "train.py", PKG / "lora.py",
                                                         PKG / "observe" / "ledger.py", PKG / "config.py"}
    assert PKG / "config.py" not in imports(probe, package="distid.observe", type_only=False)


def test_top_level_stays_small_and_mapped():
    entries = sorted(p.name for p in PKG.iterdir() if p.name != "__pycache__")
    assert len(entries) - 1 <= 15, entries  # besides __init__.py; probe.py and preflight.py are `python -m distid.probe`, `python -m distid.preflight`
    mapped = {f.rstrip("/") for _, files, _ in layer_table() for f in files}
    assert set(entries) <= mapped, f"not in docs/design.md's table: {sorted(set(entries) - mapped)}"


def test_train_py_is_a_short_loop():
    text = (PKG / "train.py").read_text()
    assert len(text.splitlines()) <= 200
    loop = text[text.index("def train_step("):text.index("def train(")]  # one step, then the loop around it
    assert len(loop.strip().splitlines()) <= 32
    for line in ("logits = net(x)", "loss.backward()", "opt.step()", "all-reduces"):
        assert line in loop, line
