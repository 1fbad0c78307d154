"""Exact top-k neighbour search in tiles: O(N k) memory, no ``N x M`` buffer.

Two passes. A coarse pass scores query chunks against key tiles with one GEMM per tile
(``|k|^2 - 2 q.k`` for L2, ``-q.k`` for inner product) and keeps a running top-``c`` candidates,
``c = k + MARGIN``. An exact pass recomputes the candidates' scores from gathered vectors with the
reference's elementwise formula (so identical points score identically, and every score equals the
reference's bit for bit) and orders them by (score, index): ties go to the
smaller index, as in the reference. A query whose candidate list could be incomplete (its ``c``-th
and ``k``-th coarse scores closer than the GEMM's rounding error, e.g. many duplicate points) is
recomputed exactly against every key, in chunks; this check costs one host synchronisation per
point set (per sample for a batch). Half-precision points are scored in float32.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ...reference.neighbors import pair_scores, scoring_precision

MARGIN = 4
TILE_ELEMENTS = 1 << 22  # scores per coarse tile (16 MiB in float32)


def topk_neighbors(query: Tensor, key: Tensor, k: int, metric: str = "l2",
                   self_first: bool = False, approximate: bool = False) -> Tensor:
    """Same contract as :func:`sthfast.reference.topk_neighbors`: ``[..., N, k]`` int64. The search
    is exact (``approximate`` permits an approximation, which this search never makes)."""
    return per_point_set(lambda q, kk: refine(q, kk, k, metric, self_first, _coarse_candidates),
                         query, key, k)


def per_point_set(search, query: Tensor, key: Tensor, k: int) -> Tensor:
    """Apply ``search(query [N, d], key [M, d]) -> [N, k]`` to one point set or to each of a batch."""
    if query.dim() == 3:
        return torch.stack([search(q, kk) for q, kk in zip(query, key)]) \
            if query.shape[0] else query.new_zeros(0, query.shape[1], k, dtype=torch.long)
    return search(query, key)


CoarseSearch = Callable[[Tensor, Tensor, int, str, bool], "tuple[Tensor, Tensor, bool]"]


@torch.no_grad()
def refine(query: Tensor, key: Tensor, k: int, metric: str, self_first: bool, coarse: CoarseSearch,
           coarse_eps: float | None = None) -> Tensor:
    """The exact top-``k`` from a coarse candidate search.

    ``coarse(query, key, c, metric, self_first)`` returns ``c = k + MARGIN`` candidates per query,
    their coarse scores (smaller is better; ``-inf`` for the query itself when ``self_first``; an
    index of -1 for a missing candidate) and whether the search was exhaustive. The candidates are
    re-scored exactly and ordered. A query with a missing candidate, or, after an exhaustive
    search, whose list could be incomplete (coarse gap under the rounding bound of a GEMM with unit
    roundoff ``coarse_eps``, default the points' own), is searched exactly against every key.
    After an approximate search the result is the exact order of the candidates found."""
    query, key = scoring_precision(query), scoring_precision(key)
    m = key.shape[0]
    c = min(m, k + MARGIN)
    cand, coarse_scores, exhaustive = coarse(query, key, c, metric, self_first)   # [N, c] each
    missing = (cand < 0).any(1)
    cand = torch.where(cand < 0, torch.zeros_like(cand), cand)
    cand, _ = _order_exactly(query, key, cand, metric, self_first)
    unsure = missing
    if exhaustive and c < m:
        coarse_scores = coarse_scores.sort(dim=1).values
        scale = (query.norm(dim=1) + key.norm(dim=1).max()).pow(2)
        eps = torch.finfo(query.dtype).eps if coarse_eps is None else coarse_eps
        tol = 4 * query.shape[1] * eps * scale
        unsure = unsure | ((coarse_scores[:, c - 1] - coarse_scores[:, k - 1]) <= tol)
    rows = unsure.nonzero().flatten()
    if len(rows):
        cand[rows] = _exact_rows(query, key, rows, c, metric, self_first)
    return cand[:, :k]


def _coarse_candidates(query: Tensor, key: Tensor, c: int, metric: str,
                       self_first: bool) -> tuple[Tensor, Tensor, bool]:
    """Running top-``c`` over key tiles (smaller is better): indices and coarse scores ``[N, c]``
    (an exhaustive search)."""
    n, m = query.shape[0], key.shape[0]
    tile = min(m, max(c, 4096))
    rows = max(1, TILE_ELEMENTS // tile)
    key_norm = key.pow(2).sum(1) if metric == "l2" else None
    best_i, best_v = [], []
    for q0 in range(0, n, rows):
        q = query[q0:q0 + rows]
        run_v = run_i = None
        for k0 in range(0, m, tile):
            kt = key[k0:k0 + tile]
            if metric == "l2":
                score = torch.addmm(key_norm[k0:k0 + tile], q, kt.T, alpha=-2)
            else:
                score = -(q @ kt.T)
            if self_first:
                _mask_self(score, q0, k0)
            v, i = score.topk(min(c, kt.shape[0]), dim=1, largest=False, sorted=False)
            i = i + k0
            if run_v is not None:
                v, i = torch.cat([run_v, v], 1), torch.cat([run_i, i], 1)
                v, pick = v.topk(c, dim=1, largest=False, sorted=False)
                i = i.gather(1, pick)
            run_v, run_i = v, i
        best_v.append(run_v)
        best_i.append(run_i)
    return torch.cat(best_i), torch.cat(best_v), True


def _mask_self(score: Tensor, q0: int, k0: int) -> None:
    """Set the score of each query against itself to -inf (in place) for a tile at ``(q0, k0)``:
    query ``q0 + i`` is key ``k0 + j`` on the tile's diagonal ``j - i = q0 - k0``."""
    score.diagonal(offset=q0 - k0).fill_(-torch.inf)


def _order_exactly(query: Tensor, key: Tensor, cand: Tensor, metric: str, self_first: bool,
                   rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sort each row's candidates by (exact score, index); ``rows``: the queries' indices."""
    cand = cand.sort(dim=1).values                                   # index order first ...
    score = pair_scores(query.unsqueeze(1), key[cand], metric)       # [R, c]
    if self_first:
        rows = torch.arange(len(cand), device=cand.device) if rows is None else rows
        score = score.masked_fill(cand == rows.unsqueeze(1), -torch.inf)
    order = torch.sort(score, dim=1, stable=True).indices            # ... so ties keep it
    return cand.gather(1, order), score.gather(1, order)


def _exact_rows(query: Tensor, key: Tensor, rows: Tensor, c: int, metric: str,
                self_first: bool) -> Tensor:
    """The exact top-``c`` of the queries ``rows`` against every key, in chunks: ``[len(rows), c]``."""
    m, d = key.shape
    chunk = max(1, TILE_ELEMENTS // (m * d))
    every = torch.arange(m, device=key.device)
    out = []
    for r0 in range(0, len(rows), chunk):
        r = rows[r0:r0 + chunk]
        cand, _ = _order_exactly(query[r], key, every.expand(len(r), m), metric, self_first, r)
        out.append(cand[:, :c])
    return torch.cat(out)
