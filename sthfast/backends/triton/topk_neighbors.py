"""Triton tiled exact top-k neighbour search: each program owns BLOCK_Q queries, streams the keys in
tiles of BLOCK_M, and keeps a running top-K (value, index) list in registers; no ``N x M`` buffer.

Scores are computed elementwise per pair (squared distance or negated inner product, summed over
the feature axis in chunks of BLOCK_D, in float32 or float64), never with a matrix-multiply unit, so
identical points score identically; NaN scores rank last. The running list is merged with a tile by
K passes of ``min`` + ``where`` (``tl.topk`` does not define the order of ties): on equal scores the
smaller index wins, and the running list (earlier, smaller indices) beats the tile. K is a loop
bound, not a constexpr: unrolled, K = 40 took ptxas minutes and spilled.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .launch import MAX_REGISTERS, accumulator, on_device

BIG_INDEX = tl.constexpr(2**31 - 1)  # a constexpr: a plain global compiles only in the interpreter


@triton.jit
def _topk_kernel(q_ptr, k_ptr, out_ptr, N, M, D, K, KP: tl.constexpr,
                 BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                 L2: tl.constexpr, self_first, ACC: tl.constexpr):
    batch = tl.program_id(1).to(tl.int64)
    qs = (tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    q_mask = qs < N
    q_base = q_ptr + batch * N * D
    k_base = k_ptr + batch * M * D
    lane = tl.arange(0, KP)
    inf = float("inf")
    best_v = tl.full([BLOCK_Q, KP], inf, dtype=ACC)
    best_i = tl.full([BLOCK_Q, KP], BIG_INDEX, dtype=tl.int32)
    for m0 in range(0, M, BLOCK_M):
        ms = m0 + tl.arange(0, BLOCK_M)
        m_mask = ms < M
        ms64 = ms.to(tl.int64)
        score = tl.zeros([BLOCK_Q, BLOCK_M], dtype=ACC)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_mask = ds < D
            q = tl.load(q_base + qs[:, None] * D + ds[None, :], mask=q_mask[:, None] & d_mask[None, :],
                        other=0.0).to(ACC)
            kt = tl.load(k_base + ms64[:, None] * D + ds[None, :], mask=m_mask[:, None] & d_mask[None, :],
                         other=0.0).to(ACC)
            if L2:
                diff = q[:, None, :] - kt[None, :, :]
                score += tl.sum(diff * diff, axis=2)
            else:
                score -= tl.sum(q[:, None, :] * kt[None, :, :], axis=2)
        score = tl.where(m_mask[None, :] & (score == score), score, inf)  # NaN ranks last
        score = tl.where((self_first != 0) & (qs[:, None] == ms[None, :]), -inf, score)
        new_v = tl.full([BLOCK_Q, KP], inf, dtype=ACC)
        new_i = tl.full([BLOCK_Q, KP], BIG_INDEX, dtype=tl.int32)
        for j in range(K):                # a loop, not unrolled: K up to N compiles in seconds
            tile_v = tl.min(score, axis=1)
            tile_i = tl.min(tl.where(score == tile_v[:, None], ms[None, :], BIG_INDEX), axis=1)
            run_v = tl.min(best_v, axis=1)
            run_i = tl.min(tl.where(best_v == run_v[:, None], best_i, BIG_INDEX), axis=1)
            from_run = run_v <= tile_v
            v = tl.where(from_run, run_v, tile_v)
            i = tl.where(from_run, run_i, tile_i)
            new_v = tl.where(lane[None, :] == j, v[:, None], new_v)
            new_i = tl.where(lane[None, :] == j, i[:, None], new_i)
            best_v = tl.where(from_run[:, None] & (best_i == run_i[:, None]), inf, best_v)
            score = tl.where((~from_run)[:, None] & (ms[None, :] == tile_i[:, None]), inf, score)
        best_v = new_v
        best_i = new_i
    out = out_ptr + batch * N * K + qs[:, None] * K + lane[None, :]
    tl.store(out, best_i.to(tl.int64), mask=q_mask[:, None] & (lane[None, :] < K))


def topk_neighbors(query: Tensor, key: Tensor, k: int, metric: str = "l2",
                   self_first: bool = False, approximate: bool = False) -> Tensor:
    """Same contract as :func:`sthfast.reference.topk_neighbors`: ``[..., N, k]`` int64. Scores
    accumulate in float32 (float64 for float64 points). The search is exact (``approximate``
    permits an approximation, which this kernel never makes)."""
    batched = query.dim() == 3
    q = (query if batched else query.unsqueeze(0)).detach().contiguous()
    kk = (key if batched else key.unsqueeze(0)).detach().contiguous().to(q.dtype)
    b, n, d = q.shape
    out = torch.empty(b, n, k, dtype=torch.int64, device=q.device)
    if b and n:
        block_q, block_m = 16, 16
        with on_device(q):
            _topk_kernel[(triton.cdiv(n, block_q), b)](
                q, kk, out, n, kk.shape[1], d, K=k, KP=triton.next_power_of_2(k), BLOCK_Q=block_q,
                BLOCK_M=block_m, BLOCK_D=16, L2=metric == "l2",
                self_first=int(self_first), ACC=accumulator(q.dtype), maxnreg=MAX_REGISTERS)
    return out if batched else out[0]
