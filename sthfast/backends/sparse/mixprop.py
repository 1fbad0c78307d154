"""Hypergraph and graph MixProp over :class:`SparseRows`, in O(nnz F) time and memory: a chain of
hops over one sparse matrix, run step by step (:func:`by_steps`) or fused (:func:`fused`); the
derivation is in ``sthfast/backends/README.md``."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch
from torch import Tensor

from ... import reference
from ...profile_stages import stage
from .structure import SparseRows

Spmm = Callable[..., Tensor]
Hops = tuple[tuple[bool, int], ...]
# (x, structure, values, hops, depth, beta, stages) -> [B, C (depth + 1), N, T]
Propagator = Callable[..., Tensor]
# (x, structure, values, hops, depth, beta, weight [C_out, C (depth + 1)], bias [C_out] | None, stages)
#   -> [B, C_out, N, T]: the MixProp then its 1x1 projection (sthfast.backends.projected_mixprop)
Projector = Callable[..., Tensor]

HYPERGRAPH_HOPS: Hops = ((False, 0), (True, 1))   # H^T (gather), then H (spread)
HYPERGRAPH_STAGES = ("v2e", "e2v")                 # the profiler's names of those two products


def graph_hops(transpose: bool) -> Hops:
    return ((transpose, 0),)


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


def by_steps(spmm: Spmm, x: Tensor, s: SparseRows, values: Sequence[Tensor], hops: Hops, depth: int,
             beta: float, stages: Sequence[str] = ()) -> Tensor:
    """The chain of ``hops`` one sparse product at a time (``stages``: a profiler range per hop):
    ``x [B, C, N, T] -> [B, C (depth + 1), N, T]``."""
    structures = [s._replace(val=v) for v in values]
    x0 = node_major(x, s.blocks)
    out = [x0]
    for _ in range(depth):
        h = out[-1]
        for i, (transpose, v) in enumerate(hops):
            with stage(stages[i]) if stages else nullcontext():
                h = spmm(structures[v], h, transpose=transpose)
        out.append(torch.add(h, x0, alpha=beta))
    return channel_major(torch.stack(out), x, s.blocks)


def fused(mixprop: Callable[..., Tensor]) -> Propagator:
    """A propagator running the whole chain in one ``mixprop(x, s, values [V, nnz], hops, depth,
    beta)`` call (:func:`sthfast.backends.extension.mixprop` on the CPU,
    :func:`sthfast.backends.triton.mixprop.mixprop` on CUDA); it has no per-hop stages."""
    def run(x: Tensor, s: SparseRows, values: Sequence[Tensor], hops: Hops, depth: int, beta: float,
            stages: Sequence[str] = ()) -> Tensor:
        return mixprop(x, s, torch.stack(list(values)), hops, depth, beta)

    return run


def composed(propagate: Propagator) -> Projector:
    """A projector that runs ``propagate``'s MixProp, then :func:`sthfast.reference.projection`
    (for the backends without a fused projected MixProp)."""
    def run(x: Tensor, s: SparseRows, values: Sequence[Tensor], hops: Hops, depth: int, beta: float,
            weight: Tensor, bias: Tensor | None, stages: Sequence[str] = ()) -> Tensor:
        return reference.projection(propagate(x, s, values, hops, depth, beta, stages), weight, bias)

    return run


def hypergraph_values(s: SparseRows, beta: float) -> tuple[Tensor, Tensor]:
    """The values of ``H^T`` with the normalisations folded in (O(nnz), differentiable): ``gather``
    (``D_e^-1 H^T``: the hyperedge mean of its members) and ``spread`` (``(1 - beta) D_v^-1``: the
    node mean of its hyperedges, applied through ``S^T``)."""
    inv_e = reference.safe_reciprocal(s.row_sums())                 # [E]
    inv_v = reference.safe_reciprocal(s.col_sums())                 # [N]
    return s.val * inv_e[s.row], s.val * inv_v[s.col] * (1.0 - beta)


def graph_values(a: SparseRows, beta: float, transpose: bool) -> Tensor:
    """The values of ``(1 - beta) D^-1 (A + I)`` (of ``A^T + I`` when ``transpose``), ``adjacency``
    holding ``A + I``."""
    degree = a.col_sums() if transpose else a.row_sums()            # >= 1: the self loop
    return a.val * ((1.0 - beta) / degree)[a.col if transpose else a.row]


def hypergraph_mixprop(propagate: Propagator, x: Tensor, incidence_t: SparseRows, depth: int,
                       beta: float) -> Tensor:
    """MixProp ``h_{j+1} = beta x + (1 - beta) P h_j`` with ``P = D_v^-1 H D_e^-1 H^T``,
    ``incidence_t = H^T`` (rows: hyperedges): ``x [B, C, N, T] -> [B, C (depth + 1), N, T]``."""
    return propagate(x, incidence_t, hypergraph_values(incidence_t, beta), HYPERGRAPH_HOPS, depth, beta,
                     HYPERGRAPH_STAGES)


def graph_mixprop(propagate: Propagator, x: Tensor, adjacency: SparseRows, depth: int, beta: float,
                  transpose: bool = False) -> Tensor:
    """MixProp with ``P = D^-1 (A + I)`` (``A^T + I`` when ``transpose``); ``adjacency`` holds
    ``A + I`` (self loops stored, as the sparse graph builders make it):
    ``x [B, C, N, T] -> [B, C (depth + 1), N, T]``."""
    return propagate(x, adjacency, (graph_values(adjacency, beta, transpose),), graph_hops(transpose),
                     depth, beta)


def projected_hypergraph_mixprop(project: Projector, x: Tensor, incidence_t: SparseRows, depth: int, beta: float,
                                 weight: Tensor, bias: Tensor | None) -> Tensor:
    """:func:`hypergraph_mixprop` then its 1x1 projection ``weight [C_out, C (depth + 1)]`` (and
    ``bias``): ``x [B, C, N, T] -> [B, C_out, N, T]``."""
    return project(x, incidence_t, hypergraph_values(incidence_t, beta), HYPERGRAPH_HOPS, depth, beta, weight, bias,
                   HYPERGRAPH_STAGES)


def projected_graph_mixprop(project: Projector, x: Tensor, adjacency: SparseRows, depth: int, beta: float,
                            weight: Tensor, bias: Tensor | None, transpose: bool = False) -> Tensor:
    """:func:`graph_mixprop` then its 1x1 projection: ``x [B, C, N, T] -> [B, C_out, N, T]``."""
    return project(x, adjacency, (graph_values(adjacency, beta, transpose),), graph_hops(transpose), depth, beta,
                   weight, bias)
