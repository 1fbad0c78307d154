"""MixProp (MTGNN): propagation steps that keep a fraction of the input, all steps concatenated;
and the 1x1 projection that follows it in the model."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def mixprop(x: Tensor, propagate: Callable[[Tensor], Tensor], depth: int, beta: float) -> Tensor:
    """``h_0 = x; h_{j+1} = beta x + (1 - beta) P h_j`` for ``j < depth``.

    Args:
        x: ``[B, C, N, T]``.
        propagate: applies the propagation matrix ``P`` over the node axis.
    Returns:
        ``[B, C * (depth + 1), N, T]``: ``h_0 .. h_depth`` concatenated on the channel axis.
    """
    h, out = x, [x]
    for _ in range(depth):
        h = beta * x + (1.0 - beta) * propagate(h)
        out.append(h)
    return torch.cat(out, dim=1)


def projection(h: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The 1x1 projection over channels: ``h [B, K, N, T]``, ``weight [C_out, K]``, ``bias [C_out]``
    -> ``[B, C_out, N, T]``."""
    out = torch.einsum("ok,bknt->bont", weight.to(h.dtype), h)
    return out if bias is None else out + bias.view(1, -1, 1, 1).to(out.dtype)
