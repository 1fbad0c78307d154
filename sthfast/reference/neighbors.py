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
    gathered embeddings. Memory is O(N M): this is the reference, not the scalable path.
    """
    if metric == "l2":
        score = torch.cdist(query, key, compute_mode="donot_use_mm_for_euclid_dist")
        descending = False
    elif metric == "ip":
        score = query @ key.transpose(-1, -2)
        descending = True
    else:
        raise ValueError(f"metric={metric!r} is not one of {list(METRICS)}")
    if self_first:
        score = score.detach().clone()
        score.diagonal(dim1=-2, dim2=-1).fill_(-torch.inf if not descending else torch.inf)
    order = torch.sort(score.detach(), dim=-1, descending=descending, stable=True).indices
    return order[..., :k]
