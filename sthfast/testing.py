"""Seeded inputs and checks for the ops, shared by the tests (``tests/ops/``) and the benchmarks, so
that both exercise the same kinds of cases. Every builder takes a ``seed`` and draws on the CPU
(:func:`points`, :func:`series` and :func:`features` in float64 before casting, so that a case is
the same in every dtype); move the result to the device under test."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from . import ops


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


def series(batch: int, steps: int, n: int, num_features: int, dtype: torch.dtype = torch.float64, seed: int = 0,
           grad: bool = False) -> Tensor:
    """Standard-normal model inputs ``x[batch, steps, n, num_features]`` (``pool_patch``'s)."""
    x = torch.randn(batch, steps, n, num_features, generator=_generator(seed), dtype=torch.float64)
    return x.to(dtype).requires_grad_(grad)


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
    """Standard-normal MixProp inputs ``x[batch, channels, n, steps]`` (a leaf that requires a
    gradient with ``grad``)."""
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


# hypergraph cases of the op tests: name -> (n, k, batch, binary, duplicates)
HYPERGRAPH_CASES = {
    "shared": (19, 3, None, False, 0), "dynamic": (19, 3, 2, False, 0), "binary": (19, 3, None, True, 0),
    "duplicates": (19, 3, None, False, 9), "k_equals_n": (7, 7, None, False, 0), "one_node": (1, 1, None, False, 0),
}


def mixprop_outputs_and_grads(backend: str, z: Tensor, x: Tensor, k: int = 3, depth: int = 2, beta: float = 0.05,
                              binary: bool = False, device: str = "cpu",
                              structure_backend: str | None = None) -> list[Tensor]:
    """``[y, dL/dx, dL/dz]`` (on the CPU; without ``dL/dz`` for a binary hypergraph) of
    ``backend``'s hypergraph MixProp over the k-NN hypergraph of ``z`` (built by
    ``structure_backend``, default ``backend``), on ``device``, for ``L = weighted_sum(y)``."""
    z = z.detach().to(device).requires_grad_(not binary)
    x = x.detach().to(device).requires_grad_()
    h = ops.knn_hypergraph(z, k, binary=binary, temperature=0.7, backend=structure_backend or backend)
    y = ops.hypergraph_mixprop(x, h, depth, beta, backend=backend)
    grads = torch.autograd.grad(weighted_sum(y), (x,) if binary else (x, z), allow_unused=True,
                                materialize_grads=True)                    # depth 0: z is unused
    return [t.detach().cpu() for t in (y, *grads)]


def recall(found: Tensor, truth: Tensor, leave_out_first: bool = True) -> float:
    """Share of the true neighbours ``truth [N, k]`` that ``found [N, k]`` holds, order ignored;
    ``leave_out_first`` leaves out the first column (each query itself in a self-first search,
    always right, which inflates the figure)."""
    if leave_out_first:
        found, truth = found[:, 1:], truth[:, 1:]
    return (found.unsqueeze(2) == truth.unsqueeze(1)).any(1).float().mean().item()


def block_count(module) -> int:
    """Transformer blocks actually built in a (LoRA-wrapped) backbone: BERT ``layer.i``, GPT-2
    ``h.i``, LLaMA ``layers.i``."""
    pattern = re.compile(r"(?:^|\.)(?:layer|h|layers)\.(\d+)$")
    return len({m.group(1) for name, _ in module.named_modules() if (m := pattern.search(name))})
