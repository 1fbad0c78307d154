"""Exact top-k neighbour search by brute force (the truth for the tiled / FAISS paths)."""

from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("l2", "ip")
CHUNK_ELEMENTS = 1 << 24  # pair-score temporaries of at most 64 MiB in float32


def topk_neighbors(query: Tensor, key: Tensor, k: int, metric: str = "l2",
                   self_first: bool = False, approximate: bool = False) -> Tensor:
    """Indices of the ``k`` best keys for every query.

    Args:
        query: ``[..., N, d]``; key: ``[..., M, d]`` with the same leading dimensions.
        k: neighbours per query, ``1 <= k <= M``.
        metric: ``"l2"`` (smallest Euclidean distance first) or ``"ip"`` (largest inner
            product first).
        self_first: query i is key i (``N == M``, one point set): every query lists itself first,
            even when other keys tie with it (duplicate points), then its ``k - 1`` best others.
        approximate: accepted as :func:`sthfast.ops.topk_neighbors` takes it; the reference is
            always exact.

    Returns:
        ``[..., N, k]`` int64, best first. Equal scores go to the smaller key index
        (a stable sort), so the result is deterministic with duplicate points.

    The selection carries no gradient: callers recompute the values of the selected pairs from
    gathered embeddings. Memory is O(N M): this is the reference, not the scalable path.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not one of {list(METRICS)}")
    query, key = scoring_precision(query.detach()), scoring_precision(key.detach())
    rows = max(1, CHUNK_ELEMENTS // max(1, key.shape[-2] * key.shape[-1]))  # [rows, M, d] at a time
    score = torch.cat([pair_scores(q.unsqueeze(-2), key.unsqueeze(-3), metric)
                       for q in query.split(rows, dim=-2)], dim=-2) if query.shape[-2] else \
        query.new_zeros(*query.shape[:-1], key.shape[-2])          # [..., N, M]
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


def scoring_precision(points: Tensor) -> Tensor:
    """Half-precision points are scored in float32 (every backend does the same, so that their
    selections agree); other dtypes as they are."""
    return points.float() if points.dtype in (torch.float16, torch.bfloat16) else points
