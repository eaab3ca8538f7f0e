"""θ formed one module at a time (SubspaceModel(layerwise=True)): the same loss and the same ∂L/∂d as
the whole θ, for every model, with θ's slices recomputed in the backward instead of kept."""

import pytest
import torch
import torch.nn.functional as F

from distid.models import build_model
from distid.subspace import PROJECTIONS, SubspaceModel

INPUTS = {"mlp": (4, 1, 28, 28), "lenet": (4, 1, 28, 28), "vit": (4, 1, 28, 28)}


def loss_and_grad(sm: SubspaceModel, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sm.d.grad = None
    loss = F.cross_entropy(sm(x), y)
    loss.backward()
    return loss.detach(), sm.d.grad.clone()


@pytest.mark.parametrize("name", sorted(INPUTS))
@pytest.mark.parametrize("kind", PROJECTIONS)
def test_layerwise_equals_the_whole_theta(name, kind):
    x, y = torch.randn(INPUTS[name]), torch.randint(0, 10, (INPUTS[name][0],))
    whole = SubspaceModel(build_model(name), 40, kind, seed=1)
    layer = SubspaceModel(build_model(name), 40, kind, seed=1, layerwise=True)
    with torch.no_grad():
        step = torch.randn(40) * 0.3  # away from d = 0, where P·d vanishes and a missed slice would hide
        whole.d.copy_(step)
        layer.d.copy_(step)
    (l1, g1), (l2, g2) = loss_and_grad(whole, x, y), loss_and_grad(layer, x, y)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-6)
    for name_, (offset, shape) in layer.frozen_slices().items():  # at rest every buffer views θ₀ again
        owner, _, leaf = name_.rpartition(".")
        buf = layer.module.get_submodule(owner)._buffers[leaf]
        assert buf.data_ptr() == layer.theta0[offset:].data_ptr() and not buf.requires_grad


def test_layerwise_keeps_no_slice_of_theta_for_the_backward():
    """What autograd saves in the forward holds no slice of θ: each is stored as its row range."""
    sm = SubspaceModel(build_model("mlp"), 20, "fastfood", seed=0, layerwise=True)
    kept = []
    lw = sm.layerwise
    pack = lw._pack
    lw._pack = lambda t: kept.append(pack(t)) or kept[-1]
    F.cross_entropy(sm(torch.randn(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
    tokens = [k for k in kept if isinstance(k, tuple)]
    tensors = [k for k in kept if isinstance(k, torch.Tensor)]
    assert len(tokens) == 2  # the weights of layers 2 and 3 (layer 1's input needs no gradient)
    assert all(t.numel() < 200 * 200 for t in tensors)  # activations only


def test_layerwise_with_said_is_refused():
    with pytest.raises(ValueError, match="layerwise θ and SAID cannot be combined"):
        SubspaceModel(build_model("mlp"), 40, "fastfood", said=True, layerwise=True)


class ReadsChildWeight(torch.nn.Module):
    """A parent that uses its child's weight outside the child's forward (as a tied output layer can)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Linear(6, 6)

    def forward(self, x):
        return F.linear(self.emb(x), self.emb.weight)


def test_a_weight_used_outside_its_modules_forward_is_refused():
    sm = SubspaceModel(ReadsChildWeight(), 5, "fastfood", seed=0, layerwise=True)
    with pytest.raises(RuntimeError, match="outside its own forward"):
        sm(torch.randn(2, 6)).sum().backward()


def test_d_changed_between_forward_and_backward_is_refused():
    sm = SubspaceModel(build_model("mlp"), 20, "fastfood", seed=0, layerwise=True)
    loss = F.cross_entropy(sm(torch.randn(2, 1, 28, 28)), torch.tensor([1, 2]))
    with torch.no_grad():
        sm.d.add_(1.0)
    with pytest.raises(RuntimeError, match="d changed in place"):
        loss.backward()


def test_a_slice_saved_twice_is_recomputed_once():
    """ViT's LayerNorms save weight and bias, both in one module's slice: one recomputation serves both."""
    sm = SubspaceModel(build_model("vit"), 30, "fastfood", seed=0, layerwise=True)
    calls = []
    matvec = sm.projection.matvec
    sm.projection.matvec = lambda *a, **k: calls.append(a[1:3]) or matvec(*a, **k)
    loss = F.cross_entropy(sm(torch.randn(2, 1, 28, 28)), torch.tensor([1, 2]))
    forward = len(calls)
    del calls[:]
    loss.backward()
    assert forward == 36 and 30 <= len(calls) == len(set(calls))  # in the backward: each module's rows at most once
