"""Re-drawn subspaces (subspace.redraw_every = K; run/redraw.py): a re-draw folds P·d into θ₀
without changing the function, starts a new d at zero in a new basis drawn from the seed, sends
nothing (the bytes per step are the fixed subspace's: 4·d handed in), and a checkpoint replays θ₀
from the d of every fold (k + resume == 2k across a re-draw, bitwise); what cannot run is refused
in one line."""

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.config import ConfigError, load_config
from distid.models import build_model
from distid.subspace import SubspaceModel
from distid.strategies import choose
from distid.run.redraw import refuse

mnist = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
BASE = {"data.root": DATA_ROOT, "train.global_batch": 120, "train.log_every": 100, "subspace.d": 64,
        "subspace.redraw_every": 4}


def over(**kv):
    return [f"{k}={v}" for k, v in {**BASE, **kv}.items()]


def train(pool, out, resume=False, **kv):
    return pool.run("rank_targets:train_run", over(**kv), str(out), resume=resume, timeout=240)


@pytest.mark.parametrize("projection", ["fastfood", "dense", "sparse"])
def test_a_redraw_keeps_the_function_and_starts_a_new_d_in_a_new_basis(projection):
    m = SubspaceModel(build_model("mlp", seed=0), 50, projection, seed=0)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        m.d.normal_()
    theta, p_e1 = m.theta().detach().clone(), m.projection.matvec(torch.eye(50)[0])
    m.redraw()
    assert torch.allclose(m.theta(), theta, atol=1e-6) and torch.equal(m.d, torch.zeros(50))
    assert m.draw == 1 and not torch.allclose(m.projection.matvec(torch.eye(50)[0]), p_e1)
    assert torch.allclose(m.theta0, theta, atol=1e-6)  # θ₀ ← θ₀ + P·d
    again = SubspaceModel(build_model("mlp", seed=0), 50, projection, seed=0)
    again.replay(m.folded)
    assert torch.equal(again.theta0, m.theta0) and torch.equal(again(x), m(x))  # the replay is bitwise


def test_what_cannot_run_is_refused_in_one_line():
    cases = {("dist.strategy=fsdp",): r"runs under dist.strategy = 'none', 'ddp', 'local_sgd'; this run's is 'fsdp'",
             ("dist.strategy=local_sgd", "local_sgd.every=3"): r"must be a multiple of the 3 steps between "
                                                               r"synchronisations of DiLoCo \(H = 3\)",
             ("subspace.layerwise=true",): r"cannot be combined with subspace.layerwise",
             ("subspace.said=true",): r"cannot be combined with subspace.said"}
    for sets, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern) as e:
            cfg = load_config(None, ["subspace.redraw_every=4", *sets])
            refuse(cfg, choose(cfg, 2, torch.device("cpu")))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"subspace.redraw_every must be 0 unless train.method = 'subspace'"):
        load_config(None, ["subspace.redraw_every=4", "train.method=full"])


@mnist
@pytest.mark.parametrize("n", [2, 4])
def test_bytes_per_step_are_the_fixed_subspace_s_and_the_ranks_fold_alike(dist_pool, tmp_path, n):
    """d = 64 under DDP: 4 · 64 = 256 bytes handed in per step, re-draws or not, and 2·(N−1)/N of
    that on the wire; 10 steps at K = 4: re-draws after steps 4 and 8, θ₀ compared after each."""
    results = train(dist_pool(n), tmp_path, **{"train.steps": 10})
    for s, d in results:
        assert s["comm_payload_bytes_per_step"] == {"all_reduce": 256.0, "total": 256.0}
        assert s["comm_wire_bytes_per_step"]["total"] == pytest.approx(2 * (n - 1) / n * 256)
        assert s["comm_payload_formula"]["total"] == 256
    assert all(torch.equal(results[0][1], d) for _, d in results[1:])
    folded = torch.load(tmp_path / "trainable.pt")["folded"]
    assert folded.shape == (2, 64) and folded.abs().sum() > 0


@mnist
@pytest.mark.parametrize("strategy", ["ddp", "local_sgd"])
def test_k_steps_and_a_resume_equal_2k_across_a_redraw(dist_pool, tmp_path, strategy):
    """Cut after 6 steps (one re-draw behind it, Adam's moments reset there) or after 8 (a re-draw at
    the cut itself), resumed to 14: bitwise the straight run — θ₀ replayed from the folds, d, Adam and
    (local steps, H = 2) θ_start and the outer momentum as they were."""
    pool = dist_pool(2)
    kv = {"dist.strategy": strategy, "checkpoint.every": 2, "local_sgd.every": 2}
    train(pool, tmp_path / "whole", **{"train.steps": 14, **kv})
    whole = torch.load(tmp_path / "whole" / "trainable.pt")
    assert whole["folded"].shape == (3, 64)  # after steps 4, 8 and 12
    for cut in (6, 8):
        train(pool, tmp_path / f"cut{cut}", **{"train.steps": cut, **kv})
        resumed = train(pool, tmp_path / f"cut{cut}", resume=True, **{"train.steps": 14, **kv})
        assert resumed[0][0]["resumed_from_step"] == cut
        again = torch.load(tmp_path / f"cut{cut}" / "trainable.pt")
        assert torch.equal(whole["folded"], again["folded"]) and torch.equal(whole["d"], again["d"]), cut


@mnist
def test_reset_and_keep_differ_and_both_train(dist_pool, tmp_path):
    pool = dist_pool(2)
    runs = {how: train(pool, tmp_path / how, **{"train.steps": 40, "subspace.redraw_every": 10,
                                                 "subspace.redraw_optimizer": how}) for how in ("reset", "keep")}
    folded = {how: torch.load(tmp_path / how / "trainable.pt")["folded"] for how in runs}  # [4, 64]: the last step folds too
    assert folded["reset"].shape == (4, 64) and not torch.equal(folded["reset"][1:], folded["keep"][1:])
    assert torch.equal(folded["reset"][0], folded["keep"][0])  # the first subspace: no re-draw behind it yet
    for how, results in runs.items():  # both learn across 3 re-draws: after one step the accuracy is 0.149
        assert results[0][0]["test_accuracy"] > 0.19, how
