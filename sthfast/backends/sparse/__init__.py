"""The ``sparse`` backend: O(N k) structures and gathers, no ``N x N`` tensor anywhere.

:func:`backend_ops` assembles the model's ops from two interchangeable pieces, a top-k search and
either a sparse-times-dense kernel pair or a fused MixProp, so that the ``cpp``, ``triton`` and
``faiss`` backends reuse every structure builder and propagation here and swap only those kernels.
The ``sparse`` pieces are torch's own: the tiled search of :mod:`.topk_neighbors`, CSR ``torch.sparse.mm`` and
``torch.sparse.sampled_addmm`` (MKL / cuSPARSE, multi-threaded), so ``sparse`` runs on any device.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
from torch import Tensor

from ... import reference
from .. import Implementation
from . import mixprop, structure, topk_neighbors
from .custom_ops import define_spmm, define_topk
from .structure import SparseRows

__all__ = ["IMPLEMENTATIONS", "OPS", "SparseRows", "backend_ops", "spmm", "topk"]


def _csr(row_ptr: Tensor, col: Tensor, val: Tensor, num_cols: int) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we test what we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(row_ptr, col, val, (row_ptr.shape[0] - 1, num_cols),
                                       check_invariants=False)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """torch's CPU CSR kernels have no float16 / bfloat16: those are computed in float32."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _rows(row_ptr: Tensor, col: Tensor, val: Tensor, x: Tensor) -> Tensor:
    if x.shape[1] == 0 or col.numel() == 0:
        return x.new_zeros(row_ptr.shape[0] - 1, x.shape[1])
    dtype = _compute_dtype(x)
    return (_csr(row_ptr, col, val.to(dtype), x.shape[0]) @ x.to(dtype)).to(x.dtype)


def _sampled(row_ptr: Tensor, row: Tensor, col: Tensor, a: Tensor, b: Tensor) -> Tensor:
    if a.shape[1] == 0 or col.numel() == 0:
        return a.new_zeros(col.shape[0])
    dtype = _compute_dtype(a)
    pattern = _csr(row_ptr, col, a.new_zeros(col.shape[0], dtype=dtype), b.shape[0])
    return torch.sparse.sampled_addmm(pattern, a.to(dtype), b.to(dtype).T, beta=0.0).values().to(a.dtype)


spmm = define_spmm("sparse", _rows, _sampled)


def backend_ops(topk: Callable[..., Tensor], spmm: Callable[..., Tensor] | None = None,
                fused: Callable[..., Tensor] | None = None,
                projector: mixprop.Projector | None = None) -> dict[str, Callable]:
    """The structure / propagation ops of :mod:`sthfast.ops` built on ``topk`` (``topk(query, key,
    k, metric, self_first, approximate) -> [..., N, k]``); the MixProps run step by step through
    ``spmm`` or with a ``fused`` MixProp (:func:`sthfast.backends.fused_mixprop.call`'s signature
    less its first argument), one of the two (see :mod:`.mixprop`); the projected MixProps with
    ``projector`` (a fused kernel), else that MixProp followed by the projection."""
    if (spmm is None) == (fused is None):
        raise ValueError("backend_ops takes a sparse product or a fused MixProp, one of the two")
    propagator = (mixprop.fused(fused) if fused is not None
                  else functools.partial(mixprop.by_steps, spmm))
    projector = projector or mixprop.composed(propagator)

    def knn_hypergraph(z: Tensor, k: int, binary: bool, temperature: float | Tensor,
                       neighbors: Tensor | None) -> SparseRows:
        idx = topk(z, z, k, "l2", True) if neighbors is None else neighbors
        return structure.merged_knn_hypergraph(z, idx, binary, temperature)

    def adaptive_graph(m1: Tensor, m2: Tensor, k: int, alpha: float) -> SparseRows:
        """``A + I``: each row's self loop (weight 1) then its ``k`` best other entries.

        The reference may select ``(i, i)`` itself, but its score is 0, so it and every entry
        ranked after it have weight ``ReLU(tanh(<= 0)) = 0``: leaving the diagonal out changes
        neither ``A`` nor its gradient, and keeps the pattern free of duplicate entries."""
        n = m1.shape[0]
        idx = topk(torch.cat([m1, -m2], -1), torch.cat([m2, m1], -1), min(k + 1, n), "ip", True)
        idx = idx[:, 1:k + 1]                                        # [N, min(k, N - 1)], self dropped
        values = reference.adjacency_values(m1, m2, idx, alpha)
        nodes = torch.arange(n, device=idx.device).unsqueeze(1)
        return structure.from_ell(torch.cat([nodes, idx], 1),
                                  torch.cat([values.new_ones(n, 1), values], 1), n)

    def hypergraph_mixprop(x: Tensor, incidence_t: SparseRows, depth: int, beta: float) -> Tensor:
        return mixprop.hypergraph_mixprop(propagator, x, incidence_t, depth, beta)

    def graph_mixprop(x: Tensor, adjacency: SparseRows, depth: int, beta: float,
                      transpose: bool) -> Tensor:
        return mixprop.graph_mixprop(propagator, x, adjacency, depth, beta, transpose)

    def projected_hypergraph_mixprop(x: Tensor, incidence_t: SparseRows, depth: int, beta: float, weight: Tensor,
                                     bias: Tensor | None) -> Tensor:
        return mixprop.projected_hypergraph_mixprop(projector, x, incidence_t, depth, beta, weight, bias)

    def projected_graph_mixprop(x: Tensor, adjacency: SparseRows, depth: int, beta: float, weight: Tensor,
                                bias: Tensor | None, transpose: bool) -> Tensor:
        return mixprop.projected_graph_mixprop(projector, x, adjacency, depth, beta, weight, bias, transpose)

    return dict(topk_neighbors=topk, knn_hypergraph=knn_hypergraph, adaptive_graph=adaptive_graph,
                static_graph=structure.with_self_loops, hypergraph_mixprop=hypergraph_mixprop,
                graph_mixprop=graph_mixprop, projected_hypergraph_mixprop=projected_hypergraph_mixprop,
                projected_graph_mixprop=projected_graph_mixprop)


topk = define_topk("sparse", topk_neighbors.topk_neighbors)
OPS = backend_ops(topk, spmm=spmm)


def on_cpu_or_cuda(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


# torch's sparse CSR kernels: CPU (MKL) and CUDA (cuSPARSE)
IMPLEMENTATIONS = tuple(Implementation(op, "sparse", fn, auto_on=on_cpu_or_cuda) for op, fn in OPS.items())
