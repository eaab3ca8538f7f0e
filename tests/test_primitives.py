"""Lesson 1's collectives against an independent reference and torch.distributed, 1–4 gloo ranks."""

import time

import pytest
import torch
from hypothesis import given, settings, strategies as st

from distid.primitives import chunk_bounds
from distid.primitives.check import make_input
from distid.primitives.formulas import OPS, exact_received, exact_sent, textbook_sent
from distpool import RankFailed
from rank_targets import DTYPES

WORLD_SIZES = [1, 2, 3, 4]


def expected_output(op, numel, dtype, seed, src, n, rank):
    """What `op` must leave on `rank`, computed here from every rank's input — no collective."""
    xs = [make_input(numel, dtype, seed, r) for r in range(n)]
    a, b = chunk_bounds(numel, n)[rank]
    if op in ("all_reduce", "naive_all_reduce", "reduce_scatter"):
        total = torch.stack([x.double() for x in xs]).sum(0) if dtype.is_floating_point else sum(xs)
        return total[a:b] if op == "reduce_scatter" else total
    if op == "all_gather":
        return torch.cat([xs[r][s:e] for r, (s, e) in enumerate(chunk_bounds(numel, n))])
    return xs[src]  # broadcast


def assert_cases(pool, cases):
    n = pool.world_size
    per_rank = pool.run("rank_targets:check_cases", cases)
    for i, (op, numel, dtype_name, seed, src) in enumerate(cases):
        dtype = DTYPES[dtype_name]
        for rank in range(n):
            rec, hand = per_rank[rank][i]
            assert rec["ok"], rec
            want = expected_output(op, numel, dtype, seed, src, n, rank)
            if dtype.is_floating_point:
                torch.testing.assert_close(hand.double(), want.double(), rtol=1e-5, atol=1e-4)
            else:
                assert torch.equal(hand, want), (op, numel, rank)
            v = (rank - src) % n if op == "broadcast" else rank
            assert rec["sent"] == exact_sent(op, numel, hand.element_size(), n, v)
            assert rec["received"] == exact_received(op, numel, hand.element_size(), n, v)


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_every_op_matches_reference_and_bytes(dist_pool, n):
    cases = [(op, numel, dt, numel + 7, n - 1 if op == "broadcast" else 0)
             for op in OPS for numel in (1, 2, 3, 5, 12, 1001) for dt in ("float32", "float64", "int64")]
    assert_cases(dist_pool(n), cases)


@pytest.mark.parametrize("n", WORLD_SIZES)
@settings(max_examples=15, deadline=None)
@given(numel=st.integers(1, 4000), dtype=st.sampled_from(["float32", "int64", "int32"]),
       seed=st.integers(0, 10**6), src=st.integers(0, 3))
def test_property_any_length(dist_pool, n, numel, dtype, seed, src):
    assert_cases(dist_pool(n), [(op, numel, dtype, seed, src % n) for op in OPS])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_ring_bytes_equal_textbook_when_divisible(n):
    for op in ("all_reduce", "reduce_scatter", "all_gather"):
        for rank in range(n):
            assert exact_sent(op, 12 * 1000, 4, n, rank) == textbook_sent(op, 12 * 1000 * 4, n)


def test_in_place_and_non_contiguous(dist_pool):
    n = 3
    results = dist_pool(n).run("rank_targets:in_place_and_layout")
    base = torch.arange(12.0).reshape(3, 4).t()
    total = sum(range(1, n + 1))
    for same, t, b, m, naive, rs, ag in results:
        assert same
        torch.testing.assert_close(t, base * total)
        assert torch.equal(b, torch.full((5,), float(n - 1)))
        assert torch.equal(m, torch.tensor([float(n - 1), 0.0]))
        torch.testing.assert_close(naive, base * total)
        torch.testing.assert_close(rs, torch.full((2,), float(total)))  # chunk `rank` of 6 ones·(r+1)
        assert torch.equal(ag, torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0]))


def test_bad_op_and_src_are_rejected_on_every_world_size(dist_pool):
    for n in (1, 2):
        errors = dist_pool(n).run("rank_targets:bad_arguments")
        for err_op, err_src in errors:
            assert "unsupported reduce op" in err_op and "is not a rank" in err_src


def test_failing_rank_kills_the_rest_fast(dist_pool):
    pool = dist_pool(4)
    t0 = time.monotonic()
    with pytest.raises(RankFailed, match="injected failure on rank 2"):
        pool.run("rank_targets:fail_on", 2, timeout=60)
    assert time.monotonic() - t0 < 10
    assert not pool.alive


def test_hanging_rank_is_detected(dist_pool):
    pool = dist_pool(3)
    with pytest.raises(RankFailed, match=r"ranks \[0, 1, 2\] never answered"):
        pool.run("rank_targets:hang_on", 1, timeout=4)
