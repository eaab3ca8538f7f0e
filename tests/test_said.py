"""SAID (subspace.said): one trainable scale per parameter tensor, inside the budget d."""

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.config import ConfigError, load_config
from distid.models import build_model, count_params
from distid.subspace import SubspaceModel
from distid.run.build import build
from distpool import RankFailed


def test_said_spends_m_of_the_d_trainable_numbers_on_scales():
    model = SubspaceModel(build_model("mlp"), 40, "fastfood", seed=0, said=True)
    assert count_params(model, trainable_only=True) == 40
    assert model.said.shape == (6,) and model.d.shape == (34,)  # 3 weights + 3 biases


def test_said_scales_each_tensors_slice_of_p_d():
    model = SubspaceModel(build_model("mlp"), 40, "fastfood", seed=0, said=True)
    with torch.no_grad():
        model.d.normal_()
        pd = model.projection(model.d)
        assert torch.equal(model.theta(), model.theta0 + pd)  # λ = 1 at the start
        model.said.copy_(torch.arange(6.0))
        sizes = [s.numel() for s in model.shapes]
        for i, (got, want, t0) in enumerate(zip(model.theta().split(sizes), pd.split(sizes), model.theta0.split(sizes))):
            torch.testing.assert_close(got, t0 + i * want)


def test_said_gradient_of_a_scale_is_its_slice_dot_the_weight_gradient():
    torch.manual_seed(0)
    model = SubspaceModel(build_model("mlp"), 40, "fastfood", seed=0, said=True)
    with torch.no_grad():
        model.d.normal_()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    theta = model.theta().detach().requires_grad_()
    torch.nn.functional.cross_entropy(model.run(theta, x), y).backward()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    sizes = [s.numel() for s in model.shapes]
    with torch.no_grad():
        pd = model.projection(model.d).split(sizes)
    want = torch.stack([(p * g).sum() for p, g in zip(pd, theta.grad.split(sizes))])
    torch.testing.assert_close(model.said.grad, want, rtol=1e-4, atol=1e-6)


def test_said_needs_d_above_the_number_of_tensors():
    with pytest.raises(ConfigError, match="SAID needs d > 6"):
        build(load_config(None, ["subspace.said=true", "subspace.d=6"]), 1)
    with pytest.raises(ConfigError, match="subspace.said.*true or false"):
        load_config(None, ["subspace.said=1"])


needs_mnist = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
BASE = [f"data.root={DATA_ROOT}", "train.steps=14", "train.log_every=7", "subspace.d=40", "subspace.said=true"]


@needs_mnist
def test_said_under_ddp_all_reduces_d_floats_and_fsdp_says_no(dist_pool, tmp_path):
    (s, a), (_, b) = dist_pool(2).run("rank_targets:train_run", BASE, str(tmp_path / "ddp"), timeout=180)
    assert s["trainable_params"] == 40 and s["comm_payload_bytes_per_step"]["total"] == 4 * 40
    assert torch.equal(a, b)
    with pytest.raises(RankFailed, match="said = true is not supported with dist.strategy = 'fsdp'"):
        dist_pool(2).run("rank_targets:train_run", [*BASE, "dist.strategy=fsdp"], str(tmp_path / "fsdp"), timeout=120)


def test_moving_the_model_keeps_the_layers_views_of_theta0():
    model = SubspaceModel(build_model("mlp"), 10, "fastfood", seed=0).to(torch.float64)
    base = model.theta0.untyped_storage().data_ptr()
    bufs = dict(model.module.named_buffers())
    assert model.theta0.dtype == torch.float64 and len(bufs) == 6
    assert all(b.dtype == torch.float64 and b.untyped_storage().data_ptr() == base for b in bufs.values())
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(model(x), model.module(x))  # d = 0: θ = θ₀, the module's own buffers
