"""Sync less often (dist.strategy = "local_sgd", H = local_sgd.every; strategies/local_sgd.py; gloo,
1–4 ranks): inner steps hand no collective anything; a synchronisation hands in the formula's bytes
(4·T, 2·T in half precision), spread over the steps run (a partial last round included); the
replicas agree after every one (and a rank that drifts is caught); k rounds + resume == 2k straight,
bitwise; the outer step is DiLoCo's Nesterov step; what cannot work is refused in one line."""

import sys

import pytest
import torch

from datasets_for_tests import DATA_ROOT, REPO, have_mnist
from distid.config import ConfigError, load_config
from distid.observe.ledger import CommLedger
from distid.strategies.base import falls_due
from distid.strategies.local_sgd import LocalSGD
from distpool import RankFailed
from procs import run, torchrun

mnist = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
D = 199_210
BASE = {"data.root": DATA_ROOT, "train.global_batch": 600, "train.log_every": 100, "subspace.d": 64}
METHODS = {"full": {"train.method": "full", "train.lr": 1e-3}, "subspace": {},
           "lora": {"train.method": "lora", "train.lr": 1e-2, "lora.rank": 2}}


def over(**kv):
    return [f"{k}={v}" for k, v in {**BASE, **kv}.items()]


def train(pool, out, resume=False, **kv):
    return pool.run("rank_targets:train_run", over(**kv), str(out), resume=resume, timeout=240)


@mnist
@pytest.mark.parametrize("n,method,dtype,h", [(4, "full", "float32", 32), (4, "subspace", "float16", 4),
                                              (2, "lora", "bfloat16", 4)])
def test_inner_steps_send_nothing_and_a_sync_sends_the_formula(dist_pool, tmp_path, n, method, dtype, h):
    """4 ranks, H = 32, full training: 796,840 / 32 bytes handed in per step, measured."""
    results = train(dist_pool(n), tmp_path, **{"train.steps": 3 * h, "dist.strategy": "local_sgd", "local_sgd.every": h, "local_sgd.outer_dtype": dtype,
                                               "train.global_batch": 120, **METHODS[method]})
    itemsize = 4 if dtype == "float32" else 2
    for s, _ in results:
        t = s["trainable_params"]
        assert t == {"full": D, "subspace": 64}.get(method, t)
        assert s["comm_steps_booked"] + s["comm_steps_warmup"] == 12  # the ledger's booked steps ...
        assert s["comm_payload_bytes_inner_step"] == {"total": 0}  # ... and not one collective on any
        assert s["comm_payload_bytes_warmup"] == {"total": 0} and s["comm_calls_per_step"] == {}
        assert s["comm_syncs"] == 3
        assert s["comm_payload_bytes_per_sync"] == {"all_reduce": itemsize * t, "total": itemsize * t}
        assert s["comm_payload_bytes_per_step"]["total"] == itemsize * t / h == s["comm_payload_formula"]["total"]
        assert s["comm_wire_bytes_per_step"]["total"] == pytest.approx(2 * (n - 1) / n * itemsize * t / h)
        assert not s["ddp_active"] and s["sync_period"] == h and s["strategy_label"] == f"DiLoCo (H = {h})"
    first = results[0][1]
    assert all(torch.equal(first, p) for _, p in results[1:])  # one model again after the last sync


@mnist
def test_a_replica_that_drifts_is_caught_at_the_next_sync(dist_pool, tmp_path):
    kv = {"train.steps": 8, "dist.strategy": "local_sgd", "local_sgd.every": 4, **METHODS["full"]}
    with pytest.raises(RankFailed, match="after 4 steps the replicas' trainable states differ"):
        dist_pool(2).run("rank_targets:train_run", over(**kv), str(tmp_path), timeout=240,
                         rank_overrides={1: ["local_sgd.outer_lr=0.5"]})


@mnist
@pytest.mark.parametrize("method,outer", [("full", "nesterov"), ("subspace", "nesterov"), ("lora", "average")])
def test_k_rounds_and_a_resume_equal_2k_rounds(dist_pool, tmp_path, method, outer):
    """Cut after 2 rounds of H = 3 (a checkpoint is due at the first sync at or after step 5: step 6),
    resumed to 4 rounds: bitwise the straight run. Each rank's own inner Adam state and the outer
    momentum travel in the checkpoint; with rank 0's Adam state on both ranks the run would differ."""
    pool = dist_pool(2)
    kv = {"dist.strategy": "local_sgd", "local_sgd.every": 3, "local_sgd.outer": outer, "checkpoint.every": 5, **METHODS[method]}
    whole = train(pool, tmp_path / "whole", **{"train.steps": 12, **kv})
    train(pool, tmp_path / "cut", **{"train.steps": 6, **kv})
    resumed = train(pool, tmp_path / "cut", resume=True, **{"train.steps": 12, **kv})
    for (s_whole, p_whole), (s_res, p_res) in zip(whole, resumed):
        assert s_res["resumed_from_step"] == 6 and s_res["comm_syncs"] == 2 and s_whole["comm_syncs"] == 4
        assert torch.equal(p_whole, p_res), "resumed run ended elsewhere"
        assert s_res["train_loss"] == s_whole["train_loss"]


@mnist
def test_evaluations_fall_on_synchronisations(dist_pool, tmp_path):
    (s, _), _ = train(dist_pool(2), tmp_path, **{"train.steps": 20, "dist.strategy": "local_sgd", "local_sgd.every": 4, "train.eval_every": 6})
    assert [c[0] for c in s["eval_curve"]] == [8, 12, 20]  # the first sync at or after 6, 12, 18; the end


def test_falls_due_at_the_first_sync_at_or_after_each_multiple():
    assert [k for k in range(1, 41) if falls_due(k, 10)] == [10, 20, 30, 40]
    assert [k for k in range(1, 41) if falls_due(k, 10, 4)] == [12, 20, 32, 40]
    assert [k for k in range(1, 41) if falls_due(k, 3, 8)] == [8, 16, 24, 32, 40]
    assert not any(falls_due(k, 0, 4) for k in range(1, 41))


def _one_rank(*sets, numel=3):
    """LocalSGD on one process (no group: the replica check has nobody to compare with) over one
    parameter of `numel` ones."""
    model = torch.nn.Linear(numel, 1, bias=False)
    torch.nn.init.ones_(model.weight)
    strategy = LocalSGD(load_config(None, ["dist.strategy=local_sgd", *sets]), 1, torch.device("cpu"))
    strategy.wrap(model)
    return strategy, model.weight


def test_the_outer_step_is_diloco_s_nesterov_step_and_average_is_the_mean():
    """One rank: θ_start = 1, the inner steps moved θ to 0.8 (Δ = 0.2), then to 0.5 (Δ = 0.3)."""
    outer, p = _one_rank("local_sgd.every=2")
    with torch.no_grad():
        p.fill_(0.8)
    outer.sync()
    v = 0.2
    expect = 1 - 0.7 * (0.2 + 0.9 * v)  # v ← μ·v + Δ; θ ← θ_start − η·(Δ + μ·v)
    assert torch.allclose(p, torch.full_like(p, expect)) and torch.equal(outer.start[0], p.detach())
    with torch.no_grad():
        p.sub_(0.3)
    outer.sync()
    v = 0.9 * v + 0.3
    expect = expect - 0.7 * (0.3 + 0.9 * v)
    assert torch.allclose(p, torch.full_like(p, expect))
    mean, q = _one_rank("local_sgd.outer=average", numel=2)  # lr and momentum: Nesterov's only
    with torch.no_grad():
        q.fill_(0.25)
    mean.sync()
    assert torch.equal(q.detach(), torch.full_like(q, 0.25)) and q.grad is None


def test_it_synchronises_after_every_h_th_step_and_the_last_and_counts_each_in_the_bytes():
    """7 steps at H = 2: synchronisations after steps 2, 4, 6 and 7, each booked as one "sync"; the
    formula per step is 4 synchronisations' bytes / 7 steps, not one's / H."""
    def run(start, steps, every_done=None):
        strategy, p = _one_rank("local_sgd.every=2")
        strategy.per_sync = 12  # a synchronisation's bytes on two ranks (sync() is not called: no group)
        ledger, opt, synced = CommLedger(1), torch.optim.SGD([p], lr=0.1), []
        strategy.sync = lambda: synced.append(strategy.done)
        strategy.attach(opt, ledger, start, steps)
        planned = strategy.payload
        for _ in range(steps - start if every_done is None else every_done):
            opt.step()
        return synced, ledger.steps["sync"], planned, strategy.payload

    synced, booked, planned, ran = run(0, 7)
    assert synced == [2, 4, 6, 7] and booked == 4
    assert planned == ran == {"all_reduce": 4 * 12 / 7, "total": 4 * 12 / 7}
    synced, booked, planned, ran = run(4, 7)  # resumed after 4 steps: 2 synchronisations in its 3 steps
    assert synced == [6, 7] and planned == ran == {"all_reduce": 8.0, "total": 8.0}
    synced, booked, planned, ran = run(0, 7, every_done=4)  # stopped after 4 (a plateau): 2 in 4 steps
    assert synced == [2, 4] and ran == {"all_reduce": 6.0, "total": 6.0}


@pytest.mark.parametrize("override,pattern", [
    (["dist.strategy=local_sgd", "local_sgd.every=0"], r"local_sgd\.every must be >= 1"),
    (["dist.strategy=local_sgd", "local_sgd.outer_lr=0"], r"local_sgd\.outer_lr must be > 0"),
    (["local_sgd.outer_momentum=1.0"], r"local_sgd\.outer_momentum must be in \[0, 1\)"),
    (["local_sgd.outer=adam"], r"local_sgd\.outer must be one of 'average', 'nesterov'"),
    (["dist.strategy=local_sgd", "ddp.hook=fp16"], r"ddp\.hook = 'fp16' configures dist.strategy = 'ddp'"),
    (["train.sync_every=8"], r"'train.sync_every' .* has moved: it is local_sgd.every \(with dist.strategy = "
                             r"'local_sgd'\) now"),
])
def test_what_cannot_work_is_refused(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, override)


def test_local_steps_settings_wait_for_their_strategy():
    """[local_sgd] under another strategy changes nothing and is kept for the runs that turn it on (the
    frontier's config holds its DiLoCo cells' outer step); the resume hash leaves it out until then."""
    from distid.run.checkpoint import resume_hash

    cfg = load_config(f"{REPO}/configs/mnist_frontier.toml", ["local_sgd.outer_lr=0.5"])
    assert cfg.dist.strategy == "ddp" and cfg.local_sgd.outer_lr == 0.5
    assert resume_hash(cfg) == resume_hash(load_config(f"{REPO}/configs/mnist_frontier.toml"))
    on = ["dist.strategy=local_sgd"]
    assert resume_hash(load_config(None, [*on, "local_sgd.outer_lr=0.5"])) != resume_hash(load_config(None, on))


@mnist
def test_another_world_size_is_refused_in_one_line(tmp_path):
    def cli(nproc, *sets, resume=False):
        args = ["--config", "configs/mnist_fc_full.toml", "--out", str(tmp_path / "run"), "--set",
                f"data.root={DATA_ROOT}", "--set", "train.global_batch=600"]
        args += [w for o in sets for w in ("--set", o)] + (["--resume"] if resume else [])
        if nproc == 1:
            return run([sys.executable, "-m", "distid.train", *args], timeout=120)
        return torchrun(nproc, "-m", "distid.train", *args, timeout=120)
    first = cli(2, "dist.strategy=local_sgd", "local_sgd.every=2", "train.steps=4")
    assert first.returncode == 0, first.stderr
    other = cli(1, "dist.strategy=local_sgd", "local_sgd.every=2", "train.steps=8", resume=True)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "under DiLoCo (H = 2), whose inner optimizer state is each rank's own: resume it on 2 ranks" in other.stderr


@mnist
def test_a_partial_last_round_counts_in_the_bytes_per_step(dist_pool, tmp_path):
    """40 steps at H = 32 on 2 ranks: two synchronisations (after steps 32 and 40) of the full MLP,
    2 × 796,840 B handed in over 40 steps = 39,842 B per step (not 796,840 / 32 = 24,901)."""
    (s, _), _ = train(dist_pool(2), tmp_path, **{"train.steps": 40, "dist.strategy": "local_sgd",
                                                 "local_sgd.every": 32, **METHODS["full"]})
    assert s["comm_syncs"] == 2
    assert s["comm_payload_bytes_per_step"] == {"all_reduce": 39_842.0, "total": 39_842.0}
    assert s["comm_payload_formula"] == s["comm_payload_bytes_per_step"]


@mnist
def test_distid_s_diloco_follows_torchft_s(dist_pool, tmp_path):
    """torchft 0.2's DiLoCo (its Manager, Lighthouse and gloo process groups, tests/torchft_diloco.py)
    and distid's local_sgd strategy on the same MLP, data, seed and optimizers: the same trajectory, bit
    for bit (torchft averages per parameter, distid over one flat buffer; on 2 ranks both are exact
    halvings of the same sums)."""
    pytest.importorskip("torchft", reason="needs torchft: pip install -e .[diloco] (launch/setup.sh installs it)")
    kv = {"train.method": "full", "train.lr": 1e-3, "train.steps": 8, "dist.strategy": "local_sgd", "local_sgd.every": 4, "local_sgd.outer": "nesterov",
          "local_sgd.outer_lr": 0.7, "local_sgd.outer_momentum": 0.9}
    (_, ours), _ = train(dist_pool(2), tmp_path / "distid", **kv)
    proc = run([sys.executable, "tests/torchft_diloco.py", str(tmp_path / "tft.pt"), DATA_ROOT, "8", "4", "600"],
               timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "tft.pt")
    assert torch.equal(theirs[0], theirs[1])
    order = torch.load(tmp_path / "distid" / "trainable.pt")  # distid flattens in name order
    names = sorted(order)
    from distid.models import build_model
    shapes = dict(build_model("mlp", seed=0).named_parameters())
    pieces = dict(zip(list(shapes), torch.split(theirs[0], [p.numel() for p in shapes.values()])))
    theirs_by_name = torch.cat([pieces[k] for k in names])
    assert (ours - theirs_by_name).abs().max().item() == 0.0
