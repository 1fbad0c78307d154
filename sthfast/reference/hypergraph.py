"""The KNN hypergraph over node features and its propagation ``D_v^-1 H D_e^-1 H^T``, dense."""

from __future__ import annotations

import torch
from torch import Tensor

from .mixprop import mixprop, projection
from .neighbors import topk_neighbors


def knn_hypergraph(z: Tensor, k: int, binary: bool = False, temperature: float | Tensor = 1.0,
                   neighbors: Tensor | None = None) -> Tensor:
    """Incidence of the hypergraph whose hyperedges are the nodes' k-nearest-neighbour sets.

    Hyperedge ``e`` is node ``e`` and its ``k - 1`` nearest other nodes in ``z`` (Euclidean, ties
    to the smaller index; ``e`` itself always belongs, even among duplicate points). Membership
    weights are ``softmax(-|z_v - z_e|^2 / (d * temperature))`` over the ``k`` members (the mean
    squared distance per feature, so that the softmax does not collapse onto the centre as ``d``
    grows; differentiable in ``z``), or 1 when ``binary``. Hyperedges with the same
    node set are merged into the one with the smallest centre index, their weights averaged; the
    columns of the merged-away copies are zero.

    Args:
        z: ``[N, d]`` or ``[B, N, d]`` node features.
        temperature: a number, or one per hyperedge (``[N]``, e.g. learned: a small one keeps a
            hyperedge's weight on its centre, a large one spreads it evenly over the ``k``
            members, so each hyperedge's effective order is its own; see :func:`effective_order`).
        neighbors: ``[..., N, k]`` the hyperedges' members, self first, if already searched
            (e.g. reused from an earlier step); default: searched here.
    Returns:
        ``H``: ``[N, N]`` or ``[B, N, N]``; ``H[..., v, e]`` is the weight of node v in hyperedge e.
    """
    idx = topk_neighbors(z, z, k, metric="l2", self_first=True) if neighbors is None else neighbors
    weight = membership_weights(z, idx, binary, temperature)        # [..., N, k]
    member = torch.zeros(*idx.shape[:-1], z.shape[-2], dtype=z.dtype, device=z.device)
    member = member.scatter(-1, idx, weight)                        # [..., e, v]
    node_set = idx.sort(dim=-1).values                              # [..., N, k]
    same = (node_set.unsqueeze(-2) == node_set.unsqueeze(-3)).all(-1)  # [..., e, e']
    first = same.to(torch.int8).argmax(dim=-1)                      # smallest e' with e's set
    keep = first == torch.arange(same.shape[-1], device=z.device)   # [..., e]
    merge = same.to(z.dtype) / same.sum(-1, keepdim=True).to(z.dtype)  # mean over the copies
    merge = merge * keep.unsqueeze(-1).to(z.dtype)
    return (merge @ member).transpose(-1, -2)                       # [..., v, e]


def membership_weights(z: Tensor, idx: Tensor, binary: bool, temperature: float | Tensor) -> Tensor:
    """Weights of hyperedge e's members ``idx[..., e, :]``: ``softmax(-|z_v - z_e|^2 / (d T_e))`` over
    the members (``[..., E, k]``; ``T`` a number or one per hyperedge, ``[E]``), recomputed from
    gathered features in O(E k d) so that they are differentiable in ``z`` (and ``T``); all ones
    when ``binary``. Shared by every backend."""
    if binary:
        return torch.ones(idx.shape, dtype=z.dtype, device=z.device)
    members = gather_rows(z, idx)                                   # [..., E, k, d]
    centres = z[..., :idx.shape[-2], :].unsqueeze(-2)               # hyperedge e is centred on node e
    dist2 = (members - centres).pow(2).sum(-1)                      # [..., E, k]
    if isinstance(temperature, Tensor):
        temperature = temperature.to(dist2).unsqueeze(-1)           # [E, 1], dist2's dtype and device
    return torch.softmax(-dist2 / (z.shape[-1] * temperature), dim=-1)


def effective_order(weights: Tensor) -> Tensor:
    """``exp(entropy)`` of each hyperedge's membership weights ``[..., E, k]`` (summing to 1): 1 when
    all weight is on one member, ``k`` when it is spread evenly: ``[..., E]``."""
    p = weights.clamp_min(1e-12)
    return torch.exp(-(weights * p.log()).sum(-1))


def gather_rows(z: Tensor, idx: Tensor) -> Tensor:
    """``z[..., N, d]``, ``idx[..., E, k]`` -> ``z[..., idx, :]`` of shape ``[..., E, k, d]``, by
    flat indexing (its gradient is an O(E k d) scatter, never an ``[..., E, N, d]`` buffer)."""
    if z.dim() == 2:
        return z[idx]
    offsets = z.shape[-2] * torch.arange(z.shape[0], device=z.device).view(-1, 1, 1)
    return z.reshape(-1, z.shape[-1])[idx + offsets]


def hypergraph_operator(incidence: Tensor) -> Tensor:
    """The dense propagation matrix ``P = D_v^-1 H D_e^-1 H^T``: ``[..., N, M] -> [..., N, N]``.
    Empty hyperedges contribute nothing; a node in no hyperedge gets a zero row."""
    deg_e = incidence.sum(-2)                                       # [..., M]
    deg_v = incidence.sum(-1)                                       # [..., N]
    inv_e, inv_v = safe_reciprocal(deg_e), safe_reciprocal(deg_v)
    return (incidence * inv_v.unsqueeze(-1) * inv_e.unsqueeze(-2)) @ incidence.transpose(-1, -2)


def safe_reciprocal(degree: Tensor) -> Tensor:
    """``1 / degree`` where the degree is positive, 0 where it is 0 (empty hyperedges, isolated
    nodes), with a finite gradient everywhere."""
    positive = degree > 0
    return torch.where(positive, 1.0 / torch.where(positive, degree, torch.ones_like(degree)),
                       torch.zeros_like(degree))


def hypergraph_halves(incidence: Tensor) -> tuple[Tensor, Tensor]:
    """The two normalised halves of ``P``: ``gather = D_e^-1 H^T`` (``[..., M, N]``, hyperedge mean
    of its members) and ``spread = D_v^-1 H`` (``[..., N, M]``, node mean of its hyperedges)."""
    inv_e = safe_reciprocal(incidence.sum(-2))                      # [..., M]
    inv_v = safe_reciprocal(incidence.sum(-1))                      # [..., N]
    return (incidence * inv_e.unsqueeze(-2)).transpose(-1, -2), incidence * inv_v.unsqueeze(-1)


def hypergraph_propagate(x: Tensor, incidence: Tensor,
                         halves: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``D_v^-1 H D_e^-1 H^T x``: node -> hyperedge weighted mean, then hyperedge -> node mean,
    evaluated in that order (O(N M F), never the ``N x N`` operator).

    Args:
        x: ``[B, C, N, T]``; incidence: ``[N, M]`` shared, or ``[B, N, M]`` per sample.
        halves: :func:`hypergraph_halves` of ``incidence``, when the caller reuses them.
    Returns:
        ``[B, C, N, T]``. Empty hyperedges and nodes in no hyperedge contribute / receive 0.
    """
    gather, spread = hypergraph_halves(incidence) if halves is None else halves
    return apply_operator(apply_operator(x, gather), spread)


def apply_operator(x: Tensor, operator: Tensor) -> Tensor:
    """``(P x)[b, c, v, t] = sum_w P[(b,) v, w] x[b, c, w, t]`` for ``P [V, W]`` or ``[B, V, W]``:
    ``x [B, C, W, T] -> [B, C, V, T]``."""
    if operator.dim() == 3:
        return torch.einsum("bvw,bcwt->bcvt", operator, x)
    return torch.einsum("vw,bcwt->bcvt", operator, x)


def hypergraph_mixprop(x: Tensor, incidence: Tensor, depth: int, beta: float) -> Tensor:
    """MixProp over the hypergraph, ``P = D_v^-1 H D_e^-1 H^T``: ``x [B, C, N, T]`` with
    ``incidence [N, M]`` or ``[B, N, M]`` -> ``[B, C (depth + 1), N, T]`` (see :func:`mixprop`).

    Dense, in the cheaper order: the ``N x N`` operator formed once (O(N^3)) when the columns
    propagated per incidence (``C T``, ``depth`` times) outnumber the nodes, else the two halves
    per step (O(N^2 C T)): the model's wide batches at small N, vs the benchmarks' narrow ones at
    large N."""
    n = x.shape[2]
    columns = x.numel() // max(n, 1) // (x.shape[0] if incidence.dim() == 3 else 1)
    if n < depth * columns:
        operator = hypergraph_operator(incidence)
        return mixprop(x, lambda h: apply_operator(h, operator), depth, beta)
    halves = hypergraph_halves(incidence)                           # once per call, not per step
    return mixprop(x, lambda h: hypergraph_propagate(h, incidence, halves), depth, beta)


def projected_hypergraph_mixprop(x: Tensor, incidence: Tensor, depth: int, beta: float, weight: Tensor,
                                 bias: Tensor | None = None) -> Tensor:
    """:func:`hypergraph_mixprop` then the 1x1 projection ``weight [C_out, C (depth + 1)]`` (and
    ``bias [C_out]``): ``x [B, C, N, T] -> [B, C_out, N, T]``."""
    return projection(hypergraph_mixprop(x, incidence, depth, beta), weight, bias)
