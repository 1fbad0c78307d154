"""Pool a spatio-temporal batch over its nodes and cut the pooled series into patches."""

from __future__ import annotations

import torch
from torch import Tensor


def num_patches(steps: int, patch_len: int, stride: int) -> int:
    """``L = (T + S - P) // S + 1``: patches of length P, stride S over T steps padded by S."""
    return (steps + stride - patch_len) // stride + 1


def pool_patch(x: Tensor, patch_len: int, stride: int, normalize: bool = True,
               eps: float = 1e-5, node_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over nodes, optional instance normalisation, replicate-padded patching.

    Args:
        x: ``[B, T, N, F]`` input window.
        patch_len, stride: patch length P and stride S; the pooled series is padded at its end
            with S copies of its last value, giving ``L = (T + S - P) // S + 1`` patches.
        normalize: z-score each pooled series over time (RevIN-style) before patching.
        eps: added to the variance.
        node_mask: ``[N]`` or ``[B, N]`` (bool or 0/1): average only the present sensors; a
            sample with none pools to 0.

    Returns:
        ``patches [B, F, L, P]``, ``mean [B, F]``, ``std [B, F]`` (0 and 1 when not normalising),
        so that ``pooled = patches_series * std + mean``.
    """
    if node_mask is None:
        pooled = x.mean(dim=2).transpose(1, 2)                  # [B, F, T]
    else:
        w = node_mask.detach().to(torch.promote_types(x.dtype, torch.float32))  # a half sum of a
        w = w.expand(x.shape[0], x.shape[2])                      # big mask would overflow
        total = w.sum(1, keepdim=True)                            # [B, 1]
        coef = torch.where(total > 0, w / torch.where(total > 0, total, torch.ones_like(total)), 0.0)
        pooled = torch.einsum("btnf,bn->bft", x, coef.to(x.dtype))
    if normalize:
        mean = pooled.mean(dim=-1)                               # [B, F]
        std = (pooled.var(dim=-1, unbiased=False) + eps).sqrt()  # [B, F]
        pooled = (pooled - mean.unsqueeze(-1)) / std.unsqueeze(-1)
    else:
        mean = pooled.new_zeros(pooled.shape[:2])
        std = pooled.new_ones(pooled.shape[:2])
    padded = torch.cat([pooled, pooled[..., -1:].expand(*pooled.shape[:2], stride)], dim=-1)
    return padded.unfold(-1, patch_len, stride), mean, std      # [B, F, L, P]
