"""Streaming DiLoCo (dist.strategy = "streaming_diloco"; strategies/streaming_diloco.py; gloo, 1–4
ranks): the MLP cut into fragments at the tensor boundaries nearest to k·T/P; fragment p's all-reduce
starts τ steps before its outer step, one fragment every H/P steps (torchft's schedule); a fragment's
synchronisation hands in 4·T_p (2·T_p in half precision), measured by the ledger; the run ends as one
model; k steps + resume == 2k straight, bitwise; torchft's DiLoCo with the same fragments lands on the
same numbers, bit for bit; what cannot work is refused in one line."""

import shutil
import sys

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.config import ConfigError, load_config
from distid.observe.ledger import CommLedger
from distid.strategies.streaming_diloco import StreamingDiLoCo, events, final, split
from procs import run

mnist = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
MLP = [200 * 784, 200, 200 * 200, 200, 10 * 200, 10]  # W1, b1, W2, b2, W3, b3: 199,210 numbers
FULL = {"data.root": DATA_ROOT, "train.method": "full", "train.lr": 1e-3, "train.global_batch": 120,
        "train.log_every": 100, "dist.strategy": "streaming_diloco"}


def over(**kv):
    return [f"{k}={v}" for k, v in {**FULL, **kv}.items()]


def train(pool, out, resume=False, **kv):
    return pool.run("rank_targets:train_run", over(**kv), str(out), resume=resume, timeout=240)


def test_the_mlp_is_cut_at_the_tensor_boundaries_nearest_to_equal_shares():
    """T = 199,210. P = 2: the cut nearest to 99,605 falls after W1 (156,800). P = 4: after W1 (the
    nearest to 49,802.5 that leaves a tensor each), then b1 (157,000 nearest to 99,605), then W2
    (197,000 nearest to 149,407.5)."""
    assert [list(r) for r in split(MLP, 2)] == [[0], [1, 2, 3, 4, 5]]  # 156,800 | 42,410
    assert [list(r) for r in split(MLP, 4)] == [[0], [1], [2], [3, 4, 5]]  # 156,800 | 200 | 40,000 | 2,210
    assert [list(r) for r in split([5, 5, 5, 5], 2)] == [[0, 1], [2, 3]]
    assert [list(r) for r in split([1, 1, 1], 3)] == [[0], [1], [2]]


def test_the_schedule_is_torchft_s():
    """H = 8, P = 2 (S = 4), τ = 3: fragment 0 starts after step 1 and is applied after step 4,
    fragment 1 after 5 and 8, and so on. P = 4, τ = 0: start and apply after the same step."""
    h8p2d3 = {1: (0, None), 4: (None, 0), 5: (1, None), 8: (None, 1), 9: (0, None), 12: (None, 0),
              13: (1, None), 16: (None, 1)}
    assert [events(d, 8, 2, 3) for d in range(1, 17)] == [h8p2d3.get(d, (None, None)) for d in range(1, 17)]
    h8p4d0 = {2: (0, 0), 4: (1, 1), 6: (2, 2), 8: (3, 3), 10: (0, 0), 12: (1, 1)}
    assert [events(d, 8, 4, 0) for d in range(1, 13)] == [h8p4d0.get(d, (None, None)) for d in range(1, 13)]
    # the end: after 14 steps fragment 1 is in flight (started after 13) and is applied there; 0 is
    # synchronised once more. After 16, fragment 1 was just applied: 0 only. With α > 0, both.
    assert final(14, 8, 2, 3, 0.0) == [0] and final(16, 8, 2, 3, 0.0) == [0] and final(12, 8, 2, 3, 0.0) == [1]
    assert final(14, 8, 2, 3, 0.5) == [0, 1] and final(10, 8, 4, 0, 0.0) == [1, 2, 3]


def _one_rank(*sets, sizes=(3, 2)):
    """The strategy on one process (no group) over a model of two weights of ones."""
    model = torch.nn.Sequential(*(torch.nn.Linear(k, 1, bias=False) for k in sizes))
    for p in model.parameters():
        torch.nn.init.ones_(p)
    cfg = load_config(None, ["dist.strategy=streaming_diloco", "local_sgd.every=4", "streaming.fragments=2", *sets])
    strategy = StreamingDiLoCo(cfg, 1, torch.device("cpu"))
    strategy.wrap(model)
    return strategy, list(model.parameters())


def test_the_hook_starts_and_applies_as_scheduled_and_ends_with_the_rest():
    """H = 4, P = 2, τ = 1, 7 steps: starts after 1 (0), 3 (1), 5 (0), 7 (1); applied after 2, 4, 6;
    at the end fragment 1, in flight, is applied, and fragment 0 (applied after 6, then one inner
    step) is synchronised once more."""
    strategy, params = _one_rank("streaming.delay=1")
    log = []
    strategy.begin = lambda p: (log.append(("start", strategy.done, p)), strategy.pending.update({p: None}))
    strategy.apply = lambda p, mix: (log.append(("apply", strategy.done, p)), strategy.pending.pop(p))
    opt = torch.optim.SGD(params, lr=0.1)
    strategy.attach(opt, CommLedger(1), 0, 7)
    for _ in range(7):
        opt.step()
    assert log == [("start", 1, 0), ("apply", 2, 0), ("start", 3, 1), ("apply", 4, 1), ("start", 5, 0),
                   ("apply", 6, 0), ("start", 7, 1), ("apply", 7, 1), ("start", 7, 0), ("apply", 7, 0)]


def test_the_outer_step_and_the_mix_on_one_fragment():
    """One rank, fragment 0 = the 3-weight (global 1): inner steps moved it to 0.8 (Δ = 0.2); after
    the outer step g = 1 − 0.7·(0.2 + 0.9·0.2); with α = 0.25 the fragment is 0.75·g + 0.25·0.8.
    Fragment 1 is untouched; an all-reduce in flight survives state_dict/load_state_dict."""
    strategy, (w0, w1) = _one_rank("streaming.mix=0.25")
    with torch.no_grad():
        w0.fill_(0.8)
        w1.fill_(0.5)
    strategy.ledger = CommLedger(1)
    strategy.begin(0)
    own, shared = strategy.state_dict(), strategy.shared_state_dict()
    again, (v0, v1) = _one_rank("streaming.mix=0.25")
    again.load_state_dict(own)
    again.load_shared_state_dict(shared)
    for s, p0, p1 in ((strategy, w0, w1), (again, v0, v1)):
        s.apply(0, s.mix)
        g = 1 - 0.7 * (0.2 + 0.9 * 0.2)
        assert torch.allclose(s.globals[0][0], torch.full((1, 3), g))
        assert torch.allclose(p0, torch.full((1, 3), 0.75 * g + 0.25 * 0.8)) and torch.equal(p1, torch.full((1, 2), 0.5))
        assert not s.pending and p0.grad is None
    assert torch.equal(w0, v0)
    # fragment 0's 3 numbers were in flight (float32); the state keeps the largest seen
    assert strategy.state_bytes() == {"global copy": 4 * 5, "outer momentum": 4 * 3, "in-flight buffer (its largest)": 4 * 3}


@mnist
@pytest.mark.parametrize("n,dtype,h,fragments,steps", [(2, "bfloat16", 4, 2, 10), (4, "float32", 8, 4, 12)])
def test_a_fragment_s_sync_hands_in_its_bytes_and_the_steps_between_nothing(dist_pool, tmp_path, n, dtype, h,
                                                                             fragments, steps):
    """The MLP's fragments: P = 2: W1 = 156,800 | b1 W2 b2 W3 b3 = 200 + 40,000 + 200 + 2,000 + 10 =
    42,410; P = 4: 156,800 | 200 | 40,000 | 200 + 2,000 + 10 = 2,210. τ = 1.
    2 ranks, H = 4, bfloat16 (2 B): starts after 1 (0), 3 (1), 5 (0), 7 (1), 9 (0); fragment 0 applied
    after 10, 1 synchronised once more: 3 × 2·156,800 + 3 × 2·42,410 = 940,800 + 254,460 = 1,195,260 B
    in 6 syncs (199,210 each) over 10 steps = 119,526 B per step; ring factor 2·1/2 = 1.
    4 ranks, H = 8, float32: starts after 1 (0), 3 (1), 5 (2), 7 (3), 9 (0), 11 (1); fragment 1 applied
    after 12; 0, 2, 3 once more: 4·(199,210) + 4·(156,800 + 200) + 4·(156,800 + 40,000 + 2,210) =
    796,840 + 628,000 + 796,040 = 2,220,880 B in 9 syncs over 12 steps = 185,073.33 B per step; wire
    × 2·3/4 = 277,610 B per step."""
    total, syncs, per_step = {2: (1_195_260, 6, 119_526.0), 4: (2_220_880, 9, 2_220_880 / 12)}[n]
    results = train(dist_pool(n), tmp_path, **{"train.steps": steps, "local_sgd.every": h, "streaming.fragments": fragments,
                                               "streaming.delay": 1, "local_sgd.outer_dtype": dtype})
    for s, _ in results:
        assert s["trainable_params"] == sum(MLP) == 199_210
        assert s["comm_payload_bytes_inner_step"] == {"total": 0} and s["comm_calls_per_step"] == {}
        assert s["comm_syncs"] == syncs
        assert s["comm_payload_bytes_per_sync"]["all_reduce"] == pytest.approx(total / syncs)
        assert s["comm_payload_bytes_per_step"]["all_reduce"] == pytest.approx(per_step)
        assert s["comm_payload_formula"]["total"] == pytest.approx(per_step)
        assert s["comm_wire_bytes_per_step"]["total"] == pytest.approx(2 * (n - 1) / n * per_step)
        assert s["sync_period"] == h and not s["ddp_active"]
        assert s["strategy_label"] == f"Streaming DiLoCo (H = {h}, {fragments} fragments, τ = 1)"
    first = results[0][1]
    assert all(torch.equal(first, p) for _, p in results[1:])  # one model after the final synchronisations


@mnist
def test_k_steps_and_a_resume_equal_2k_steps(dist_pool, tmp_path):
    """H = 4, P = 2, τ = 1, α = 0.5 on 2 ranks. The checkpoint after step 4 (the first of a 6-step run;
    the one after 6 is deleted, it holds that run's final synchronisation) holds replicas apart:
    fragment 0 took 2 inner steps since its last apply, fragment 1 is mixed. Resumed to 8: bitwise
    the straight 8-step run — each rank's own parameters and Adam state, the global copies and the
    outer momenta travel in the checkpoint."""
    pool = dist_pool(2)
    kv = {"local_sgd.every": 4, "streaming.fragments": 2, "streaming.delay": 1, "streaming.mix": 0.5,
          "checkpoint.every": 4}
    whole = train(pool, tmp_path / "whole", **{"train.steps": 8, **kv})
    train(pool, tmp_path / "cut", **{"train.steps": 6, **kv})
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_000006")
    resumed = train(pool, tmp_path / "cut", resume=True, **{"train.steps": 8, **kv})
    for (s_whole, p_whole), (s_res, p_res) in zip(whole, resumed):
        assert s_res["resumed_from_step"] == 4
        assert s_whole["comm_syncs"] == 6 and s_res["comm_syncs"] == 4  # starts after 5, 7; the end: 0, 1
        assert torch.equal(p_whole, p_res), "resumed run ended elsewhere"
        assert s_res["train_loss"] == s_whole["train_loss"]


@mnist
def test_distid_s_streaming_diloco_follows_torchft_s(dist_pool, tmp_path):
    """torchft 0.2's DiLoCo with distid's two fragments of the MLP (tests/torchft_diloco.py), H = 4,
    τ = 1, α = 0.5, 8 steps (nothing in flight at the end), the final unmixed synchronisations done
    through torchft's fragments: the same numbers as distid's, bit for bit — tolerance 0 (torchft
    all-reduces per parameter and divides after, distid one flat buffer per fragment divided before;
    on 2 ranks both are exact halvings of the same sums)."""
    pytest.importorskip("torchft", reason="needs torchft: pip install -e .[diloco] (launch/setup.sh installs it)")
    kv = {"train.steps": 8, "local_sgd.every": 4, "streaming.fragments": 2, "streaming.delay": 1, "streaming.mix": 0.5,
          "local_sgd.outer_lr": 0.7, "local_sgd.outer_momentum": 0.9}
    (_, ours), _ = train(dist_pool(2), tmp_path / "distid", **kv)
    proc = run([sys.executable, "tests/torchft_diloco.py", str(tmp_path / "tft.pt"), DATA_ROOT, "8", "4", "120",
                "2", "1", "0.5"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "tft.pt")
    assert torch.equal(theirs[0], theirs[1])
    from distid.models import build_model
    shapes = dict(build_model("mlp", seed=0).named_parameters())
    pieces = dict(zip(list(shapes), torch.split(theirs[0], [p.numel() for p in shapes.values()])))
    theirs_by_name = torch.cat([pieces[k] for k in sorted(shapes)])  # distid flattens in name order
    assert (ours - theirs_by_name).abs().max().item() == 0.0


@pytest.mark.parametrize("override,pattern", [
    (["local_sgd.every=32", "streaming.fragments=3"], r"^streaming\.fragments must be a divisor of local_sgd\.every = 32 "),
    (["local_sgd.every=32", "streaming.fragments=2", "streaming.delay=16"],
     r"^streaming\.delay must be in \[0, local_sgd\.every / streaming\.fragments\) = \[0, 16\) .*; got 16$"),
    (["streaming.mix=1"], r"^streaming\.mix must be in \[0, 1\)"),
])
def test_what_cannot_work_is_refused(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(None, ["dist.strategy=streaming_diloco", *override])
    assert "\n" not in str(e.value)


def test_more_fragments_than_trainable_tensors_are_refused():
    """A subspace trains one tensor (d): it cannot be cut in two."""
    cfg = load_config(None, ["dist.strategy=streaming_diloco", "local_sgd.every=4", "streaming.fragments=2"])
    with pytest.raises(ConfigError, match=r"^streaming\.fragments = 2: more than the model's 1 trainable tensors") as e:
        StreamingDiLoCo(cfg, 1, torch.device("cpu")).wrap(torch.nn.Linear(3, 1, bias=False))
    assert "\n" not in str(e.value)
