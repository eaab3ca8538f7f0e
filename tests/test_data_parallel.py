"""Lesson 2: hand-written ring DP and DDP end where one process on the global batch ends."""

import pytest
import torch

from datasets_for_tests import DATA_ROOT, train_split
from distid.parallel import lesson
from distid.primitives.formulas import exact_sent

STEPS, GLOBAL_BATCH, LR = 20, 24, 0.05


@pytest.fixture(scope="module")
def single_params():
    res, _ = lesson.run(train_split(DATA_ROOT), "single", STEPS, GLOBAL_BATCH, LR)
    return res.params


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_hand_dp_and_ddp_match_single_process(dist_pool, single_params, n):
    results = dist_pool(n).run("rank_targets:dp_runs", DATA_ROOT, STEPS, GLOBAL_BATCH, LR, timeout=120)
    D = single_params.numel()
    for rank, (hand, ddp, bytes_per_step) in enumerate(results):
        torch.testing.assert_close(hand, single_params, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ddp, single_params, rtol=1e-4, atol=1e-5)
        assert torch.equal(hand, results[0][0]), "replicas drifted apart"
        assert bytes_per_step == exact_sent("all_reduce", D, 4, n, rank)


def test_training_moves_the_parameters(single_params):
    """Guards the test above: equality must not come from runs that did nothing."""
    from distid.models import build_model

    start = torch.cat([p.reshape(-1) for p in build_model("mlp").parameters()]).detach()
    assert (single_params - start).abs().max() > 1e-3
