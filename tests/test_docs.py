"""The workshop pages (docs/lessonN_*.md) run, and still show what the code prints.

A command is a line of a fenced block that starts with `torchrun` or `python -m distid` (or the
same after `$ `), or the command of a `<!-- regenerate: … -->` block (distid/experiments/docs.py). Each runs as
written plus the module's TINY arguments (argparse keeps the last value of a repeated option, so they
shrink it), its data root and a temporary --out. A page that shows a module without TINY arguments
fails. For a regenerated block, what the tiny run prints must have the same line shapes as what
the page shows (numbers masked, and each side's machine words: the CPU model, GPU and torch build
the block's caption names, and this machine's; for compare and sweep, whose TINY arguments change
the grid, the same kinds of line), and every machine-independent figure the page shows (distid.experiments.docs.FIGURES:
trainable counts, bytes per step, MFLOP, the ledger's rows) must be among what it prints now.
"""

import json
import re
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_dataset, have_mnist
from distid.experiments import doc_sources, docs
from distid.config import load_config
from distid.models import build_model
from procs import REPO, run, user_env
from test_shaped import namespace_refused

DOCS = Path(REPO) / "docs"
LESSONS = sorted(DOCS.glob("lesson[0-9]*_*.md"))
GUIDES = [DOCS / "choose_your_budget.md"]  # pages beside the lessons whose commands and outputs are checked too
SOLUTIONS = sorted(DOCS.glob("solutions/lesson*.md"))  # the exercises' solutions, checked like the lessons
TINY = {
    "distid.primitives": ["--sizes", "12,1200", "--reps", "1"],
    "distid.parallel": ["--steps", "5", "--data-root", DATA_ROOT],
    "distid.train": ["--set", "train.steps=14", "--set", "train.log_every=7"],  # 2 warm-up, 10 booked, 2 timed
    "distid.experiments.methods.compare": ["--set", "train.steps=3", "--set", "train.log_every=3", "--set", "subspace.d=64"],
    "distid.experiments.intrinsic.sweep": ["--set", "sweep.d=[20,40]", "--set", "sweep.seeds=1", "--set", "train.steps=3",
                     "--set", "sweep.lora_ranks=[]", "--set", "sweep.threshold=0.4"],  # 3 steps reach ~0.5, not 0.9
    "distid.experiments.bench": ["--rounds", "1", "--steps", "2"],
    "distid.probe": ["--set", "sweep.seeds=1", "--set", "train.steps=3", "--set", "sweep.lora_max=2"],
    "distid.experiments.methods.convergence": ["--set", "train.steps=4", "--set", "train.eval_every=2"],
    "distid.experiments.communication.frontier": ["--seeds", "0", "--set", "train.steps=14", "--set", "train.eval_every=7",
                                    "--powersgd-ranks", "", "--lora-ranks", "", "--dims", "1000", "--peft", "",
                                    "--diloco-h", "", "--diloco-dims", "", "--diloco-lora-ranks", "", "--demo-topk", "",
                                    "--sparse-density", "", "--streaming-fragments", "", "--redraw-dims", "1000",
                                    "--redraw-k", "7", "--redraw-local", "",  # DDP, its hooks, a subspace fixed and
                                    # re-drawn (FEWER: the page's sections, some of its rows);
                                    # tests/test_frontier.py trains every family
                                    "--shaped", str(Path(REPO) / "tests" / "shaped_tiny.json")],  # a tiny shaped run's
    # output (the shaped command's TINY arguments, 2 ranks): the measured points beside the link model
    "distid.experiments.communication.shaped": ["--nproc", "2", "--rates", "100mbit", "--fit-sizes", "16384,65536",
                                                "--cells", "DDP", "--set", "train.steps=14",
                                                "--set", "train.eval_every=7"],  # one cell of the page's rows (FEWER)
    "distid.experiments.bench.gpt2": ["--d", "100", "--steps", "1", "--warmup", "1", "--batch", "1", "--context", "64"],
}
NEEDS_GPU = {"distid.experiments.bench.gpt2"}
NEEDS_NAMESPACE = {"distid.experiments.communication.shaped"}  # a shaped loopback in a namespace of its own
TAKES_CONFIG = {"distid.train", "distid.experiments.methods.compare", "distid.experiments.intrinsic.sweep",
                "distid.experiments.methods.convergence", "distid.probe", "distid.experiments.communication.frontier",
                "distid.experiments.communication.shaped"}  # --set data.root, --out
SMALLER = {"configs/wide_compare.toml": ["--set", "model.name=mlp"]}  # D = 20 M: ten test-set passes take minutes


FEWER = {"distid.experiments.communication.shaped", "distid.experiments.intrinsic.sweep",
         "distid.experiments.communication.frontier"}  # TINY runs fewer of
# the page's cells, seeds or LoRA ranks: its tables have other rows and columns, so table lines (`|…`) are not
# compared, beyond both sides showing a table or neither; every other line must match
WHEN = {"subspace.said=true": ["--set", "sweep.d=[80,100]"],  # SAID needs d > 72 (one scale per tensor)
        "ddp.hook=powersgd": ["--set", "powersgd.start_iter=3"]}  # compress within the tiny run's steps
SAME_GRID = {"distid.train", "distid.parallel", "distid.primitives", "distid.experiments.methods.convergence",
             "distid.experiments.bench"}  # TINY shortens the run but keeps the model and budget


def commands(page: Path) -> list[str]:
    """The command lines of a page's fenced blocks, comments removed."""
    found, fenced = [], False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        text = line.strip().removeprefix("$ ")
        if fenced and (text.startswith("torchrun ") or text.startswith("python -m distid")):
            found.append(re.sub(r"\s+#.*$", "", text))
    return found


def plain(command: str) -> str:
    """A command without its --out DIR, --redo and --shaped FILES (TINY names its own): two spellings of
    one tiny run compare equal."""
    return re.sub(r"\s+--(out \S+|redo|shaped \S+)", "", command).strip()


def cases(page: Path) -> list[tuple[str, docs.Block | None]]:
    """The page's regenerated blocks, then every other command it shows."""
    marked = docs.blocks(page)
    seen = {plain(b.command) for b in marked}
    return [(b.command, b) for b in marked] + [(c, None) for c in dict.fromkeys(commands(page)) if plain(c) not in seen]


def module_and_config(command: str) -> tuple[str, str]:
    """The module a docs command runs (`-m`) and its --config ("" without one)."""
    words = shlex.split(command)
    return words[words.index("-m") + 1], words[words.index("--config") + 1] if "--config" in words else ""


def argv(command: str, out: Path) -> list[str]:
    """The command as this test runs it: this Python, TINY arguments, data root, --out."""
    words = shlex.split(command)
    module, config = module_and_config(command)
    if module not in TINY:
        pytest.fail(f"docs show `{command}`, but tests/test_docs.py has no TINY arguments for {module}")
    head = [sys.executable, "-m", "torch.distributed.run"] if words[0] == "torchrun" else [sys.executable]
    extra = ["--set", f"data.root={DATA_ROOT}", "--out", str(out)] if module in TAKES_CONFIG else []
    if module in ("distid.experiments.bench", "distid.experiments.bench.gpt2"):
        extra = ["--out", str(out)]
    if module in ("distid.primitives", "distid.parallel"):
        extra = ["--out", str(out)]
    when = [arg for key, args in WHEN.items() if key in command for arg in args]
    return head + words[1:] + TINY[module] + SMALLER.get(config, []) + when + extra


def all_cases() -> list[tuple[Path, int, str, docs.Block | None]]:
    """Every page's cases; a shown command (not a block) that an earlier page already runs is run once."""
    found, seen = [], set()
    for page in LESSONS + GUIDES + SOLUTIONS:
        for i, (cmd, block) in enumerate(cases(page)):
            if block is None and plain(cmd) in seen:
                continue
            seen.add(plain(cmd))
            found.append((page, i, cmd, block))
    return found


CASES = all_cases()


def test_every_lesson_page_has_a_command_its_output_and_an_exercise():
    assert [p.name.split("_")[0] for p in LESSONS] == [f"lesson{i}" for i in range(1, 10)]
    for page in LESSONS:
        text = page.read_text()
        assert commands(page), f"{page.name} shows no command"
        assert re.search(r"^## Exercises?", text, re.M), f"{page.name} has no exercise"
        assert docs.blocks(page), f"{page.name} shows no output regenerated by `python -m distid.experiments.docs regenerate`"


def test_every_block_was_regenerated_and_names_its_machine():
    for page in LESSONS + GUIDES + SOLUTIONS:
        lines = page.read_text().splitlines()
        for b in docs.blocks(page):
            head = lines[b.line + 1]
            assert head.startswith("What `") or (b.options.get("gpu") and head.startswith("What it printed on")), \
                f"{page.name}:{b.line + 1}: not regenerated (run `python -m distid.experiments.docs regenerate --page {page.stem}`)"
            assert " cores" in head or "NVIDIA" in head, f"{page.name}:{b.line + 2}: the caption names no machine"
            assert b.options.get("gpu") or {"cpu", "torch"} <= docs.caption_machine(b).keys(), \
                f"{page.name}:{b.line + 2}: the caption does not name the CPU and torch as docs.CAPTION_MACHINE reads them"


def test_the_shape_and_figure_checks_fail_on_a_changed_figure():
    page = ["step   1400/1404 | train loss 0.1 | train acc 0.9 |   25.9 steps/s | 4,500 B sent/step",
            "  trained numbers   750 of D = 199,210"]
    now = ["step      4/4 | train loss 2.1 | train acc 0.2 |    9.1 steps/s | 4,500 B sent/step",
           "  trained numbers   750 of D = 199,210"]
    assert agree(page, now, "OUT", "OUT") == []
    changed = [now[0].replace("4,500", "3,000"), now[1]]
    assert agree(page, changed, "OUT", "OUT")  # a figure the code prints differently now
    reworded = [now[0], now[1].replace("trained numbers", "trainable")]
    assert agree(page, reworded, "OUT", "OUT")  # a line printed in another shape
    assert agree(["measured -1,024 B/step"], ["measured 2,048 B/step"], "OUT", "OUT") == []  # a sign is a number's
    sent = "  sent per step     {} B by each rank; full training under DDP would send 1,195,260 B (31.9× this)"
    synced = "  synchronised      every 32 steps and after the last, {} times: {} B by each rank each time; the steps between"
    diloco_page = [sent.format("37,458"), synced.format(44, "1,195,260")]  # 1,404 steps: 44 synchronisations
    diloco_tiny = [sent.format("1,195,260"), synced.format(1, "1,195,260")]  # a tiny run: one, after its last step
    assert agree(diloco_page, diloco_tiny, "OUT", "OUT") == []  # bytes per step follow the run's length there
    assert agree(diloco_page, [diloco_tiny[0], synced.format(1, "597,630")], "OUT", "OUT")  # a synchronisation's do not
    table, other = ["| DDP | 1 |", "|---|---:|", "## Heading"], ["| LoRA | 2 | 3 |", "|---|---:|---:|", "## Heading"]
    assert agree(table, other, "OUT", "OUT", kinds_only=True, fewer_rows=True) == []  # other rows and columns
    assert agree(table, other[2:], "OUT", "OUT", kinds_only=True, fewer_rows=True)  # no table at all
    assert agree(table, other[:2], "OUT", "OUT", kinds_only=True, fewer_rows=True)  # a heading gone
    made = ["Machine: Intel(R) Xeon(R) Processor, 2 cores, torch 2.13.0+cpu; warm-up 2 steps"]
    here = ["Machine: arm, 8 cores, torch 2.13.0; warm-up 2 steps"]
    assert agree(made, here, "OUT", "OUT", page_machine={"cpu": "Intel(R) Xeon(R) Processor", "torch": "2.13.0+cpu"},
                 now_machine={"cpu": "arm", "torch": "2.13.0", "gpu": ""}) == []
    assert agree(made, here, "OUT", "OUT")  # the machine's words unmasked
    assert agree(made, [here[0].replace("warm-up", "warm-up run")], "OUT", "OUT", page_machine={"cpu": "Intel(R) Xeon(R) Processor"},
                 now_machine={"cpu": "arm"})  # only the machine's words are masked


def agree(page: list[str], now: list[str], page_out, now_out, kinds_only: bool = False, figures: bool = True,
          page_machine: dict | None = None, now_machine: dict | None = None, fewer_rows: bool = False) -> list[str]:
    """What differs between the lines a page shows and the lines the code prints now. Each side's
    machine words (CPU model, GPU, torch build: `docs.unmachined`) are masked first, so a page made
    on one machine compares with a run on another. `fewer_rows`: the run's tables have other rows and
    columns than the page's (fewer cells, seeds or ranks): table lines are left out of the comparison."""
    page = [docs.unmachined(x, page_machine or {}) for x in page]
    now = [docs.unmachined(x, now_machine or {}) for x in now]
    problems = []
    if kinds_only:
        mine, theirs = {docs.kind(x) for x in page}, {docs.kind(x) for x in now}
    else:
        mine, theirs = {docs.shape(x, page_out) for x in page}, {docs.shape(x, now_out) for x in now}
    if fewer_rows:
        if any(x.startswith("|") for x in mine) != any(x.startswith("|") for x in theirs):
            problems.append("one side shows a table, the other does not")
        mine, theirs = {x for x in mine if not x.startswith("|")}, {x for x in theirs if not x.startswith("|")}
    problems += [f"the page shows a line the code no longer prints: {x!r}" for x in sorted(mine - theirs)]
    problems += [f"the code prints a line the page does not show: {x!r}" for x in sorted(theirs - mine)]
    if figures:
        shown, printed = docs.figures(page), docs.figures(now)
        for key, values in shown.items():
            if key in printed and not values <= printed[key]:
                problems.append(f"figure {key}: the page shows {sorted(values)}, the code prints {sorted(printed[key])}")
        if shown and not shown.keys() & printed.keys():
            problems.append("none of the page's figures is printed now")
    return problems


PARALLEL = 2  # tiny runs at a time: each is mostly start-up (imports on one core), so two fill two cores


def prepared(command: str, tmp: Path) -> list[str] | str:
    """The tiny run's argv (its --out is tmp/out), or why it cannot run here (a skip reason)."""
    extra = []
    module, config = module_and_config(command)
    if module in NEEDS_GPU and not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if module in NEEDS_NAMESPACE and (refused := namespace_refused()):
        return refused
    if config:
        cfg = load_config(str(Path(REPO) / config))
        if not have_dataset(cfg.data.dataset):
            return f"{cfg.data.dataset} not fetched (python -m distid.data fetch {cfg.data.dataset})"
        if cfg.model.init_from:  # a pretraining run the page shows first: stand in with fresh weights
            torch.save(build_model(cfg.model.name).state_dict(), tmp / "init.pt")
            extra = ["--set", f"model.init_from={tmp / 'init.pt'}"]
    return argv(command, tmp / "out") + extra


@pytest.fixture(scope="module")
def tiny_runs(request, tmp_path_factory):
    """{test id: (Future of the finished process, tmp) or a skip reason} for the cases this session
    selected, started in their order PARALLEL at a time, so that each test finds its run done or running.
    Under pytest-xdist every worker's session holds every item: run this file on one worker
    (`--dist loadfile`, as launch/test.sh does), or each worker would start every run."""
    wanted = {item.callspec.id for item in request.session.items
              if getattr(item, "originalname", "") == "test_docs_command_runs_at_a_tiny_size"}
    pool, runs = ThreadPoolExecutor(PARALLEL), {}
    for page, i, command, _ in CASES:
        name = f"{page.relative_to(DOCS)}:{i}"
        if name in wanted:
            tmp = tmp_path_factory.mktemp("tiny")
            cmd = prepared(command, tmp)
            runs[name] = cmd if isinstance(cmd, str) else (pool.submit(run, cmd, 300), tmp)
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.skipif(not have_mnist(), reason="MNIST not fetched (python -m distid.data fetch mnist)")
@pytest.mark.parametrize("page,i,command,block", CASES, ids=[f"{p.relative_to(DOCS)}:{i}" for p, i, _, _ in CASES])
def test_docs_command_runs_at_a_tiny_size(page, i, command, block, tiny_runs):
    job = tiny_runs[f"{page.relative_to(DOCS)}:{i}"]
    if isinstance(job, str):
        pytest.skip(job)
    future, tmp = job
    out, out_dir = future.result(), tmp / "out"
    expected = {0, int(block.options.get("exit", 0))} if block else {0}
    assert out.returncode in expected, f"{command}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    if block is None or block.options.get("exit"):
        return  # a run meant to fail fails after a number of steps the tiny run does not reach
    now = [x for x in docs.select(out.stdout, block.options) if x.strip()]
    problems = against(block, now, str(out_dir), docs.this_machine())
    assert not problems, (f"{page.name}:{block.line + 1} differs from what `{command}` prints now "
                          f"(`python -m distid.experiments.docs regenerate --page {page.stem}` rewrites it):\n" + "\n".join(problems))


def against(block: docs.Block, now: list[str], now_out: str, now_machine: dict, masked: bool = True) -> list[str]:
    """What differs between a block and the lines its tiny run printed on `now_machine`."""
    module, config = module_and_config(block.command)
    return agree(docs.shown(block), now, block.out_dir, now_out,
                 kinds_only=module not in SAME_GRID or config in SMALLER,
                 figures=module in SAME_GRID and config not in SMALLER,
                 page_machine=docs.caption_machine(block) if masked else {}, now_machine=now_machine if masked else {},
                 fewer_rows=module in FEWER)


OTHER_CPUS = ("AMD EPYC 9B14 96-Core Processor", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")


def another_cpu(cpu: str) -> str:
    """A CPU name whose first word differs from `cpu`'s (a sweep's lines are compared by their first two)."""
    return next(c for c in OTHER_CPUS if c.split()[0] != cpu.split()[0])


@pytest.mark.skipif(not have_mnist(), reason="MNIST not fetched (python -m distid.data fetch mnist)")
def test_a_block_regenerated_on_another_cpu_still_agrees_with_the_page(tmp_path, monkeypatch):
    """The lesson-5 sweep's block prints the CPU's name; regenerated (at the tiny size) by a run that
    describes its machine as another CPU, it still agrees with the page, and only because each side's
    machine words are masked."""
    page = DOCS / "lesson5_intrinsic_dimension.md"
    block, cpu = next((b, m["cpu"]) for b in docs.blocks(page) for m in [docs.caption_machine(b)]
                      if any(m["cpu"] in x for x in docs.shown(b)))  # a block whose lines name the CPU
    other = another_cpu(cpu)
    out = run(prepared(block.command, tmp_path), 300, env=user_env(DISTID_CPU_NAME=other))
    assert out.returncode == 0, out.stderr[-3000:]
    monkeypatch.setenv("DISTID_CPU_NAME", other)
    remade = tmp_path / "lesson9_remade.md"
    remade.write_text(f"<!-- regenerate: {block.command} ;; " + " ;; ".join(
        k if v is True else f"{k}={v}" for k, v in block.options.items()) + " -->\n<!-- /regenerate -->\n")
    (fresh,) = docs.blocks(remade)
    docs.rewrite(remade, {fresh.line: docs.render(fresh, docs.select(out.stdout, fresh.options), 1.0)})
    (fresh,) = docs.blocks(remade)
    assert docs.caption_machine(fresh)["cpu"] == other and any(other in x for x in docs.shown(fresh))
    now = docs.shown(fresh)
    assert against(block, now, str(tmp_path / "out"), docs.caption_machine(fresh)) == []
    assert against(block, now, str(tmp_path / "out"), docs.caption_machine(fresh), masked=False), \
        "the block should differ from the other CPU's run where the CPU is named"


def test_regenerate_rewrites_only_between_the_markers(tmp_path):
    page = tmp_path / "lesson9_x.md"
    page.write_text("intro\n\n<!-- regenerate: python -m distid.train --out runs/a ;; from=step ;; exit=1 -->\nold\n"
                    "<!-- /regenerate -->\n\noutro\n")
    (block,) = docs.blocks(page)
    assert block.command == "python -m distid.train --out runs/a" and block.options == {"from": "step", "exit": "1"}
    assert block.out_dir == "runs/a"
    printed = "banner\n" + "".join(f"step {k}/9 | loss 0.{k}\n" for k in range(1, 10)) + "closing\n\n"
    lines = docs.select(printed, block.options)
    assert lines[0] == "step 1/9 | loss 0.1" and lines[-1] == "closing"
    docs.rewrite(page, {block.line: docs.render(block, lines, 12.0)})
    text = page.read_text()
    assert text.startswith("intro\n\n<!-- regenerate:") and text.endswith("<!-- /regenerate -->\n\noutro\n")
    assert "old" not in text and "12 s" in text and "\n...\n" in text  # nine progress lines: 2, ..., 2
    assert docs.shown(docs.blocks(page)[0]) == ["step 1/9 | loss 0.1", "step 2/9 | loss 0.2",
                                                "step 8/9 | loss 0.8", "step 9/9 | loss 0.9", "closing"]


def test_select_stops_at_to_and_markdown_at_its_first_blank_line():
    text = "a\n| cell | x |\n|---|---|\n| one | 1 |\n\nwrote it\n"
    assert docs.select(text, {"from": "| cell", "format": "md"}) == ["| cell | x |", "|---|---|", "| one | 1 |"]
    assert docs.select(text, {"from": "| cell", "to": "wrote"}) == ["| cell | x |", "|---|---|", "| one | 1 |"]
    with pytest.raises(ValueError, match="no line holds"):
        docs.select(text, {"from": "nothing"})


SOURCES = DOCS / "sources"
PROSE = docs.prose_pages(DOCS)  # every page whose prose may quote a figure


def test_every_prose_figure_agrees_with_its_source():
    sources = doc_sources.load(SOURCES)
    problems = [p for page in PROSE for p in doc_sources.problems(page, sources)]
    assert not problems, ("prose figures differ from docs/sources (`python -m distid.experiments.docs figures` "
                          "renders them):\n" + "\n".join(problems))


def test_a_planted_change_to_a_figure_or_to_its_source_fails(tmp_path):
    sources = doc_sources.load(SOURCES)
    quoted = [(page, m) for page in PROSE for m in doc_sources.FIGURE.finditer(page.read_text())
              if re.fullmatch(r"[\w.]+", m["expr"]) and re.search(r"\d", m["shown"])]  # one number, read from one path
    assert quoted, "no page quotes a figure from docs/sources"
    page, m = quoted[0]
    planted = tmp_path / page.name
    planted.write_text(page.read_text().replace(m[0], m[0].replace(f"-->{m['shown']}<", f"-->{m['shown']}1<"), 1))
    assert doc_sources.problems(planted, sources), "a changed prose figure went unnoticed"
    name = sorted(doc_sources.names(m[0]))[0]
    changed = json.loads(json.dumps(sources))
    changed[name] = bump(changed[name])
    assert doc_sources.problems(page, changed), f"a changed value in docs/sources/{name}.json went unnoticed"


def bump(source: dict):
    """The source with every number in it changed (doubled, or 1 where it is 0): a figure read from one
    path of it changes."""
    def walk(x):
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return x
        return x * 2 if x else 1
    return walk(source)


def test_figures_evaluate_only_arithmetic_on_the_sources():
    src = {"run": {"seconds": 12.0, "files": {"s": {"acc": 0.97, "none": None, "cells": [{"cell": "DDP", "ms": 4.0}],
                                                  "rows": [{"cell": "DDP", "rate": 1}, {"cell": "DDP", "rate": 2}]}}}}
    assert doc_sources.text_of("run.files.s.acc", ".1%", src) == "97.0%"
    assert doc_sources.text_of('run.files.s.cells["DDP"].ms / run.seconds * 3', ".2f", src) == "1.00"
    assert doc_sources.text_of("round(run.seconds / 60)", None, src) == "0"
    assert doc_sources.text_of("45 + run.seconds / 60", ".1f", src) == "45.2"  # an int, then a float
    assert doc_sources.text_of("run.files.s.rows[1].rate + log(1)", None, src) == "2.0"
    assert doc_sources.text_of("len(run.files.s.cells) + max([run.seconds, 3])", None, src) == "13.0"
    row = "| DDP | <!--fig run.files.s.acc \\| .2f-->0.5<!--/fig--> |"  # a table's row escapes its bar
    assert doc_sources.render(row, src)[:2] == (row.replace("0.5", "0.97"), [])
    for bad in ("__import__('os')", "run.files.s.__class__", "run.nothing", "other.seconds", "run.files.s",
                "run.seconds.x", "run.files.s.none[0]", 'run.files.s.rows["DDP"]'):  # two rows named DDP
        with pytest.raises((LookupError, ValueError)):
            doc_sources.text_of(bad, None, src)
    text, failed, changed = doc_sources.render("a <!--fig run.seconds | .0f-->99<!--/fig--> s", src)
    assert text == "a <!--fig run.seconds | .0f-->12<!--/fig--> s" and failed == []
    assert changed == ["line:1: <!--fig run.seconds--> shows '99', its source gives '12'"]


def test_every_block_keeps_its_run_as_a_source_and_every_source_has_a_block():
    sources, named = doc_sources.load(SOURCES), set()
    for page in LESSONS + GUIDES + SOLUTIONS:
        for b in docs.blocks(page):
            name = docs.source_name(b)
            if b.options.get("gpu"):
                continue
            named.add(name)
            assert name in sources, f"{page.name}:{b.line + 1}: no docs/sources/{name}.json (regenerate the block)"
            facts, src = docs.caption_run(b), sources[name]
            assert src["command"] == b.command, f"docs/sources/{name}.json holds another command than {page.name}:{b.line + 1}"
            assert abs(src["seconds"] - facts["seconds"]) <= 0.55 and src["date"] == facts["date"] and \
                src["machine"]["cpu"] == facts["cpu"], f"{page.name}:{b.line + 2}: the caption is not its source's run"
    assert not set(sources) - named, f"sources no block writes: {sorted(set(sources) - named)}"


def test_one_machine_made_every_block_of_this_edition():
    machines = {(s["machine"]["cpu"], s["machine"]["cores"], s["machine"]["torch"]) for s in doc_sources.load(SOURCES).values()}
    assert len(machines) == 1, f"the pages' CPU blocks come from {len(machines)} machines: {sorted(machines)}"


def test_a_block_is_found_again_after_the_page_changed_above_it(tmp_path):
    page = tmp_path / "lesson9_x.md"
    page.write_text("intro\n<!-- regenerate: python -m distid.train --out runs/a -->\nold\n<!-- /regenerate -->\n")
    (block,) = docs.blocks(page)
    page.write_text("new intro\nwith two lines\n" + page.read_text())  # edited while the block ran
    docs.rewrite_block(block, ["new"])
    assert page.read_text().endswith("with two lines\nintro\n<!-- regenerate: python -m distid.train --out runs/a -->\n"
                                      "new\n<!-- /regenerate -->\n")
    page.write_text("intro\n")
    with pytest.raises(RuntimeError, match="gone from the page"):
        docs.rewrite_block(block, ["new"])
