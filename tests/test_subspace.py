"""θ = θ₀ + P·d: the projections against explicit matrices, the wrapper against the base model."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distid.models import build_model
from distid.subspace import (PROJECTIONS, FastfoodProjection, SubspaceModel, check_dense_fits, hadamard,
                             make_projection)
from distid.subspace.hadamard import factor_sizes

SMALL = [(1, 1), (37, 5), (300, 7), (1025, 64), (4096, 100)]


def walsh(L: int, cols: torch.Tensor | None = None) -> torch.Tensor:
    """H_ij = (−1)^popcount(i & j): the closed form, independent of the code under test ([L, L], or
    the columns `cols` only: [L, len(cols)])."""
    i = torch.arange(L)
    bits = torch.bitwise_and(i[:, None], (i if cols is None else cols)[None, :])
    parity = torch.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).double()


@pytest.mark.parametrize("L", [1, 2, 4, 8, 64, 128, 1024, 8192])
def test_hadamard_matches_the_closed_form(L):
    x = torch.randn(3, L, dtype=torch.float64)
    cols = torch.arange(L) if L <= 1024 else torch.randperm(L)[:64]  # H is symmetric: (x·H)[:, j] = x·H[:, j]
    torch.testing.assert_close(hadamard(x)[:, cols], x @ walsh(L, cols))
    torch.testing.assert_close(hadamard(hadamard(x)), L * x)  # H·H = L·I


def fastfood_matrix(p: FastfoodProjection) -> torch.Tensor:
    """[D, d] built from the buffers as the docstring defines it: blocks H·G_j·Π_j·H·B, G_j = s_j·q_j,
    Π_j = Π∘σ_j, σ_j(i) = (a_j·(i ⊕ x_j) + c_j) mod L."""
    H = walsh(p.L)
    right = H @ torch.diag(p.B.double())  # shared by every block
    blocks = []
    for j in range(p.nb):
        i = torch.arange(p.L)
        a, x, c = (int(t[0]) for t in p.scramble(j, j + 1))
        assert a % 2 == 1 or p.L == 1
        sigma = (a * (i ^ x) + c) % p.L
        Pi = torch.zeros(p.L, p.L, dtype=torch.float64)
        Pi[i, p.perm.long()[sigma]] = 1  # (Π_j y)_i = y[Π[σ_j(i)]]
        blocks.append(H @ torch.diag(p.s[j].double() * p.q[j].double()) @ Pi @ right)
    return torch.cat(blocks)[: p.D, : p.d]


@pytest.mark.parametrize("D,d,block", [(300, 7, "auto"), (1025, 64, "auto"), (300, 7, "whole"), (100, 3, 16)])
def test_fastfood_equals_its_definition(D, d, block):
    p = FastfoodProjection(D, d, seed=2, block=block)
    torch.testing.assert_close(p.materialize(), fastfood_matrix(p), rtol=1e-5, atol=1e-6)


def test_sparse_equals_its_stored_matrix():
    p = make_projection("sparse", 500, 9, seed=1)
    torch.testing.assert_close(p.materialize(), p.to_dense())
    assert bool((p.rows[1:] >= p.rows[:-1]).all())  # one list, sorted by row


def test_hadamard_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        factor_sizes(48)


@pytest.mark.parametrize("kind", PROJECTIONS)
@pytest.mark.parametrize("D,d", SMALL)
def test_projection_matvec_and_transpose_match_the_matrix(kind, D, d):
    p = make_projection(kind, D, d, seed=3)
    M = p.materialize()  # [D, d] float64, built column by column from matvec
    assert M.shape == (D, d)
    v, g = torch.randn(d), torch.randn(D)
    torch.testing.assert_close(p.matvec(v).double(), M @ v.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.rmatvec(g).double(), M.t() @ g.double(), rtol=1e-5, atol=1e-5)
    # the autograd backward of forward() is exactly rmatvec
    v.requires_grad_(True)
    (p(v) * g).sum().backward()
    torch.testing.assert_close(v.grad, p.rmatvec(g))


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_columns_have_unit_norm(kind):
    M = make_projection(kind, 2000, 20, seed=0).materialize()
    torch.testing.assert_close(M.norm(dim=0), torch.ones(20, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_fastfood_columns_unit_norm_in_expectation():
    norms = FastfoodProjection(20_000, 64, seed=0).materialize().norm(dim=0)
    assert abs(norms.mean().item() - 1) < 0.05 and norms.std().item() < 0.1


@pytest.mark.parametrize("kind", PROJECTIONS)
def test_the_mlps_projection_has_unit_columns_independent_of_theta0(kind):
    """The MLP at d = 750: every sampled column of P has norm 1 ± 0.01, and P·e_i is uncorrelated
    with θ₀ (|corr| < 5/√D, five standard deviations of two independent vectors' correlation)."""
    sm = SubspaceModel(build_model("mlp"), 750, kind, seed=0)
    cols = torch.stack([sm.projection.matvec(e) for e in torch.eye(750)[::25]])  # 30 columns, [30, D]
    assert (cols.norm(dim=1) - 1).abs().max().item() < 0.01
    theta0 = sm.theta0 - sm.theta0.mean()
    corr = (cols - cols.mean(1, keepdim=True)) @ theta0 / (cols.std(1) * theta0.std() * sm.D)
    assert corr.abs().max().item() < 5 / sm.D**0.5


def test_sparse_density_is_about_one_over_sqrt_D():
    D, d = 40_000, 50
    p = make_projection("sparse", D, d, seed=1)
    expected = D * d / D**0.5
    assert 0.9 * expected < p.nnz < 1.1 * expected


@pytest.mark.parametrize("kind", PROJECTIONS)
def test_same_seed_same_projection_other_seed_other(kind):
    a, b, c = (make_projection(kind, 500, 9, seed=s).materialize() for s in (4, 4, 5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_fastfood_whole_network_block_and_errors():
    p = FastfoodProjection(1000, 10, seed=0, block="whole")
    assert (p.L, p.nb) == (1024, 1)
    with pytest.raises(ValueError, match="power of two"):
        FastfoodProjection(1000, 10, block=24)


def test_dense_refuses_what_does_not_fit():
    with pytest.raises(MemoryError, match="fastfood.*sparse"):
        check_dense_fits(199_210, 750, max_bytes=100 * 2**20)
    check_dense_fits(199_210, 750, max_bytes=10**9)  # 598 MB fits in 1 GB
    with pytest.raises(MemoryError, match="4 processes"):
        check_dense_fits(199_210, 750, max_bytes=10**9, copies=4)


class UserNet(nn.Module):
    """A user's own module: conv, batch norm (buffers), tied-free, no distid code."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 24 * 24, 10)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).flatten(1))


def test_model_sizes_match_the_paper():
    assert sum(p.numel() for p in build_model("mlp").parameters()) == 199_210
    assert sum(p.numel() for p in build_model("lenet").parameters()) == 44_426


@pytest.mark.parametrize("builder", [lambda: build_model("mlp", seed=1), lambda: build_model("lenet", seed=1),
                                     lambda: torch.manual_seed(1) and UserNet()])
@pytest.mark.parametrize("kind", PROJECTIONS)
def test_wrapper_starts_at_theta0_and_trains_only_d(builder, kind):
    ref, base = builder(), builder()
    ref.eval(), base.eval()
    D = sum(p.numel() for p in ref.parameters())
    m = SubspaceModel(base, 16, kind, seed=0)
    assert [n for n, _ in m.named_parameters()] == ["d"] and m.D == D
    # θ₀ and P are regenerated, never saved; the module's own buffers (batch norm statistics) stay
    own_buffers = ["module." + n for n in ref.state_dict() if n not in dict(ref.named_parameters())]
    assert list(m.state_dict()) == ["d"] + own_buffers
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(m(x), ref(x))  # d = 0: exactly the base model


@pytest.mark.parametrize("kind", PROJECTIONS)
def test_gradient_of_d_is_P_transpose_gradient_of_theta(kind):
    torch.manual_seed(0)
    m = SubspaceModel(build_model("mlp", seed=2).double(), 12, kind, seed=0)
    with torch.no_grad():
        m.d.copy_(torch.randn(12))
    x, y = torch.randn(16, 784, dtype=torch.float64), torch.randint(0, 10, (16,))
    F.cross_entropy(m(x), y).backward()
    # the same loss on the plain model at θ = θ₀ + P·d, by autograd over all D parameters
    plain = build_model("mlp", seed=2).double()
    with torch.no_grad():
        theta = m.theta()
        torch.nn.utils.vector_to_parameters(theta, plain.parameters())
    F.cross_entropy(plain(x), y).backward()
    g_theta = torch.cat([p.grad.reshape(-1) for p in plain.parameters()])
    P = m.projection.materialize()
    torch.testing.assert_close(m.d.grad.double(), P.t() @ g_theta, rtol=1e-4, atol=1e-6)


def test_fingerprint_changes_with_seed():
    a = SubspaceModel(build_model("mlp", seed=0), 8, "fastfood", seed=0).fingerprint()
    b = SubspaceModel(build_model("mlp", seed=0), 8, "fastfood", seed=0).fingerprint()
    c = SubspaceModel(build_model("mlp", seed=0), 8, "fastfood", seed=1).fingerprint()
    d = SubspaceModel(build_model("mlp", seed=1), 8, "fastfood", seed=0).fingerprint()
    assert a == b and a["P_e1"] != c["P_e1"] and a["theta0"] != d["theta0"]


def test_unknown_projection_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of dense, sparse, fastfood"):
        make_projection("gaussian", 10, 2, seed=0)


class Tied(nn.Module):
    """Input and output layers share one weight, as language models tie embeddings."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 4, bias=False)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = nn.Parameter(self.inp.weight.detach().t().clone())
        self.back = nn.Linear(4, 6, bias=False)
        self.back.weight = self.out.weight  # tied

    def forward(self, x):
        h = self.mid(self.inp(x))
        return self.out(h) + self.back(h)


def test_tied_parameters_stay_tied_and_d_is_the_only_parameter():
    torch.manual_seed(0)
    ref, base = Tied(), Tied()
    base.load_state_dict(ref.state_dict())
    m = SubspaceModel(base, 5, "dense", seed=0)
    assert [n for n, _ in m.named_parameters()] == ["d"]
    assert m.D == sum(p.numel() for p in ref.parameters())  # the shared weight counted once
    x = torch.randn(3, 6)
    torch.testing.assert_close(m(x), ref(x))
    with torch.no_grad():
        m.d.normal_()
    out = m(x)
    theta = dict(zip(m.names, m.theta().split([s.numel() for s in m.shapes])))
    w = theta["out.weight"].view(6, 4)
    h = ref.mid.bias + (x @ theta["inp.weight"].view(4, 6).t()) @ theta["mid.weight"].view(4, 4).t()
    h = h - ref.mid.bias + theta["mid.bias"]
    torch.testing.assert_close(out, 2 * h @ w.t())  # both heads used the same moved weight


def test_regenerated_buffers_leave_batch_norm_statistics_to_ddp():
    m = SubspaceModel(UserNet(), 4, "fastfood", seed=0)
    names = m.regenerated_buffers()
    assert "theta0" in names and "module.conv.weight" in names and "projection.q" in names
    assert not any("running_mean" in n or "num_batches" in n for n in names)


def test_fastfood_holds_about_one_byte_per_parameter():
    p = FastfoodProjection(199_210, 750, seed=0)
    assert p.q.dtype == torch.int8 and p.q.shape == (p.nb, p.L) and p.B.shape == p.perm.shape == (p.L,)
    assert p.B.dtype == torch.int8 and p.perm.dtype == torch.int32
    assert p.nbytes() == p.nb * p.L + 4 * p.nb + p.L + 4 * p.L
    assert p.nbytes() / p.D < 1.1


def test_hash32_is_lowbias32():
    """The torch hash (int64 lanes, 16-bit halves) equals the 32-bit reference the C kernel runs."""
    from distid.subspace.fastfood import hash32

    def ref(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    xs = [0, 1, 2, 3, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF]
    assert hash32(torch.tensor(xs)).tolist() == [ref(x) for x in xs]


@pytest.mark.parametrize("kind", PROJECTIONS)
@pytest.mark.parametrize("D,d,lo,hi", [(3000, 40, 0, 3000), (3000, 40, 17, 2900), (3000, 40, 64, 128),
                                       (3000, 40, 70, 75), (3000, 40, 2999, 3000), (100, 3, 5, 61)])
def test_a_range_of_rows_alone_matches_the_whole(kind, D, d, lo, hi):
    """matvec(d, lo, hi, add) = add + (P·d)[lo:hi] and rmatvec(g, lo) = P[lo:hi]ᵀ·g, partial blocks included."""
    p = make_projection(kind, D, d, seed=5)
    v, g, a = torch.randn(d), torch.randn(hi - lo), torch.randn(hi - lo)
    torch.testing.assert_close(p.matvec(v, lo, hi), p.matvec(v)[lo:hi], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p.matvec(v, lo, hi, add=a), a + p.matvec(v)[lo:hi], rtol=1e-5, atol=1e-6)
    full = torch.zeros(D)
    full[lo:hi] = g
    torch.testing.assert_close(p.rmatvec(g, lo), p.rmatvec(full), rtol=1e-5, atol=1e-5)


@pytest.fixture
def c_kernel(monkeypatch, request):
    """distid's C kernel module, built even in a suite run with DISTID_KERNEL=torch (reset after)."""
    from distid.subspace import kernel

    monkeypatch.delenv("DISTID_KERNEL", raising=False)
    kernel.library.cache_clear()
    request.addfinalizer(kernel.library.cache_clear)
    return kernel


def c_and_torch(kernel, monkeypatch, products):
    """products() through the C kernel, then through the torch path."""
    c = products()
    monkeypatch.setattr(kernel, "usable", lambda *t: False)
    return c, products()


@pytest.mark.parametrize("threads", [1, 2])
def test_fastfood_c_kernel_and_torch_path_agree_on_large_ranges(c_kernel, monkeypatch, request, threads):
    """Above 2¹⁸ rows per thread the kernel splits a range over threads at block boundaries."""
    before = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(before))
    torch.set_num_threads(threads)
    D, lo, hi = 3 * c_kernel.ROWS_PER_THREAD + 777, 5, 3 * c_kernel.ROWS_PER_THREAD + 700
    p = FastfoodProjection(D, 300, seed=3)
    v, g, a = torch.randn(300), torch.randn(hi - lo), torch.randn(hi - lo)
    assert len(c_kernel._spans(lo, hi, p.L)) == min(threads, 3)
    c, t = c_and_torch(c_kernel, monkeypatch, lambda: (p.matvec(v, lo, hi, add=a), p.rmatvec(g, lo)))
    torch.testing.assert_close(c[0], t[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c[1], t[1], rtol=1e-4, atol=1e-4)


def test_fastfood_c_kernel_and_torch_path_agree(c_kernel, monkeypatch):
    """The compiled kernel (when this machine builds it) and the torch path compute the same map."""
    import shutil

    assert c_kernel.library() is not None or not shutil.which("cc"), "a C compiler is here but the kernel did not build"
    p = FastfoodProjection(5000, 100, seed=1)
    v, g, a = torch.randn(100), torch.randn(4990), torch.randn(4990)
    c, t = c_and_torch(c_kernel, monkeypatch, lambda: (p.matvec(v, 3, 4993, add=a), p.rmatvec(g, 7)))
    torch.testing.assert_close(c[0], t[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c[1], t[1], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", PROJECTIONS)
def test_projection_on_gpu_never_waits_for_the_host(kind):
    """P·d and Pᵀ·g on the GPU: no device→host copy or synchronisation inside a step."""
    p = make_projection(kind, 5000, 64, seed=0).cuda()
    d = torch.randn(64, device="cuda", requires_grad=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        (p(d) ** 2).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    cpu = make_projection(kind, 5000, 64, seed=0)
    want = cpu.rmatvec(2 * cpu.matvec(d.detach().cpu()))
    torch.testing.assert_close(d.grad.cpu(), want, rtol=1e-4, atol=1e-4)


def test_every_c_source_is_package_data():
    """kernel.py reads kernel.c at run time, so pyproject.toml lists each .c file under distid/ as
    package data: a non-editable install (a wheel) carries it."""
    from fnmatch import fnmatch
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
        import tomli as tomllib

    repo = Path(__file__).resolve().parent.parent
    data = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    sources = sorted((repo / "distid").rglob("*.c"))
    assert repo / "distid/subspace/kernel.c" in sources
    for path in sources:
        package = ".".join(path.parent.relative_to(repo).parts)
        assert any(fnmatch(path.name, glob) for glob in data.get(package, ())), \
            f"{path.relative_to(repo)} is not package data of {package} in pyproject.toml"
