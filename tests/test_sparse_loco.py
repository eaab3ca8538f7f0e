"""SparseLoCo (dist.strategy = "sparse_loco"; strategies/sparse_loco.py; gloo, 2 and 4 ranks): a
synchronisation hands one all-gather one message, whose bytes are worked out here by hand (indices,
packed values, the quantiser's table) and grow on the wire with N; the message on a tiny tensor is
the paper's equations done by hand (error feedback, top-k per chunk, 2-bit levels, the residual left
in e); the replicas agree after every synchronisation (a rank that drifts is caught); k rounds +
resume == 2k straight, bitwise; what cannot work is refused in one line."""

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.config import ConfigError, load_config
from distid.models import build_model
from distid.strategies.sparse_loco import SparseLoCo
from distpool import RankFailed

mnist = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
D = 199_210  # the MNIST MLP: 200·784 + 200 + 200·200 + 200 + 10·200 + 10
BASE = {"data.root": DATA_ROOT, "train.global_batch": 120, "train.log_every": 100, "subspace.d": 64,
        "dist.strategy": "sparse_loco"}
FULL = {"train.method": "full", "train.lr": 1e-3}


def over(**kv):
    return [f"{k}={v}" for k, v in {**BASE, **kv}.items()]


def train(pool, out, resume=False, rank_overrides=None, **kv):
    return pool.run("rank_targets:train_run", over(**kv), str(out), resume=resume, timeout=240,
                    rank_overrides=rank_overrides)


def _one_rank(numel, *sets):
    """SparseLoCo on one process over one parameter of `numel` zeros (θ_start = 0)."""
    model = torch.nn.Linear(numel, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    strategy = SparseLoCo(load_config(None, ["dist.strategy=sparse_loco", *sets]), 1, torch.device("cpu"))
    strategy.wrap(model)
    return strategy, model.weight


def test_one_synchronisation_is_the_papers_equations_by_hand():
    """8 numbers, chunks of 4, k = 0.5·4 = 2, β = 0.5, 2 bits (B = 4 levels), outer_lr = 1, one rank.
    e_prev = [2, 1, 0, 0 | 0, 0, -1, 0] and Δ = [1, 0, -1, 0.25 | 0.1, 1, 0, -2] give
        e = β·e_prev + Δ = [2, 0.5, -1, 0.25 | 0.1, 1, -0.5, -2]
    top-2 of |e| per chunk: indices [0, 2] and [1, 3], values v = [2, -1, 1, -2];
    Q: m = mean v = 0, σ² = (4 + 1 + 1 + 4)/3, step s = 6σ/4 = 2.739; round(v/s + 2) = round([2.73,
    1.63, 2.37, 1.27]) = levels [3, 2, 2, 1]; the table holds each level's mean: [-, -2, 0, 2] (an empty
    level 0: 0), so Q⁻¹ = [2, 0, 0, -2]: the ±1 are sent as 0 and stay whole in e."""
    s, p = _one_rank(8, "sparse_loco.chunk=4", "sparse_loco.density=0.5", "sparse_loco.error_decay=0.5",
                     "sparse_loco.value_bits=2", "sparse_loco.outer_lr=1.0")
    s.error.copy_(torch.tensor([2, 1, 0, 0, 0, 0, -1, 0.0]))
    delta = torch.tensor([1, 0, -1, 0.25, 0.1, 1, 0, -2])
    with torch.no_grad():
        p.copy_(-delta.view(1, 8))  # θ = θ_start − Δ
    message = s.encode(delta.clone())
    table = torch.tensor([0.0, 0.0, -2.0, 0.0, 2.0])  # m, then levels 0 … 3
    levels = 3 | 2 << 2 | 2 << 4 | 1 << 6  # 4 levels of 2 bits in one byte, the first lowest
    assert message.tolist() == [0, 2, 1, 3, levels, *table.view(torch.uint8).tolist()]  # uint8 indices
    assert message.numel() == 4 * 1 + 1 + 5 * 4 == s.message  # indices, packed values, table
    assert s.error.tolist() == pytest.approx([0, 0.5, -1, 0.25, 0.1, 1, -0.5, 0])  # e − Q⁻¹ on S
    assert s.decode(message).tolist() == [2, 0, 0, 0, 0, 0, 0, -2]

    s.error.copy_(torch.tensor([2, 1, 0, 0, 0, 0, -1, 0.0]))
    s.sync()  # θ ← θ_start − 1·mean of one rank's message; θ_start ← θ
    assert p.detach().view(-1).tolist() == [-2, 0, 0, 0, 0, 0, 0, 2] and torch.equal(s.start[0], p.detach())


def test_two_ranks_messages_are_averaged_over_n_by_hand(monkeypatch):
    """Two ranks, chunks of 4, k = 2, float32 values, β = 0, outer_lr = 1: this rank's Δ = [4, 0, 0, 1 |
    0, 0, 5, -2], the other's [2, 0, 0, 0 | 0, 6, 0, 0]; each sends its top 2 per chunk, every rank
    decodes both and divides by N = 2 — index 5, sent by the other rank only, is 6/2 = 3 (not 6, the
    mean over the ranks that sent it) — so θ = θ_start − [3, 0, 0, 0.5 | 0, 3, 2.5, −1]."""
    sets = ("sparse_loco.chunk=4", "sparse_loco.density=0.5", "sparse_loco.error_decay=0",
            "sparse_loco.value_bits=32", "sparse_loco.outer_lr=1.0")
    other, _ = _one_rank(8, *sets)
    theirs = other.encode(torch.tensor([2, 0, 0, 0, 0, 6, 0, 0.0]))
    model = torch.nn.Linear(8, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    mine = SparseLoCo(load_config(None, ["dist.strategy=sparse_loco", *sets]), 2, torch.device("cpu"))
    mine.wrap(model)
    with torch.no_grad():
        model.weight.copy_(-torch.tensor([[4, 0, 0, 1, 0, 0, 5, -2.0]]))  # θ = θ_start − Δ
    monkeypatch.setattr("distid.strategies.sparse_loco.all_gather_tensor",
                        lambda out, message: out.copy_(torch.cat([message, theirs])))
    mine.sync()
    assert model.weight.detach().view(-1).tolist() == [-3, 0, 0, -0.5, 0, -3, -2.5, 1]


def test_32_bit_values_are_sent_as_they_are_and_leave_nothing_in_e():
    """value_bits = 32: the top-k values in float32, no table; what was sent leaves e exactly."""
    s, _ = _one_rank(6, "sparse_loco.chunk=4", "sparse_loco.density=0.25", "sparse_loco.value_bits=32",
                     "sparse_loco.error_decay=1.0")
    delta = torch.tensor([0.1, -0.7, 0.3, 0.2, 0.05, -0.4])  # chunks [0.1, -0.7, 0.3, 0.2] [0.05, -0.4, pad, pad]
    message = s.encode(delta.clone())
    assert message.numel() == 2 * (1 + 4) == s.message  # 2 chunks × k = 1: one uint8 index, one float32
    assert message[:2].tolist() == [1, 1]
    assert torch.equal(message[2:].clone().view(torch.float32), torch.tensor([-0.7, -0.4]))
    assert torch.equal(s.error, torch.tensor([0.1, 0, 0.3, 0.2, 0.05, 0]))
    assert torch.equal(s.decode(message), torch.tensor([0, -0.7, 0, 0, 0, -0.4]))


def test_the_state_per_rank_on_the_mnist_mlp_at_4_ranks():
    """e and θ_start: 4·D B each; the receive buffer: 4 messages of 9,061 B (worked out below)."""
    s = SparseLoCo(load_config(None, ["dist.strategy=sparse_loco"]), 4, torch.device("cpu"))
    s.wrap(build_model("mlp", seed=0))
    assert s.state_bytes() == {"error feedback": 4 * D, "θ_start": 4 * D, "all-gather receive buffer": 4 * 9_061}


def message_by_hand(T, chunk, k, index_bytes, bits):
    chunks = -(-T // chunk)  # the last one padded
    sent = chunks * k
    values = -(-sent * bits // 8)  # packed 8/bits to a byte
    table = 0 if bits == 32 else 4 * (1 + 2**bits)  # float32: the mean, then one per level
    return sent * index_bytes + values + table


@mnist
@pytest.mark.parametrize("n,method,sets,hand", [
    # full MLP, the defaults: 49 chunks of 4096 (48·4096 = 196,608; 2,602 in the last), k = round(81.92) = 82,
    # int16 indices: 4,018 · 2 = 8,036 B; 2-bit values: ⌈4,018 / 4⌉ = 1,005 B; table 5 · 4 = 20 B
    (2, "full", {}, 9_061), (4, "full", {}, 9_061),
    # a subspace, d = 64, chunks of 16, k = 4, float32: 4 chunks · 4 · (1 B uint8 index + 4 B) = 80 B
    (2, "subspace", {"sparse_loco.chunk": 16, "sparse_loco.density": 0.25, "sparse_loco.value_bits": 32}, 80),
])
def test_a_sync_hands_one_all_gather_the_message_worked_out_by_hand(dist_pool, tmp_path, n, method, sets, hand):
    """2 synchronisations in 4 steps (H = 2): one all-gather of the message each, nothing between."""
    kv = {"train.steps": 4, "sparse_loco.every": 2, **(FULL if method == "full" else {}), **sets}
    results = train(dist_pool(n), tmp_path, **kv)
    if method == "full":
        assert hand == message_by_hand(D, 4096, 82, 2, 2)
    else:
        assert hand == message_by_hand(64, 16, 4, 1, 32)
    for s, _ in results:
        assert s["trainable_params"] == (D if method == "full" else 64)
        assert s["comm_syncs"] == 2 and s["comm_payload_bytes_inner_step"] == {"total": 0}
        assert s["comm_payload_bytes_per_sync"] == {"all_gather": hand, "total": hand}
        assert s["comm_calls_per_sync"] == {"all_gather": 1.0}
        assert s["comm_wire_bytes_per_sync"]["total"] == pytest.approx((n - 1) / n * n * hand)  # grows with N
        assert s["comm_payload_bytes_per_step"]["total"] == 2 * hand / 4 == s["comm_payload_formula"]["total"]
        assert s["sync_period"] == 2 and s["strategy_label"].startswith("SparseLoCo (H = 2")
    first = results[0][1]
    assert all(torch.equal(first, p) for _, p in results[1:])  # one model after the last sync


@mnist
def test_a_replica_that_drifts_is_caught_at_the_next_sync(dist_pool, tmp_path):
    """The run's replica check compares the ranks after every synchronisation: the first one here."""
    with pytest.raises(RankFailed, match="after 2 steps the replicas' trainable states differ"):
        train(dist_pool(2), tmp_path, rank_overrides={1: ["sparse_loco.outer_lr=0.5"]},
              **{"train.steps": 4, "sparse_loco.every": 2, **FULL})


@mnist
def test_k_rounds_and_a_resume_equal_2k_rounds(dist_pool, tmp_path):
    """Cut after 2 rounds of H = 3 (checkpoint due at the first sync at or after step 5: step 6),
    resumed to 4 rounds: bitwise the straight run. Each rank's error feedback and inner Adam state
    travel in the checkpoint."""
    pool = dist_pool(2)
    kv = {"sparse_loco.every": 3, "checkpoint.every": 5, "sparse_loco.density": 0.01, **FULL}
    whole = train(pool, tmp_path / "whole", **{"train.steps": 12, **kv})
    train(pool, tmp_path / "cut", **{"train.steps": 6, **kv})
    resumed = train(pool, tmp_path / "cut", resume=True, **{"train.steps": 12, **kv})
    for (s_whole, p_whole), (s_res, p_res) in zip(whole, resumed):
        assert s_res["resumed_from_step"] == 6 and s_res["comm_syncs"] == 2 and s_whole["comm_syncs"] == 4
        assert torch.equal(p_whole, p_res), "resumed run ended elsewhere"
        assert s_res["train_loss"] == s_whole["train_loss"]


@pytest.mark.parametrize("override,pattern", [
    (["sparse_loco.value_bits=3"], r"sparse_loco\.value_bits must be one of 1, 2, 4, 8, 32"),
    (["sparse_loco.chunk=64", "sparse_loco.density=0.01"],
     r"sparse_loco\.density must be at least 1 / sparse_loco\.chunk"),
])
def test_what_cannot_work_is_refused(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(None, ["dist.strategy=sparse_loco", *override])
    assert "\n" not in str(e.value)
