"""One source per figure: the runs the pages document, kept as small JSON beside them, and the prose
figures that refer into them.

A source, docs/sources/NAME.json, holds a block's command, page, machine, seconds and date, and the
top-level JSON files its run wrote (`files`: {file stem: its content, pruned}). A figure in prose is

    <!--fig EXPR | FORMAT-->TEXT<!--/fig-->

EXPR is arithmetic (+ − × ÷, **, min, max, abs, round, sum, len, log) on paths NAME.key.key… into the sources:
`doc_full.seconds`, `doc_full.files.summary.test_accuracy`, `[0]` for a list's item or `["DDP"]` for the item
of a list of records whose cell or name is "DDP". FORMAT is a Python format spec (`.4f`, `,.0f`, `.1%`); in a
markdown table's row write ` \| ` before it, or the table would split there.
TEXT is what the page shows: `render` rewrites it and says where it differed. One written in a
code span (a backtick before it) is an example, not a figure.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from pathlib import Path

SOURCES = Path("docs") / "sources"
FIGURE = re.compile(r"(?<!`)<!--fig (?P<expr>.+?)(?: \\?\| (?P<fmt>[^|>\\]*?))?-->(?P<shown>.*?)<!--/fig-->")
LONG = 16  # a list of more numbers or lists than this (a curve, per-step times) is left out of a source
DROPPED = ("config", "seeds")  # the config is in configs/ and the command; a cell's seeds are summarised beside
# them (mean, min, max): either would double a source's size
FUNCTIONS = {"min": min, "max": max, "abs": abs, "round": round, "sum": sum, "len": len, "log": math.log}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.Mod: operator.mod}
NAMED_BY = ("cell", "name", "label", "method", "strategy", "variant", "model")  # keys that name a record in a list
ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Attribute, ast.Subscript,
           ast.Call, ast.Load, ast.Tuple, ast.List, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv,
           ast.Pow, ast.Mod, ast.USub, ast.UAdd)


def prune(value):
    """A run's JSON without its config and its long lists of numbers or lists (curves): what a prose
    figure may quote, small enough to commit."""
    if isinstance(value, dict):
        return {k: prune(v) for k, v in value.items() if k not in DROPPED}
    if isinstance(value, list):
        if len(value) > LONG and all(isinstance(v, (int, float, list, type(None))) for v in value):
            return None
        return [prune(v) for v in value]
    return value


def source_of(command: str, page: str, machine: dict, seconds: float, date: str, out_dir: Path | None) -> dict:
    """A block's source: what ran, where, how long, and its run's top-level JSON files, pruned."""
    files = {}
    for f in sorted(out_dir.glob("*.json")) if out_dir and out_dir.is_dir() else []:
        try:
            files[f.stem] = prune(json.loads(f.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not JSON ({e})") from None
    return {"command": command, "page": page, "machine": machine, "seconds": round(seconds, 1), "date": date,
            "files": files}


def write(name: str, source: dict, root: Path = SOURCES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.json"
    path.write_text(json.dumps(source, indent=1, sort_keys=True) + "\n")
    return path


def load(root: Path = SOURCES) -> dict[str, dict]:
    """Every source by name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(root.glob("*.json"))}


class Path_:
    """A value inside the sources, reached as NAME.key[k]…; `where` names it for errors."""

    def __init__(self, value, where: str):
        self.value, self.where = value, where

    def step(self, key):
        v, where = self.value, f"{self.where}.{key}" if isinstance(key, str) else f"{self.where}[{key!r}]"
        if isinstance(v, dict) and key in v:
            return wrap(v[key], where)
        if isinstance(v, list) and isinstance(key, int) and -len(v) <= key < len(v):
            return wrap(v[key], where)
        if isinstance(v, list) and isinstance(key, str):
            named = [item for item in v if isinstance(item, dict) and any(item.get(n) == key for n in NAMED_BY)]
            if len(named) > 1:
                raise LookupError(f"{where}: {len(named)} records are named {key!r}; take one by its index")
            if named:
                return wrap(named[0], where)
        raise LookupError(f"no {where}")


def wrap(value, where: str):
    return Path_(value, where) if isinstance(value, (dict, list)) else value


def raw(value):
    """A function's argument: a list or record of the sources as itself (len, sum, max of a list)."""
    if isinstance(value, list):
        return [raw(v) for v in value]
    return value.value if isinstance(value, Path_) else value


def inside(value, expr: str) -> Path_:
    """A list or record to step into; a number, string or null has no keys."""
    if not isinstance(value, Path_):
        raise LookupError(f"{expr!r} steps into {value!r}, which has no keys")
    return value


def evaluate(expr: str, sources: dict[str, dict]):
    """The value of a figure's expression over the sources (LookupError/ValueError say what is missing)."""
    tree = ast.parse(expr, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED):
            raise ValueError(f"{expr!r}: {type(node).__name__} is not allowed in a figure")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            raise ValueError(f"{expr!r}: only {', '.join(FUNCTIONS)} may be called")

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in sources:
                raise LookupError(f"no source {node.id} (docs/sources/{node.id}.json)")
            return Path_(sources[node.id], node.id)
        if isinstance(node, ast.Attribute):
            return inside(ev(node.value), expr).step(node.attr)
        if isinstance(node, ast.Subscript):
            return inside(ev(node.value), expr).step(ev(node.slice))
        if isinstance(node, (ast.Tuple, ast.List)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.UnaryOp):
            return {ast.USub: operator.neg, ast.UAdd: operator.pos}[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BinOp):
            return BINARY[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Call):
            return FUNCTIONS[node.func.id](*[raw(ev(a)) for a in node.args])
        raise ValueError(f"{expr!r}: cannot evaluate {type(node).__name__}")

    value = ev(tree)
    if isinstance(value, Path_):
        raise ValueError(f"{expr!r} names {value.where}, a {type(value.value).__name__}, not a figure")
    return value


def text_of(expr: str, fmt: str | None, sources: dict[str, dict]) -> str:
    """A figure as the page shows it: its value, formatted."""
    value = evaluate(expr, sources)
    if value is None:
        raise ValueError(f"{expr!r} has no value (null in its source)")
    return format(value, fmt.strip()) if fmt else str(value)


def render(text: str, sources: dict[str, dict], where: str = "line") -> tuple[str, list[str], list[str]]:
    """The text with every figure rendered from the sources; the figures that could not be rendered,
    and those it showed otherwise (each `WHERE:line: …`)."""
    failed, changed, out = [], [], []
    for n, line in enumerate(text.split("\n"), 1):
        def one(m):
            try:
                shown = text_of(m["expr"], m["fmt"], sources)
            except (LookupError, ValueError, TypeError, ZeroDivisionError, SyntaxError) as e:
                failed.append(f"{where}:{n}: <!--fig {m['expr']}-->: {e}")
                return m[0]
            if shown != m["shown"]:
                changed.append(f"{where}:{n}: <!--fig {m['expr']}--> shows {m['shown']!r}, its source gives {shown!r}")
            return m[0][:m.start("shown") - m.start()] + shown + "<!--/fig-->"
        out.append(FIGURE.sub(one, line))
    return "\n".join(out), failed, changed


def problems(page: Path, sources: dict[str, dict]) -> list[str]:
    """Where a page's prose figures differ from their sources, or cannot be rendered (`page:line: …`)."""
    _, failed, changed = render(page.read_text(), sources, str(page))
    return failed + changed


def names(text: str) -> set[str]:
    """The sources a text's figures refer to."""
    found = set()
    for m in FIGURE.finditer(text):
        try:
            found |= {n.id for n in ast.walk(ast.parse(m["expr"], mode="eval")) if isinstance(n, ast.Name)}
        except SyntaxError:
            pass
    return found - set(FUNCTIONS)
