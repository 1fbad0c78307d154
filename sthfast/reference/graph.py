"""The first-order adaptive graph (MTGNN) and its normalised propagation, dense."""

from __future__ import annotations

import torch
from torch import Tensor

from .hypergraph import apply_operator
from .mixprop import mixprop, projection
from .neighbors import topk_neighbors


def adaptive_graph(m1: Tensor, m2: Tensor, k: int, alpha: float) -> Tensor:
    """``A = ReLU(tanh(alpha (M1 M2^T - M2 M1^T)))`` keeping the top ``k`` entries of each row.

    Args:
        m1, m2: ``[N, d]`` node vectors (``tanh(alpha Lin_i(E_i))``).
        k: entries kept per row (``1 <= k <= N``), chosen by the raw antisymmetric score
            ``m1_i . m2_j - m2_i . m1_j`` (the inner product of ``[m1_i, -m2_i]`` with
            ``[m2_j, m1_j]``), ties to the smaller column.
    Returns:
        dense ``[N, N]`` adjacency, zero outside the kept entries.
    """
    idx = topk_neighbors(torch.cat([m1, -m2], -1), torch.cat([m2, m1], -1), k, metric="ip")  # [N, k]
    n = m1.shape[0]
    return m1.new_zeros(n, n).scatter(-1, idx, adjacency_values(m1, m2, idx, alpha))


def adjacency_values(m1: Tensor, m2: Tensor, idx: Tensor, alpha: float) -> Tensor:
    """``ReLU(tanh(alpha (m1_i . m2_j - m2_i . m1_j)))`` for the selected pairs ``(i, idx[i, :])``:
    ``[N, k]``, recomputed from gathered embeddings in O(N k d) (differentiable). Shared by every
    backend."""
    score = ((m1.unsqueeze(1) * m2[idx]).sum(-1) - (m2.unsqueeze(1) * m1[idx]).sum(-1))  # [N, k]
    return torch.relu(torch.tanh(alpha * score))


def graph_operator(adjacency: Tensor) -> Tensor:
    """The row-normalised propagation matrix ``D^-1 (A + I)`` (``[N, N]``)."""
    a = adjacency + torch.eye(adjacency.shape[0], dtype=adjacency.dtype, device=adjacency.device)
    return a / a.sum(dim=1, keepdim=True)


def graph_propagate(x: Tensor, adjacency: Tensor) -> Tensor:
    """``D^-1 (A + I) x`` over the node axis: every node averages itself and its in-row neighbours.

    Args:
        x: ``[B, C, N, T]``; adjacency: ``[N, N]``, row v lists the weights of the nodes v reads.
    Returns:
        ``[B, C, N, T]``.
    """
    return apply_operator(x, graph_operator(adjacency))


def static_graph(adjacency: Tensor) -> Tensor:
    """A fixed adjacency ``[N, N]`` (dense or sparse COO) as the dense tensor :func:`graph_mixprop`
    takes."""
    return adjacency.to_dense() if adjacency.layout != torch.strided else adjacency


def graph_mixprop(x: Tensor, adjacency: Tensor, depth: int, beta: float, transpose: bool = False) -> Tensor:
    """MixProp over the graph, ``P = D^-1 (A + I)`` (``A^T`` when ``transpose``): ``x [B, C, N, T]``
    -> ``[B, C (depth + 1), N, T]`` (see :func:`mixprop`)."""
    operator = graph_operator(adjacency.T if transpose else adjacency)
    return mixprop(x, lambda h: apply_operator(h, operator), depth, beta)


def projected_graph_mixprop(x: Tensor, adjacency: Tensor, depth: int, beta: float, weight: Tensor,
                            bias: Tensor | None = None, transpose: bool = False) -> Tensor:
    """:func:`graph_mixprop` then the 1x1 projection ``weight [C_out, C (depth + 1)]`` (and
    ``bias [C_out]``): ``x [B, C, N, T] -> [B, C_out, N, T]``."""
    return projection(graph_mixprop(x, adjacency, depth, beta, transpose), weight, bias)
