"""DeMo (dist.strategy = "demo", strategies/demo.py; gloo, 2–4 ranks): the DCT, the top-k and the
residual checked against the paper's equations on tiny tensors; the decode is the mean over the ranks
that sent a component; the one all-gather hands in Σ k·(4 + index bytes), worked out by hand for the
MNIST MLP at 2 and 4 ranks; the replicas agree after every step (and a rank that drifts is caught);
k steps + resume == 2k straight, bitwise; what cannot work is refused in one line."""

import math

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.config import ConfigError, load_config
from distid.models import build_model
from distid.strategies.demo import Chunks, DeMo, dct_matrix, largest_divisor
from distpool import RankFailed

mnist = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
DEMO = {"dist.strategy": "demo", "train.optimizer": "sgd", "train.method": "full", "train.lr": 1e-3}
BASE = {"data.root": DATA_ROOT, "train.global_batch": 120, "train.log_every": 100, "subspace.d": 64,
        "dist.check_replicas_every": 1, **DEMO}


def over(**kv):
    return [f"{k}={v}" for k, v in {**BASE, **kv}.items()]


def train(pool, out, resume=False, **kv):
    return pool.run("rank_targets:train_run", over(**kv), str(out), resume=resume, timeout=240)


def one_rank(model, *sets):
    """DeMo on one process (no group) over `model`, its optimizer hooked; returns (strategy, optimizer)."""
    cfg = load_config(None, [f"{k}={v}" for k, v in DEMO.items()] + list(sets))
    strategy = DeMo(cfg, 1, torch.device("cpu"))
    strategy.wrap(model)
    opt = strategy.make_optimizer([p for p in model.parameters() if p.requires_grad])
    strategy.attach(opt, None, 0, 1)
    return strategy, opt


def test_the_dct_is_the_orthonormal_dct_ii():
    """C[f, j] = s_f·cos(π(2j + 1)f / 2n), s_0 = √(1/n), s_f = √(2/n), summed here term by term;
    a constant vector of ones has one component, √n at f = 0."""
    n = 6
    x = [0.5, -1.0, 2.0, 0.0, 3.0, -0.25]
    by_hand = [(math.sqrt(1 / n) if f == 0 else math.sqrt(2 / n))
               * sum(x[j] * math.cos(math.pi * (2 * j + 1) * f / (2 * n)) for j in range(n)) for f in range(n)]
    C = dct_matrix(n)
    assert torch.allclose(C @ torch.tensor(x), torch.tensor(by_hand), atol=1e-6)
    assert torch.allclose(C @ C.T, torch.eye(n), atol=1e-6)  # orthonormal: the inverse is Cᵀ
    assert torch.allclose(C @ torch.ones(n), torch.tensor([math.sqrt(n), 0, 0, 0, 0, 0]), atol=1e-6)


def test_chunks_are_the_largest_divisors_at_most_the_chunk():
    """The reference's `_get_smaller_split`: 784 → 56, 200 → 50, 10 → 10 (itself) at chunk 64."""
    assert [largest_divisor(s, 64) for s in (784, 200, 10, 64, 97)] == [56, 50, 10, 64, 1]
    c = Chunks.of(torch.empty(200, 784), 64, 32)
    assert (c.h, c.w, c.blocks, c.k) == (50, 56, 4 * 14, 32)
    assert Chunks.of(torch.empty(10), 64, 32).k == 10  # k at most the chunk's size


def test_a_chunk_equal_to_one_cosine_is_sent_whole_and_leaves_nothing():
    """m = 3·C[2] (g on the first step, m = 0 before): its DCT is 3 at f = 2 and 0 elsewhere; top-1
    sends (2, 3.0); m − IDCT(q) = 0; the step is θ ← θ − lr·sign(C[2])."""
    model = torch.nn.Linear(8, 1, bias=False)
    strategy, opt = one_rank(model, "demo.chunk=8", "demo.topk=1")
    C = dct_matrix(8)
    model.weight.grad = (3 * C[2]).reshape(1, 8).clone()
    values, indices = strategy.compress()
    assert indices.tolist() == [2] and values.tolist() == pytest.approx([3.0])
    assert strategy.momentum[0].abs().max() < 1e-6  # the residual

    model.weight.grad = (3 * C[2]).reshape(1, 8).clone()
    strategy.momentum[0].zero_()
    before = model.weight.detach().clone()
    opt.step()
    assert torch.equal(model.weight.grad, torch.sign(C[2]).reshape(1, 8))  # what SGD stepped on
    assert torch.equal(model.weight.detach(), before.add(torch.sign(C[2]).reshape(1, 8), alpha=-1e-3))


def test_a_2d_block_sends_its_largest_component_and_keeps_the_rest():
    """A 4 × 6 matrix m = 2·C₄[1] ⊗ C₆[3] + 0.5·C₄[0] ⊗ C₆[0] (one block at chunk 8): its 2-D DCT
    C₄·m·C₆ᵀ is 2 at (1, 3), flat index 1·6 + 3 = 9, and 0.5 at (0, 0); top-1 sends (9, 2.0) and the
    residual is 0.5·C₄[0] ⊗ C₆[0] = 0.5/√24 everywhere; with β = 0.5 and g = 0 next, m halves, and its
    one component (0, 0) = 0.25 is sent, leaving 0."""
    model = torch.nn.Linear(6, 4, bias=False)
    strategy, _ = one_rank(model, "demo.chunk=8", "demo.topk=1", "demo.decay=0.5")
    C4, C6 = dct_matrix(4), dct_matrix(6)
    model.weight.grad = 2 * torch.outer(C4[1], C6[3]) + 0.5 * torch.outer(C4[0], C6[0])
    values, indices = strategy.compress()
    assert indices.tolist() == [9] and values.tolist() == pytest.approx([2.0])
    assert torch.allclose(strategy.momentum[0], torch.full((4, 6), 0.5 / math.sqrt(24)), atol=1e-6)
    model.weight.grad = None
    values, indices = strategy.compress()
    assert indices.tolist() == [0] and values.tolist() == pytest.approx([0.25])
    assert strategy.momentum[0].abs().max() < 1e-6


def test_the_decode_is_the_mean_over_the_ranks_that_sent_each_component():
    """Two ranks, top-2 of one chunk of 8: rank 0 sends {2: 3, 5: 1}, rank 1 {2: −1, 6: −2}. The
    reference's scatter_reduce("mean", include_self=False) gives {2: (3 − 1)/2 = 1, 5: 1, 6: −2}
    (a component one rank sent is not halved); the update is sign(Cᵀ·that)."""
    model = torch.nn.Linear(8, 1, bias=False)
    strategy, opt = one_rank(model, "demo.chunk=8", "demo.topk=2")
    sent = (torch.tensor([[3.0, 1.0], [-1.0, -2.0]]), torch.tensor([[2, 5], [2, 6]]))
    strategy.gather = lambda values, indices: sent  # what the all-gather of two ranks returns
    C = dct_matrix(8)
    model.weight.grad = torch.zeros(1, 8)
    before = model.weight.detach().clone()
    opt.step()
    mean = torch.zeros(8)
    mean[2], mean[5], mean[6] = 1.0, 1.0, -2.0
    expect = torch.sign(C.T @ mean)
    assert torch.equal(model.weight.grad.reshape(8), expect)
    assert torch.equal(model.weight.detach(), before.add(expect.reshape(1, 8), alpha=-1e-3))
    over_n = torch.zeros(8)
    over_n[2], over_n[5], over_n[6] = 1.0, 0.5, -1.0  # the mean over all N ranks would step elsewhere
    assert not torch.equal(torch.sign(C.T @ over_n), expect)


def test_state_per_rank_on_the_mnist_mlp_at_4_ranks():
    """Momentum 4·199,210 = 796,840 B; the receive buffer of 4 ranks' 16,188 B = 64,752 B."""
    strategy = DeMo(load_config(None, [f"{k}={v}" for k, v in DEMO.items()]), 4, torch.device("cpu"))
    strategy.wrap(build_model("mlp", seed=0))
    assert strategy.state_bytes() == {"momentum": 796_840, "all-gather receive buffers": 4 * 16_188}
    assert strategy.payload == {"all_gather": 16_188, "total": 16_188}
    assert strategy.label == "DeMo (k = 32, chunk = 64)" and strategy.period == 1


# The MNIST MLP at chunk 64 (blocks: the largest divisors ≤ 64 of each side):
#   1.weight 200 × 784 → 50 × 56 blocks: 4 · 14 = 56 blocks    1.bias 200 → 4 chunks of 50
#   3.weight 200 × 200 → 50 × 50 blocks: 4 · 4 = 16 blocks     3.bias 200 → 4 chunks of 50
#   5.weight  10 × 200 → 10 × 50 blocks: 1 · 4 =  4 blocks     5.bias  10 → 1 chunk of 10 (k ≤ 10)
# 85 chunks; the largest holds 50 · 56 = 2,800 entries: indices < 2,800 fit int16 (2 B), values float32 (4 B).
#   k = 32: 84 · 32 + 10 = 2,698 components · (4 + 2) B = 16,188 B handed in per step
#   k = 4:  85 · 4       =   340 components · (4 + 2) B =  2,040 B
# A subspace of d = 64 is one chunk of 64: indices < 64 fit uint8 (1 B); k = 8: 8 · (4 + 1) = 40 B.
# On the wire (ring all-gather): (N − 1)/N · N · that = (N − 1) · that.
@mnist
@pytest.mark.parametrize("n,method,k,handed_in", [(2, "full", 32, 16_188), (4, "full", 32, 16_188),
                                                  (4, "full", 4, 2_040), (2, "subspace", 8, 40)])
def test_one_all_gather_per_step_hands_in_the_formula(dist_pool, tmp_path, n, method, k, handed_in):
    kv = {"train.steps": 3, "train.method": method, "demo.topk": k}
    if method == "subspace":
        kv["train.lr"] = 1e-2
    results = train(dist_pool(n), tmp_path, **kv)
    for s, _ in results:
        assert s["comm_calls_per_step"] == {"all_gather": 1.0}
        assert s["comm_payload_bytes_per_step"] == {"all_gather": handed_in, "total": handed_in}
        assert s["comm_payload_formula"] == s["comm_payload_bytes_per_step"]
        assert s["comm_wire_bytes_per_step"]["total"] == pytest.approx((n - 1) * handed_in)
        assert s["sync_period"] == 1 and s["strategy_label"] == f"DeMo (k = {k}, chunk = 64)"
        assert not s["ddp_active"]
    first = results[0][1]
    assert all(torch.equal(first, p) for _, p in results[1:])  # and compared after each step (check every 1)


@mnist
def test_a_replica_that_drifts_is_caught_after_the_step(dist_pool, tmp_path):
    """The replicas decode the same components: a rank stepping at another lr differs after step 1."""
    with pytest.raises(RankFailed, match="after 1 steps the replicas' trainable states differ"):
        dist_pool(2).run("rank_targets:train_run", over(**{"train.steps": 3}), str(tmp_path), timeout=240,
                         rank_overrides={1: ["train.lr=0.002"]})


@mnist
def test_k_steps_and_a_resume_equal_2k_steps(dist_pool, tmp_path):
    """3 steps (a checkpoint: parameters and each rank's own momentum), resumed to 6: bitwise the
    straight 6."""
    pool = dist_pool(2)
    kv = {"checkpoint.every": 3, "dist.check_replicas_every": 0}
    whole = train(pool, tmp_path / "whole", **{"train.steps": 6, **kv})
    train(pool, tmp_path / "cut", **{"train.steps": 3, **kv})
    resumed = train(pool, tmp_path / "cut", resume=True, **{"train.steps": 6, **kv})
    for (s_whole, p_whole), (s_res, p_res) in zip(whole, resumed):
        assert s_res["resumed_from_step"] == 3
        assert torch.equal(p_whole, p_res), "resumed run ended elsewhere"
        assert s_res["train_loss"] == s_whole["train_loss"]


def test_adam_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        DeMo(load_config(None, ["dist.strategy=demo", "train.optimizer=adam"]), 2, torch.device("cpu"))
    assert str(e.value) == ("train.optimizer = 'adam': DeMo is its own optimizer (sign descent at train.lr, "
                            "with its own momentum); set train.optimizer = 'sgd'")


def test_topk_above_the_chunk_is_refused():
    with pytest.raises(ConfigError, match=r"demo\.topk must be in \[1, demo\.chunk = 64\]"):
        load_config(None, ["dist.strategy=demo", "demo.topk=65"])
