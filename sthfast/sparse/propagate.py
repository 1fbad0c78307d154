"""Hypergraph and graph MixProp over :class:`SparseRows`, in O(nnz F) time and memory.

The model's activations are ``[B, C, N, T]``; propagation runs on a node-major view ``[rows, F]``
(``rows = N`` and ``F = B C T`` for a shared structure; ``rows = B N`` and ``F = C T`` for a
block-diagonal one), transposed once per MixProp call, not per step. The normalisations are folded into
the stored values with plain torch ops around :mod:`.custom_ops` (O(nnz)), so their gradients (including
the membership weights' through the degrees) come from autograd, and a MixProp step costs one or two
sparse products plus one add over ``[rows, F]``: that memory traffic, not arithmetic, is its cost.

On the CPU those passes and the layout copies are most of the time (torch's CSR kernels also zero
their outputs first), so the ``cpp`` backend runs the same MixProp through one fused kernel
(:func:`fused_hypergraph_mixprop`, :func:`fused_graph_mixprop` over
:func:`sthfast.extension.mixprop`): every step of one ``[N, T]`` slice in cache, ``x`` read once,
the output written once in the model's layout. Both take the same folded values, so the two paths
differ only in summation order.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .. import reference
from ..profiling import stage
from .structure import SparseRows

Spmm = Callable[..., Tensor]
# (x, structure, values [V, nnz], hops, depth, beta) -> [B, C (depth + 1), N, T]
FusedMixprop = Callable[..., Tensor]


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


def _mixprop(x: Tensor, step: Callable[[Tensor, Tensor], Tensor], depth: int,
             blocks: int | None) -> Tensor:
    """``h_0 = x, h_{j+1} = step(h_j, x)`` on the node-major view, all steps stacked and turned back:
    ``[B, C, N, T] -> [B, C (depth + 1), N, T]``."""
    x0 = node_major(x, blocks)
    out = [x0]
    for _ in range(depth):
        out.append(step(out[-1], x0))
    return channel_major(torch.stack(out), x, blocks)


def _hypergraph_values(s: SparseRows, beta: float) -> tuple[Tensor, Tensor]:
    """The values of ``H^T`` with the normalisations folded in (O(nnz), differentiable): ``gather``
    (``D_e^-1 H^T``: the hyperedge mean of its members) and ``spread`` (``(1 - beta) D_v^-1``: the
    node mean of its hyperedges, applied through ``S^T``)."""
    inv_e = reference.safe_reciprocal(s.row_sums())                 # [E]
    inv_v = reference.safe_reciprocal(s.col_sums())                 # [N]
    return s.val * inv_e[s.row], s.val * inv_v[s.col] * (1.0 - beta)


def _graph_values(a: SparseRows, beta: float, transpose: bool) -> Tensor:
    """The values of ``(1 - beta) D^-1 (A + I)`` (of ``A^T + I`` when ``transpose``), ``adjacency``
    holding ``A + I``."""
    degree = a.col_sums() if transpose else a.row_sums()            # >= 1: the self loop
    return a.val * ((1.0 - beta) / degree)[a.col if transpose else a.row]


def hypergraph_mixprop(spmm: Spmm, x: Tensor, incidence_t: SparseRows, depth: int,
                       beta: float) -> Tensor:
    """MixProp ``h_{j+1} = beta x + (1 - beta) P h_j`` with ``P = D_v^-1 H D_e^-1 H^T``,
    ``incidence_t = H^T`` (rows: hyperedges): ``x [B, C, N, T] -> [B, C (depth + 1), N, T]``.

    The degree normalisations and ``1 - beta`` are folded into two copies of the values (O(nnz)),
    so a step is two sparse products and one add over ``[rows, F]``."""
    gather_val, spread_val = _hypergraph_values(incidence_t, beta)
    gather, spread = incidence_t._replace(val=gather_val), incidence_t._replace(val=spread_val)

    def step(h: Tensor, x0: Tensor) -> Tensor:
        with stage("v2e"):
            edges = spmm(gather, h)
        with stage("e2v"):
            return torch.add(spmm(spread, edges, transpose=True), x0, alpha=beta)

    return _mixprop(x, step, depth, incidence_t.blocks)


def graph_mixprop(spmm: Spmm, x: Tensor, adjacency: SparseRows, depth: int, beta: float,
                  transpose: bool = False) -> Tensor:
    """MixProp with ``P = D^-1 (A + I)`` (``A^T + I`` when ``transpose``); ``adjacency`` holds
    ``A + I`` (self loops stored, as the sparse graph builders make it):
    ``x [B, C, N, T] -> [B, C (depth + 1), N, T]``."""
    scaled = adjacency._replace(val=_graph_values(adjacency, beta, transpose))

    def step(h: Tensor, x0: Tensor) -> Tensor:
        return torch.add(spmm(scaled, h, transpose=transpose), x0, alpha=beta)

    return _mixprop(x, step, depth, adjacency.blocks)


def fused_hypergraph_mixprop(mixprop: FusedMixprop, x: Tensor, incidence_t: SparseRows, depth: int,
                             beta: float) -> Tensor:
    """:func:`hypergraph_mixprop` as one fused kernel call (``mixprop``, e.g.
    :func:`sthfast.extension.mixprop`): the step is the hop ``H^T`` (gather) then ``H`` (spread)."""
    values = torch.stack(_hypergraph_values(incidence_t, beta))
    return mixprop(x, incidence_t, values, ((False, 0), (True, 1)), depth, beta)


def fused_graph_mixprop(mixprop: FusedMixprop, x: Tensor, adjacency: SparseRows, depth: int,
                        beta: float, transpose: bool = False) -> Tensor:
    """:func:`graph_mixprop` as one fused kernel call: the step is one hop, ``A`` or ``A^T``."""
    values = _graph_values(adjacency, beta, transpose).unsqueeze(0)
    return mixprop(x, adjacency, values, ((transpose, 0),), depth, beta)
