"""Seeded inputs for the ops, shared by the tests (``tests/ops/``) and the benchmarks, so that both
exercise the same kinds of cases: every builder takes a ``seed`` and makes its numbers on the CPU
in float64 before casting, so a case is the same on every machine and in every dtype."""

from __future__ import annotations

import torch
from torch import Tensor


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def points(n: int, d: int, dtype: torch.dtype = torch.float64, seed: int = 0, duplicates: int = 0,
           batch: int | None = None) -> Tensor:
    """Standard-normal points ``[n, d]`` (``[batch, n, d]`` with ``batch``); the last
    ``duplicates`` of them copy the first ones in reversed order, so that searches meet exact ties
    between far-apart indices."""
    shape = (n, d) if batch is None else (batch, n, d)
    z = torch.randn(shape, generator=_generator(seed), dtype=torch.float64)
    if duplicates:
        z[..., n - duplicates:, :] = z[..., :duplicates, :].flip(-2)
    return z.to(dtype)


def embeddings(n: int, d: int, seed: int = 0, scale: float = 1.0, clusters: int | None = None,
               spread: float = 0.3) -> Tensor:
    """Points ``[n, d]`` (float32) squashed by ``tanh`` as the model's node embeddings are:
    ``tanh(scale * normal)``, or with ``clusters`` around that many normal centres at
    ``spread`` (the kind of data where an approximate index is fast and accurate)."""
    g = _generator(seed)
    if clusters is None:
        return torch.tanh(scale * torch.randn(n, d, generator=g))
    centres = torch.randn(clusters, d, generator=g)
    return torch.tanh(centres[torch.randint(0, clusters, (n,), generator=g)] + spread * torch.randn(n, d, generator=g))


def features(batch: int, channels: int, n: int, steps: int, dtype: torch.dtype = torch.float64, seed: int = 0,
             grad: bool = False) -> Tensor:
    """Standard-normal MixProp inputs ``x[batch, channels, n, steps]``, a leaf that requires a
    gradient with ``grad``."""
    x = torch.randn(batch, channels, n, steps, generator=_generator(seed), dtype=torch.float64)
    return x.to(dtype).requires_grad_(grad)


def dense_incidence(hypergraph) -> Tensor:
    """The dense incidence ``H [N, E]`` (``[B, N, E]`` for one hypergraph per sample) of a fast
    backend's ``H^T`` structure (:class:`sthfast.backends.sparse.SparseRows`), to compare with
    the reference's."""
    h_t = hypergraph.to_dense()
    if hypergraph.blocks is None:
        return h_t.T
    b, n = hypergraph.blocks, h_t.shape[0] // hypergraph.blocks
    return torch.stack([h_t[i * n:(i + 1) * n, i * n:(i + 1) * n].T for i in range(b)])


def weighted_sum(y: Tensor) -> Tensor:
    """``sum(y * w)`` with ``w`` a fixed ramp from -1 to 1: a loss whose gradient differs at every
    entry, so that a backward that mixes entries up cannot pass."""
    return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)).sum()
