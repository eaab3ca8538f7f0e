"""Training in a random subspace, θ = θ₀ + P·d: projections (dense, sparse, Fastfood), the
Walsh–Hadamard transform, and the wrapper that makes d the only parameter of any nn.Module."""

from distid.subspace.dense import DenseProjection, check_dense_fits, dense_bytes
from distid.subspace.fastfood import FastfoodProjection
from distid.subspace.hadamard import hadamard
from distid.subspace.projection import Projection
from distid.subspace.sparse import SparseProjection
from distid.subspace.model import PROJECTIONS, SubspaceModel, make_projection

__all__ = [
    "DenseProjection", "FastfoodProjection", "PROJECTIONS", "Projection", "SparseProjection",
    "SubspaceModel", "check_dense_fits", "dense_bytes", "hadamard", "make_projection",
]
