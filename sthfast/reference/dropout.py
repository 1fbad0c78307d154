"""Dropout as torch does it: a Bernoulli mask drawn from torch's generator (the reference of the
fast paths, whose masks are other draws of the same distribution)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero each entry of ``x`` with probability ``p`` and scale the rest by ``1 / (1 - p)`` when
    ``training``; ``x`` itself otherwise."""
    return F.dropout(x, p, training)
