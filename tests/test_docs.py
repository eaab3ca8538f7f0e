"""The workshop pages (docs/lessonN_*.md) run: every command they show, at a tiny size.

A command is a line of a fenced block that starts with `torchrun` or `python -m distid` (or the
same after `$ `, in a block that shows a command with its output). Each runs as written plus the
module's TINY arguments (argparse keeps the last value of a repeated option, so they shrink it),
its data root and a temporary --out. A page that shows a module without TINY arguments fails.
"""

import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_dataset, have_mnist
from distid.config import load_config
from distid.models import build_model
from procs import REPO, run

DOCS = Path(REPO) / "docs"
LESSONS = sorted(DOCS.glob("lesson[0-9]*_*.md"))
TINY = {
    "distid.primitives": ["--sizes", "12,1200", "--reps", "1"],
    "distid.parallel": ["--steps", "5", "--data-root", DATA_ROOT],
    "distid.train": ["--set", "train.steps=4", "--set", "train.log_every=2"],
    "distid.experiments.compare": ["--set", "train.steps=3", "--set", "train.log_every=3", "--set", "train.d=64"],
    "distid.experiments.sweep": ["--set", "sweep.d=[20,40]", "--set", "sweep.seeds=1", "--set", "train.steps=3",
                     "--set", "sweep.lora_ranks=[]"],
    "distid.experiments.bench": ["--rounds", "1", "--steps", "2"],
    "distid.experiments.convergence": ["--set", "train.steps=4", "--set", "train.eval_every=2"],
    "distid.experiments.bench.gpt2": ["--d", "100", "--steps", "1", "--warmup", "1", "--batch", "1", "--context", "64"],
}
NEEDS_GPU = {"distid.experiments.bench.gpt2"}
TAKES_CONFIG = {"distid.train", "distid.experiments.compare", "distid.experiments.sweep", "distid.experiments.convergence"}  # --set data.root, --out
SMALLER = {"configs/wide_compare.toml": ["--set", "model.name=mlp"]}  # D = 20 M: ten test-set passes take minutes


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


def argv(command: str, out: Path) -> list[str]:
    """The command as this test runs it: this Python, TINY arguments, data root, --out."""
    words = shlex.split(command)
    module = words[words.index("-m") + 1]
    if module not in TINY:
        pytest.fail(f"docs show `{command}`, but tests/test_docs.py has no TINY arguments for {module}")
    head = [sys.executable, "-m", "torch.distributed.run"] if words[0] == "torchrun" else [sys.executable]
    extra = ["--set", f"data.root={DATA_ROOT}", "--out", str(out)] if module in TAKES_CONFIG else []
    if module in ("distid.experiments.bench", "distid.experiments.bench.gpt2"):
        extra = ["--out", str(out)]
    config = words[words.index("--config") + 1] if "--config" in words else ""
    return head + words[1:] + TINY[module] + SMALLER.get(config, []) + extra


CASES = [(page.name, i, cmd) for page in LESSONS for i, cmd in enumerate(commands(page))]


def test_every_lesson_page_has_a_command_its_output_and_an_exercise():
    assert [p.name.split("_")[0] for p in LESSONS] == [f"lesson{i}" for i in range(1, 8)]
    for page in LESSONS:
        text = page.read_text()
        assert commands(page), f"{page.name} shows no command"
        assert re.search(r"^## Exercises?", text, re.M), f"{page.name} has no exercise"
        assert text.count("```") >= 4, f"{page.name} shows no output next to its command"


@pytest.mark.skipif(not have_mnist(), reason="MNIST not fetched (python -m distid.data fetch mnist)")
@pytest.mark.parametrize("page,i,command", CASES, ids=[f"{p}:{i}" for p, i, _ in CASES])
def test_docs_command_runs_at_a_tiny_size(page, i, command, tmp_path):
    words, extra = shlex.split(command), []
    if words[words.index("-m") + 1] in NEEDS_GPU and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if "--config" in words:
        cfg = load_config(str(Path(REPO) / words[words.index("--config") + 1]))
        if not have_dataset(cfg.data.dataset):
            pytest.skip(f"{cfg.data.dataset} not fetched (python -m distid.data fetch {cfg.data.dataset})")
        if cfg.model.init_from:  # a pretraining run the page shows first: stand in with fresh weights
            torch.save(build_model(cfg.model.name).state_dict(), tmp_path / "init.pt")
            extra = ["--set", f"model.init_from={tmp_path / 'init.pt'}"]
    out = run(argv(command, tmp_path / "out") + extra, timeout=300)
    assert out.returncode == 0, f"{command}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
