"""model.init_from: θ₀ read from a file, named in the summary, checked across ranks, never sent."""

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.models import pretrained
from distid.config import ConfigError, load_config
from distid.models import build_model
from distid.subspace import SubspaceModel
from distid.run.build import build
from distpool import RankFailed

D = 199_210


@pytest.fixture
def weights(tmp_path):
    """A state_dict file of the MLP built from seed 7 (so it differs from the seed-0 default)."""
    path = tmp_path / "pre.pt"
    torch.save(build_model("mlp", seed=7).state_dict(), path)
    return path


def test_init_from_makes_the_file_theta0(weights):
    model = build(load_config(None, [f"model.init_from={weights}", "subspace.d=10"]), 1)
    assert isinstance(model, SubspaceModel)
    flat = torch.cat([p.reshape(-1) for p in build_model("mlp", seed=7).parameters()])
    assert torch.equal(model.theta0, flat)
    full = build(load_config(None, [f"model.init_from={weights}", "train.method=full"]), 1)
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), build_model("mlp", seed=7).parameters()))


def test_theta0_source_names_the_file_or_the_seed(weights):
    tag = pretrained.theta0_source(str(weights), 0)
    assert tag.startswith("file:") and len(tag) == 17 and tag == pretrained.theta0_source(str(weights), 5)
    run_dir = weights.parent / "run"
    run_dir.mkdir()
    (run_dir / "trainable.pt").write_bytes(weights.read_bytes())
    assert pretrained.theta0_source(str(run_dir), 0) == tag  # a run folder means its trainable.pt
    assert pretrained.theta0_source("", 3) == "seed:3"


@pytest.mark.parametrize("what,match", [("missing", "no such file"), ("lenet", "does not fit this model"),
                                        ("junk", "cannot read it"), ("tensor", "not a state_dict")])
def test_a_bad_init_from_is_a_config_error(tmp_path, what, match):
    path = tmp_path / "w.pt"
    if what == "lenet":
        torch.save(build_model("lenet").state_dict(), path)
    elif what == "junk":
        path.write_bytes(b"not a checkpoint")
    elif what == "tensor":
        torch.save(torch.zeros(3), path)
    with pytest.raises(ConfigError, match=match):
        build(load_config(None, [f"model.init_from={path}"]), 1)


def test_a_ddp_state_dict_loads_too(tmp_path):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in build_model("mlp", seed=3).state_dict().items()}, path)
    model = build(load_config(None, [f"model.init_from={path}", "train.method=full"]), 1)
    assert torch.equal(next(model.parameters()), next(build_model("mlp", seed=3).parameters()))


needs_mnist = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
BASE = [f"data.root={DATA_ROOT}", "train.steps=14", "train.log_every=7", "subspace.d=40"]


@needs_mnist
def test_file_theta0_under_ddp_is_named_and_never_sent(dist_pool, tmp_path, weights):
    s, _ = dist_pool(2).run("rank_targets:train_run", [*BASE, f"model.init_from={weights}", "train.eval_every=7"],
                            str(tmp_path), timeout=180)[0]
    (s1, t1, a1), (s2, t2, a2) = s["eval_curve"]  # evaluated after step 7 and at the end (step 14)
    assert (s1, s2) == (7, 14) and 0 < t1 < t2 and a2 == s["test_accuracy"] and 0 < a1 <= 1
    assert s["theta0"] == pretrained.theta0_source(str(weights), 0)
    assert s["comm_payload_bytes_per_step"]["total"] == 4 * 40
    assert s["comm_payload_bytes_setup"]["total"] < 4 * 40 + 2_000  # D = 199,210 floats would be 796,840 B


@needs_mnist
def test_ranks_with_different_theta0_files_fail_loudly(dist_pool, tmp_path, weights):
    other = tmp_path / "other.pt"
    torch.save(build_model("mlp", seed=8).state_dict(), other)
    with pytest.raises(RankFailed, match="ranks disagree on theta0"):
        dist_pool(2).run("rank_targets:train_run", [*BASE, "train.method=full", f"model.init_from={weights}"],
                         str(tmp_path), rank_overrides={1: [f"model.init_from={other}"]}, timeout=120)
