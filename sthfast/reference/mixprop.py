"""MixProp (MTGNN): propagation steps that keep a fraction of the input, all steps concatenated."""

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
