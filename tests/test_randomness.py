"""Independent randomness: every generator is keyed by a hash of (seed, purpose[, epoch]), so no two
streams coincide across seeds 0–9 and purposes (θ₀, P, LoRA's A, the data order of each epoch,
PowerSGD); the training loop advances the loader's epoch once per pass."""

from types import SimpleNamespace

import numpy as np
import torch

from distid import lora, runtime
from distid.data import ShardedLoader
from distid.data.datasets import Split
from distid.models import build_model
from distid.run.job import Job
from distid.subspace import SubspaceModel

SEEDS = range(10)
PURPOSES = ["model init", "projection", "lora", "data order", "powersgd", "byte batches", "collective input"]


def test_no_two_generator_seeds_coincide_across_seeds_purposes_and_epochs():
    keys = [(s, p, e) for s in SEEDS for p in PURPOSES for e in range(10)]
    seeds = [runtime.rng_seed(s, p, e) for s, p, e in keys]
    assert len(set(seeds)) == len(keys)
    assert runtime.rng_seed(0, "data order", 1) != runtime.rng_seed(1, "data order", 0)  # seed + epoch did


def first_rows(t: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in t.detach().reshape(t.shape[0], -1)}


def test_lora_factors_share_no_row_with_the_frozen_weights():
    for seed in (0, 1, 7):
        model = build_model("mlp", seed=seed)
        w0 = {name: first_rows(m.weight) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        lora.inject(model, 4, 4.0, seed=seed)
        for name, m in model.named_modules():
            if isinstance(m, lora.LoRALinear):
                shared = len(first_rows(m.lora_A) & w0[name])
                assert shared == 0, f"seed {seed}, layer {name}: {shared} rows of LoRA's A are rows of W₀"


def test_every_stream_differs_between_seeds_and_purposes():
    """The first numbers drawn for θ₀, P, LoRA's A and five epochs' data orders, for seeds 0–9: all distinct."""
    drawn = {}
    for seed in SEEDS:
        model = build_model("mlp", seed=seed)
        drawn[seed, "model init"] = next(model.parameters()).detach().reshape(-1)[:64]
        proj = SubspaceModel(build_model("mlp", seed=seed), 16, "dense", seed=seed).projection
        drawn[seed, "projection"] = proj.materialize().reshape(-1)[:64].float()
        lora.inject(model, 2, 2.0, seed=seed)
        drawn[seed, "lora"] = next(p for n, p in model.named_parameters() if n.endswith("lora_A")).detach().reshape(-1)[:64]
        loader = ShardedLoader(tiny_split(1000), 100, 0, 1, seed=seed)
        for epoch in range(5):
            drawn[seed, "data order", epoch] = torch.from_numpy(loader.permutation(epoch)[:64].astype(np.float32))
    values = {key: v.numpy().tobytes() for key, v in drawn.items()}
    assert len(set(values.values())) == len(values)


def tiny_split(n: int) -> Split:
    return Split(np.zeros((n, 28, 28), np.uint8), np.arange(n, dtype=np.int64) % 10)


def test_the_loop_advances_the_epoch_once_per_pass():
    loader = ShardedLoader(tiny_split(40), 10, 0, 1, seed=3)  # 4 batches an epoch
    job = SimpleNamespace(loader=loader, device=torch.device("cpu"))
    stream = Job.batches(job)
    seen = [next(stream)[1] for _ in range(12)]  # three passes
    for epoch in range(3):
        expected = torch.from_numpy(loader.permutation(epoch) % 10)
        assert torch.equal(torch.cat(seen[4 * epoch:4 * epoch + 4]), expected), f"pass {epoch} used another order"
    assert loader.epoch == 2
