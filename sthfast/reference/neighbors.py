"""Exact top-k neighbour search by brute force (the truth for the tiled / FAISS paths)."""

from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("l2", "ip")


def topk_neighbors(query: Tensor, key: Tensor, k: int, metric: str = "l2",
                   self_first: bool = False) -> Tensor:
    """Indices of the ``k`` best keys for every query.

    Args:
        query: ``[..., N, d]``; key: ``[..., M, d]`` with the same leading dimensions.
        k: neighbours per query, ``1 <= k <= M``.
        metric: ``"l2"`` (smallest Euclidean distance first) or ``"ip"`` (largest inner
            product first).
        self_first: query i is key i (``N == M``, one point set): every query lists itself first,
            even when other keys tie with it (duplicate points), then its ``k - 1`` best others.

    Returns:
        ``[..., N, k]`` int64, best first. Equal scores go to the smaller key index
        (a stable sort), so the result is deterministic with duplicate points.

    The selection carries no gradient: callers recompute the values of the selected pairs from
    gathered embeddings. Memory is O(N M d): this is the reference, not the scalable path.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not one of {list(METRICS)}")
    score = pair_scores(query.unsqueeze(-2), key.unsqueeze(-3), metric).detach()  # [..., N, M]
    if self_first:
        score.diagonal(dim1=-2, dim2=-1).fill_(-torch.inf)
    order = torch.sort(score, dim=-1, stable=True).indices
    return order[..., :k]


def pair_scores(query: Tensor, key: Tensor, metric: str) -> Tensor:
    """Score of broadcastable point tensors ``[..., d]``, smaller is better: the squared distance
    (``"l2"``) or the negated inner product (``"ip"``). Computed elementwise per pair, never by a
    GEMM, so identical points score identically and ties are real ties."""
    if metric == "l2":
        return (query - key).pow(2).sum(-1)
    return -(query * key).sum(-1)
