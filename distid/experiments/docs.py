"""The lesson pages' output blocks, regenerated from real runs.

    python -m distid.experiments.docs regenerate [--page lesson4 ...] [--match TEXT]   # rerun and rewrite (repo root)
    python -m distid.experiments.docs list                                # the blocks and their commands
    python -m distid.experiments.docs figures                             # the prose figures, from docs/sources
    python -m distid.experiments.docs sources [--page …] [--match TEXT]   # sources from existing runs, no rerun

A page marks each block it shows with the command that printed it:

    <!-- regenerate: torchrun --standalone --nproc_per_node=4 -m distid.train --config C --out runs/doc_x -->
    What `…` printed (machine, seconds, date):
    ```
    …output…
    ```
    <!-- /regenerate -->

Options follow the command after ` ;; `: `from=TEXT` (start at the first line holding TEXT), `to=TEXT`
(stop before the first line holding TEXT after that), `format=md` (the lines go in as markdown, not
a fenced block), `exit=N` (the exit code the page expects, default 0), `copy=SRC:DEST[,SRC:DEST…]` (files the
run wrote that the page shows, e.g. a chart), `keep` (every line, none elided), `gpu` (needs a CUDA GPU: kept as it is elsewhere). Everything between the two markers is rewritten; runs of five or more
lines of one kind (progress lines, a sweep's points) keep their first and last two around `...`.

Each block's run is kept beside the pages as docs/sources/NAME.json (NAME: its --out folder's name, `-` as `_`;
a second block on the same folder adds `_2`): the command, the machine, its seconds and date, and the top-level
JSON files the run wrote (without their `config`, and without lists of more than LONG numbers or lists). A figure
quoted in prose is a reference into them, which the generator renders and the docs test checks:

    test accuracy <!--fig doc_full.files.summary.test_accuracy | .4f-->0.9759<!--/fig-->

The expression is arithmetic on SOURCE.file.key paths (`[k]` for a list index, or a string naming the item
whose cell/name/variant is k), with min, max, abs, round, sum, len and log; after ` | ` a format spec. `figures` rewrites every
page's figures from the sources; `sources` writes a source from a block's existing --out without running it.

tests/test_docs.py runs every marked command at a tiny size and checks that what the page shows
still has the shape, and the figures that do not depend on the machine (FIGURES), of what the
code prints now.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distid import runtime
from distid.experiments import doc_sources

DOCS = Path("docs")
START = re.compile(r"^<!-- regenerate: (.*) -->$")
END = "<!-- /regenerate -->"

# Figures that depend only on the model, the config and the code, never on the machine or the run's
# length: (regex, how many leading groups name the figure). A page's figure must be among what the
# code prints now for the same name (tests/test_docs.py).
FIGURES = [
    (re.compile(r"trained numbers\s+([\d,]+)"), 0),
    (re.compile(r"sent per step\s+([\d,]+) B by each rank; full training under DDP would send ([\d,]+) B \((?:this run sends )?([\d,.]+)×"), 0),
    (re.compile(r"synchronised\s+every (\d+) steps and after the last, [\d,]+ times: ([\d,]+) B by each rank each time"), 0),
    (re.compile(r"compute\s+([\d,.]+) MFLOP"), 0),
    (re.compile(r"kept per rank\s+(.*) \(the strategy's own; optimizer state ([\d,]+) B\)"), 0),
    (re.compile(r"^(all_reduce|all_gather|reduce_scatter|broadcast)\s+([\d.]+)\s+([\d,]+)\s+([\d,]+)$"), 1),
    (re.compile(r"\| ([\d,]+) B sent/step$"), 0),
    (re.compile(r"^(\w+)\s+(float32|int64)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)"), 3),
    (re.compile(r"^hand ring all-reduce\s+\S+\s+\S+\s+\S+\s+([\d,]+)"), 0),
    (re.compile(r"ring formula .*= ([\d,]+) bytes/rank/step; exact .*: ([\d,]+)"), 0),
    (re.compile(r"^\| (full|lora|subspace) \| ([\d,]+(?: \(r=\d+\))?) \|"), 1),
]


@dataclass
class Block:
    """One marked block: its page, the marker's line index, the command and the options."""

    page: Path
    line: int
    command: str
    options: dict = field(default_factory=dict)
    raw: str = ""  # the marker's text: command and options
    nth: int = 0  # how many identical markers come before it on the page

    @property
    def out_dir(self) -> str | None:
        words = shlex.split(self.command)
        return words[words.index("--out") + 1] if "--out" in words else None


def source_name(block: Block) -> str | None:
    """The name of the block's source (docs/sources/NAME.json): its --out folder's name, `-` as `_`, and
    `_2`, `_3`… for a later block of the same page on the same folder (None without --out)."""
    if not block.out_dir:
        return None
    base = Path(block.out_dir).name.replace("-", "_")
    before = [b for b in blocks(block.page) if b.line < block.line and b.out_dir and
              Path(b.out_dir).name.replace("-", "_") == base]
    return base + (f"_{len(before) + 1}" if before else "")


def blocks(page: Path) -> list[Block]:
    """The marked blocks of a page, in order."""
    found = []
    for i, line in enumerate(page.read_text().splitlines()):
        m = START.match(line)
        if m:
            command, *opts = [part.strip() for part in m.group(1).split(" ;; ")]
            options = dict(o.split("=", 1) if "=" in o else (o, True) for o in opts)
            nth = sum(b.raw == m.group(1) for b in found)
            found.append(Block(page, i, command, options, m.group(1), nth))
    return found


def argv(command: str) -> list[str]:
    """A page's command as this Python runs it (`torchrun` → `python -m torch.distributed.run`)."""
    words = shlex.split(command)
    if words[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    raise ValueError(f"a docs command starts with torchrun or python: {command!r}")


def environment() -> dict:
    """The environment of a student's shell after `. .venv/bin/activate` (launch/setup.sh), and
    charts checked strictly (plotting.save)."""
    return dict(os.environ, OMP_NUM_THREADS="1", DISTID_THREADS="auto", PYTHONUNBUFFERED="1",
                DISTID_STRICT_CHARTS="1")  # a chart the pages show has no overlapping text


def select(text: str, options: dict) -> list[str]:
    """The lines a block shows: from the first holding options['from'] to before options['to']
    (markdown: to the first blank line), trailing blank lines dropped."""
    lines = text.splitlines()
    if "from" in options:
        start = next((i for i, line in enumerate(lines) if options["from"] in line), None)
        if start is None:
            raise ValueError(f"no line holds from={options['from']!r}")
        lines = lines[start:]
    if "to" in options:
        lines = lines[:next((i for i, line in enumerate(lines) if i and options["to"] in line), len(lines))]
    elif options.get("format") == "md":
        lines = lines[:next((i for i, line in enumerate(lines) if not line.strip()), len(lines))]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def kind(line: str) -> str:
    """What a line is, for eliding: its first two words with digits masked (`step #/#`, `[rank #]`)."""
    return " ".join(re.sub(r"\d+", "#", line).split()[:2])


def elide(lines: list[str], run: int = 5) -> list[str]:
    """Runs of `run` or more consecutive lines of one kind keep their first and last two around `...`."""
    out, i = [], 0
    while i < len(lines):
        j = i
        while j < len(lines) and lines[j].strip() and kind(lines[j]) == kind(lines[i]):
            j += 1
        group = lines[i:max(j, i + 1)]
        out += group[:2] + ["..."] + group[-2:] if len(group) >= run else group
        i = max(j, i + 1)
    return out


CAPTION_MACHINE = [  # what a caption says of its machine (`caption`; a GPU block's caption is written by hand)
    re.compile(r"printed \((?P<cpu>.+?), \d+ cores(?:, (?P<gpu>[^;]+?))?, torch (?P<torch>[^;,\s]+)"),
    re.compile(r"printed on (?:an? )?(?P<gpu>NVIDIA [^(]+?) \(torch (?P<torch>[^;,\s)]+)"),
]


def caption_machine(block: Block) -> dict[str, str]:
    """The machine a page's block was made on, as its caption names it: {'cpu', 'torch'} and, for a
    GPU block, 'gpu' ({} for a caption in another form)."""
    lines = block.page.read_text().splitlines()
    head = lines[block.line + 1] if block.line + 1 < len(lines) else ""
    m = next((m for rx in CAPTION_MACHINE if (m := rx.search(head))), None)
    return {k: v for k, v in m.groupdict().items() if v} if m else {}


def this_machine() -> dict[str, str]:
    """The machine the code runs on now, in the caption's terms (`caption_machine`)."""
    import torch

    m = runtime.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {k: v for k, v in (("cpu", m["cpu"]), ("torch", m["torch"]), ("gpu", gpu)) if v}


def unmachined(line: str, machine: dict[str, str]) -> str:
    """The line with the machine's own words (CPU model, GPU, torch build), where they stand as whole
    words, as <cpu>, <gpu>, <torch>: what a run prints on another machine differs from the page there,
    and in numbers, and nowhere else."""
    for key, name in sorted(machine.items(), key=lambda kv: -len(kv[1])):
        if name.strip():
            line = re.sub(rf"(?<!\w){re.escape(name.strip())}(?!\w)", f"<{key}>", line)
    return line


def shape(line: str, out_dir: str | None) -> str:
    """A line with its output folder as OUT, numbers as #, whitespace collapsed: what must not change."""
    if out_dir:
        line = line.replace(out_dir.rstrip("/"), "OUT")
    line = re.sub(r"(?<![\w.])-(?=\d)", "", line)  # a sign: a measured difference can fall either side of 0
    line = re.sub(r"\d[\d,]*(\.\d+)?(e[+-]\d+)?|\bnan\b", "#", line)  # nan: too few steps to time
    return " ".join(line.split())


SENT_PER_STEP = 1  # FIGURES' index of "sent per step": with synchronisations between steps (local steps)
# it is a synchronisation's bytes × their count ÷ steps, which depends on the run's length; the
# synchronisation's own bytes (the next pattern) do not


LEDGER_ROWS = 5  # FIGURES' index of the ledger's rows: per synchronisation of a part of the model (Streaming
# DiLoCo) an average over parts of unequal size, which depends on the run's length too


def figures(lines: list[str]) -> dict[tuple, set]:
    """The machine-independent figures the lines show (FIGURES): {(pattern index, name): {values}}."""
    found: dict[tuple, set] = {}
    parts = any("a part of the model at a time" in line for line in lines)
    between = parts or any(FIGURES[SENT_PER_STEP + 1][0].search(line) for line in lines)
    for line in lines:
        for k, (rx, nkey) in enumerate(FIGURES):
            if k == SENT_PER_STEP and between or k == LEDGER_ROWS and parts:
                continue
            if m := rx.search(line):
                found.setdefault((k, m.groups()[:nkey]), set()).add(m.groups()[nkey:])
    return found


def shown(block: Block) -> list[str]:
    """The output lines a page shows between the block's markers (caption, fences and `...` left out)."""
    lines = block.page.read_text().splitlines()
    end = next(j for j in range(block.line + 1, len(lines)) if lines[j] == END)
    body = lines[block.line + 2:end]  # after the caption
    return [line for line in body if line.strip() and line != "..." and not line.startswith("```")]


CAPTION_RUN = re.compile(r"\((?P<cpu>.+?), (?P<cores>\d+) cores.*?; (?P<seconds>[\d.]+) s, (?P<date>\d{4}-\d\d-\d\d)\):$")


def caption_run(block: Block) -> dict:
    """What a CPU block's caption says of its run: cpu, cores, torch, seconds, date ({} if it says none)."""
    lines = block.page.read_text().splitlines()
    m = CAPTION_RUN.search(lines[block.line + 1]) if block.line + 1 < len(lines) else None
    if not m:
        return {}
    return {"cpu": m["cpu"], "cores": int(m["cores"]), "torch": caption_machine(block).get("torch", ""),
            "seconds": float(m["seconds"]), "date": m["date"]}


def write_source(block: Block, seconds: float, date: str, machine: dict) -> Path | None:
    """The block's run, kept as docs/sources/NAME.json (doc_sources.source_of)."""
    name = source_name(block)
    if name is None:
        return None
    out = Path(block.out_dir)
    source = doc_sources.source_of(block.command, str(block.page), machine, seconds, date, out)
    return doc_sources.write(name, source, DOCS / "sources")


def caption(block: Block, seconds: float) -> str:
    import torch

    m = runtime.machine()
    gpu = f", {torch.cuda.get_device_name()}" if block.options.get("gpu") else ""
    return (f"What `{block.command}` printed ({m['cpu']}, {m['cores']} cores{gpu}, torch {m['torch']}; "
            f"{seconds:.0f} s, {time.strftime('%Y-%m-%d')}):")


def render(block: Block, lines: list[str], seconds: float) -> list[str]:
    """The text between the markers."""
    body = lines if block.options.get("keep") else elide(lines)
    if block.options.get("format") == "md":
        return [caption(block, seconds), "", *body, ""]
    return [caption(block, seconds), "", "```", *body, "```"]


def regenerate(block: Block) -> list[str] | None:
    """Run the block's command; the new text between its markers, or None (kept: needs a GPU)."""
    if block.options.get("gpu"):
        import torch

        if not torch.cuda.is_available():
            return None
    t0 = time.perf_counter()
    res = subprocess.run(argv(block.command), capture_output=True, text=True, env=environment())
    seconds = time.perf_counter() - t0
    if res.returncode != int(block.options.get("exit", 0)):
        said = res.stderr[res.stderr.find("Traceback"):][:3000] if "Traceback" in res.stderr else res.stderr[-2000:]
        raise RuntimeError(f"{block.page}:{block.line + 1}: `{block.command}` exited {res.returncode} "
                           f"(the page expects {block.options.get('exit', 0)}):\n{said}")
    lines = select(res.stdout, block.options)
    m = runtime.machine()
    write_source(block, seconds, time.strftime("%Y-%m-%d"), {"cpu": m["cpu"], "cores": m["cores"], "torch": m["torch"]})
    if "copy" in block.options:  # files the run wrote, shown on the page: SRC:DEST[,SRC:DEST…]
        for pair in block.options["copy"].split(","):
            src, dest = pair.split(":")
            shutil.copyfile(src, dest)
    return render(block, lines, seconds)


def rewrite_block(block: Block, text: list[str]) -> None:
    """Replace the text between the block's markers, found again by its marker line: the page may have
    been edited above it while the block ran."""
    lines = block.page.read_text().splitlines()
    at = [i for i, line in enumerate(lines) if line == f"<!-- regenerate: {block.raw} -->"]
    if not at:
        raise RuntimeError(f"{block.page}: the block `{block.command}` is gone from the page; its output is not written")
    if block.nth >= len(at):
        raise RuntimeError(f"{block.page}: the block `{block.command}` is no longer the same on the page "
                           f"(an identical block before it is gone); its output is not written")
    rewrite(block.page, {at[block.nth]: text})


def rewrite(page: Path, new: dict[int, list[str]]) -> None:
    """Replace the text after each marker line (by index) up to its END marker."""
    lines, out, i = page.read_text().splitlines(), [], 0
    while i < len(lines):
        out.append(lines[i])
        if i in new:
            end = next(j for j in range(i + 1, len(lines)) if lines[j] == END)
            out += new[i]
            i = end
            continue
        i += 1
    page.write_text("\n".join(out) + "\n")


def pages(names: list[str]) -> list[Path]:
    found = sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("solutions/*.md"))
    chosen = [p for p in found if not names or any(p.name.startswith(n) or str(p.relative_to(DOCS)).startswith(n)
                                                   for n in names)]
    if names and not chosen:
        raise SystemExit(f"error: no page in {DOCS}/ starts with {', '.join(names)}")
    return [p for p in chosen if blocks(p)]


def main(argv_: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distid.experiments.docs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("regenerate", "list", "figures", "sources"))
    p.add_argument("--page", action="append", default=[], help="a page name or its prefix (lesson4); repeatable")
    p.add_argument("--match", default="", help="only the blocks whose command holds this text (e.g. mnist_compare)")
    args = p.parse_args(argv_)
    if not DOCS.is_dir():
        print("error: run from the repository root (no docs/ here)", file=sys.stderr)
        return 2
    if args.what == "figures":
        return render_figures()
    for page in pages(args.page):
        for k in range(len(blocks(page))):
            block = blocks(page)[k]  # read again: the blocks above may have changed length
            if args.match not in block.command:
                continue
            if args.what == "list":
                print(f"{page}:{block.line + 1}: {block.command}")
            elif args.what == "sources":
                print(f"{page}:{block.line + 1}: {kept_source(block)}", flush=True)
            else:
                print(f"{page}:{block.line + 1}: running `{block.command}`", flush=True)
                text = regenerate(block)
                if text is None:
                    print("  kept as it is: needs a CUDA GPU", flush=True)
                    continue
                rewrite_block(block, text)  # each block as it finishes: an interrupted run keeps its work
                print(f"  wrote {page}", flush=True)
    return render_figures() if args.what in ("regenerate", "sources") else 0


def kept_source(block: Block) -> str:
    """Write the block's source from its existing --out and what its caption says, without running it."""
    facts = caption_run(block)
    if not facts or not block.out_dir or not Path(block.out_dir).is_dir():
        return f"no source written: {'no --out folder ' + str(block.out_dir) if facts else 'its caption names no run'}"
    machine = {k: facts[k] for k in ("cpu", "cores", "torch")}
    return f"wrote {write_source(block, facts['seconds'], facts['date'], machine)}"


def prose_pages(docs_dir: Path = DOCS) -> list[Path]:
    """Every page whose prose may quote a figure: the docs, their subfolders, and the README beside them."""
    return [*sorted(docs_dir.rglob("*.md")), docs_dir.parent / "README.md"]


def render_figures() -> int:
    """Render every page's prose figures from docs/sources; 1 (and why) where one cannot be."""
    sources, bad = doc_sources.load(DOCS / "sources"), []
    for page in prose_pages():
        text = page.read_text()
        new, failed, _ = doc_sources.render(text, sources, str(page))
        bad += failed
        if new != text:
            page.write_text(new)
            print(f"figures: rewrote {page}", flush=True)
    for line in bad:
        print(f"error: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
