"""The strategy interface from outside distid: a strategy defined here, named by import path in the
config, trains on 2 ranks through `python -m distid.train` with no change to distid; a strategy's
settings are named in its own file only (and in the config and the summary's schema)."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from datasets_for_tests import DATA_ROOT, REPO, have_mnist
from distid.config import ConfigError
from distid.strategies import Strategy
from distid.strategies.base import find
from procs import run, user_env

D_SUB = 750  # the quickstart config's d


class AverageAtEnd(Strategy):
    """Each rank trains alone; after the last step one all-reduce averages the replicas."""

    own_optimizer = True
    own_state = "optimizer state"

    @property
    def label(self) -> str:
        return "average at the end"

    def wrap(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad]
        return model

    def attach(self, opt, ledger, start, steps):
        self.ledger, self.done, self.steps, self.period = ledger, start, steps, steps
        each = 4 * sum(p.numel() for p in self.params) / steps
        self.payload = {"all_reduce": each, "total": each}
        opt.register_step_post_hook(lambda *_: self.after_step())

    def after_step(self):
        self.done += 1
        if self.done == self.steps:
            with self.ledger.phase("sync", steps=1), torch.no_grad():
                self.average()

    def average(self):
        flat = _flatten_dense_tensors([p.detach() for p in self.params]).div_(self.n)
        dist.all_reduce(flat)
        for p, mean in zip(self.params, _unflatten_dense_tensors(flat, self.params)):
            p.copy_(mean)


class NeverAverage(AverageAtEnd):
    """The same, without the average: the replicas end apart, which the run must catch."""

    def average(self):
        pass


def train(tmp_path, strategy, steps=20):
    out = tmp_path / strategy.rpartition(":")[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "distid.train",
           "--config", "configs/mnist_fc_subspace.toml", "--out", str(out), "--set", f"data.root={DATA_ROOT}",
           "--set", f"train.steps={steps}", "--set", f"dist.strategy={strategy}", "--set", "train.log_every=10"]
    return run(cmd, timeout=180, env=user_env(PYTHONPATH=str(Path(__file__).parent))), out


@pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
def test_a_strategy_named_by_import_path_trains_through_distid_train(tmp_path):
    proc, out = train(tmp_path, "test_strategy_api:AverageAtEnd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["strategy"] == "test_strategy_api:AverageAtEnd" and s["strategy_label"] == "average at the end"
    assert s["comm_syncs"] == 1 and s["sync_period"] == 20 and not s["ddp_active"]
    assert s["comm_payload_bytes_per_sync"] == {"all_reduce": 4 * D_SUB, "total": 4 * D_SUB}
    assert s["comm_payload_bytes_per_step"]["total"] == 4 * D_SUB / 20 == s["comm_payload_formula"]["total"]
    assert s["comm_payload_bytes_inner_step"] == {"total": 0}  # the steps themselves called no collective
    assert "average at the end on 2 ranks" in proc.stdout
    # without the average the replicas part, and the run's closing replica check says so
    proc, _ = train(tmp_path, "test_strategy_api:NeverAverage")
    assert proc.returncode != 0 and "after 20 steps the replicas' trainable states differ" in proc.stderr


def test_a_strategy_path_that_does_not_import_is_one_config_error():
    with pytest.raises(ConfigError, match=r"dist.strategy = 'nowhere.at_all:Thing': cannot import"):
        find("nowhere.at_all:Thing")
    with pytest.raises(ConfigError, match="is not a subclass of distid.strategies.Strategy"):
        find("torch.nn:Linear")
    assert find("test_strategy_api:AverageAtEnd") is AverageAtEnd and find("ddp").__name__ == "DDP"


# A strategy's settings, as code and docs inside distid/ may name them, and the files allowed to.
OWN_SETTINGS = {
    "local steps": (r"sync_every|\blocal_sgd\.(every|outer\w*)\b|\bcfg\.local_sgd\b|\bouter_(lr|momentum|dtype)\b",
                    ("strategies/local_sgd.py", "strategies/streaming_diloco.py",  # reads [local_sgd]
                     "strategies/sparse_loco.py")),  # [sparse_loco] has its own outer_lr
    "DDP's comm hook": (r"\bcomm_hook\b|\bddp\.hook\b", ("strategies/ddp.py", "strategies/hooks.py")),
    "PowerSGD": (r"\bpowersgd_(rank|start_iter|error_feedback)\b|\bpowersgd\.(rank|start_iter|error_feedback)\b|"
                 r"\bcfg\.powersgd\b", ("strategies/hooks.py",)),
}
EVERYWHERE = ("config.py", "observe/summary.py")  # the config defines every key; the summary's schema names its own


@pytest.mark.parametrize("what", list(OWN_SETTINGS))
def test_only_a_strategy_s_own_file_names_its_settings(what):
    pattern, own = OWN_SETTINGS[what]
    found = sorted({p.relative_to(REPO / "distid").as_posix() for p in (REPO / "distid").rglob("*.py")
                    if re.search(pattern, p.read_text())})
    assert set(own) <= set(found), f"the pattern for {what} misses its own file: {found}"  # it can match
    assert [f for f in found if f not in own + EVERYWHERE] == [], f"{what}'s settings are named outside its file"
