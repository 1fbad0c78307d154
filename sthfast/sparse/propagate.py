"""Hypergraph and graph MixProp over :class:`SparseRows`, in O(nnz F) time and memory.

The model's activations are ``[B, C, N, T]``; propagation runs on a node-major view ``[rows, F]``
(``rows = N`` and ``F = B C T`` for a shared structure; ``rows = B N`` and ``F = C T`` for a
block-diagonal one), transposed once per MixProp call, not per step. The normalisations are plain
torch ops around :mod:`.spmm`, so their gradients (including the membership weights' through the
degrees) come from autograd. MixProp steps are not fused: each step is two gathers whose cost is
the memory traffic of ``[rows, F]``, which a fused loop would not reduce.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from .. import reference
from .structure import SparseRows

Spmm = Callable[..., Tensor]


def node_major(x: Tensor, blocks: int | None) -> Tensor:
    """``[B, C, N, T]`` -> ``[N, B C T]`` (shared) or ``[B N, C T]`` (``blocks == B``)."""
    b, c, n, t = x.shape
    if blocks is None:
        return x.permute(2, 0, 1, 3).reshape(n, b * c * t)
    return x.permute(0, 2, 1, 3).reshape(b * n, c * t)


def channel_major(y: Tensor, like: Tensor, blocks: int | None) -> Tensor:
    """``[D, rows, F]`` (D MixProp outputs) -> ``[B, D C, N, T]``, the inverse of :func:`node_major`."""
    b, c, n, t = like.shape
    d = y.shape[0]
    if blocks is None:
        return y.view(d, n, b, c, t).permute(2, 0, 3, 1, 4).reshape(b, d * c, n, t)
    return y.view(d, b, n, c, t).permute(1, 0, 3, 2, 4).reshape(b, d * c, n, t)


def _mixprop(x: Tensor, propagate: Callable[[Tensor], Tensor], depth: int, beta: float,
             blocks: int | None) -> Tensor:
    """Reference MixProp recurrence on the node-major view (one transpose in, one out)."""
    h = node_major(x, blocks)
    out = reference.mixprop(h[None, None], lambda v: propagate(v[0, 0])[None, None], depth, beta)
    return channel_major(out[0], x, blocks)


def hypergraph_mixprop(spmm: Spmm, x: Tensor, incidence_t: SparseRows, depth: int,
                       beta: float) -> Tensor:
    """MixProp with ``P = D_v^-1 H D_e^-1 H^T``, ``incidence_t = H^T`` (rows: hyperedges):
    ``x [B, C, N, T] -> [B, C (depth + 1), N, T]``."""
    inv_e = reference.safe_reciprocal(incidence_t.row_sums()).unsqueeze(1)  # [E, 1]
    inv_v = reference.safe_reciprocal(incidence_t.col_sums()).unsqueeze(1)  # [N, 1]

    def propagate(h: Tensor) -> Tensor:                              # [N, F] -> [N, F]
        edge_mean = spmm(incidence_t, h) * inv_e                     # hyperedge <- its members
        return spmm(incidence_t, edge_mean, transpose=True) * inv_v  # node <- its hyperedges

    return _mixprop(x, propagate, depth, beta, incidence_t.blocks)


def graph_mixprop(spmm: Spmm, x: Tensor, adjacency: SparseRows, depth: int, beta: float,
                  transpose: bool = False) -> Tensor:
    """MixProp with ``P = D^-1 (A + I)`` (``A^T`` when ``transpose``), ``adjacency = A``:
    ``x [B, C, N, T] -> [B, C (depth + 1), N, T]``."""
    degree = adjacency.col_sums() if transpose else adjacency.row_sums()
    inv = (1.0 / (1.0 + degree)).unsqueeze(1)                       # A >= 0, so 1 + degree >= 1

    def propagate(h: Tensor) -> Tensor:
        return (h + spmm(adjacency, h, transpose=transpose)) * inv

    return _mixprop(x, propagate, depth, beta, adjacency.blocks)
