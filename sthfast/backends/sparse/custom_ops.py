"""The backends' kernels as ``torch.library`` custom ops, so that the model composes with
``torch.compile`` (each op is opaque to the compiler, with a fake implementation for its shapes).

:func:`define_topk` wraps a top-k neighbour search (selection only: no gradient).

:func:`define_spmm` wraps the one sparse primitive every propagation is built from,
``y = S x`` or ``y = S^T x``. It registers it as a ``torch.library`` custom op (with ``register_fake`` and an
autograd rule, so that it composes with ``torch.compile``) around two kernels a backend provides:

* ``rows(row_ptr, col, val, x) -> y``: ``y[r] = sum_p val[p] x[col[p]]`` over row r's CSR segment;
* ``sampled(row_ptr, row, col, a, b) -> [nnz]``: ``<a[row[p]], b[col[p]]>`` for every stored entry.

The backward of ``S x`` is ``S^T g`` (the same op, transposed) for ``x`` and
``sampled(g, x)`` for the values; of ``S^T x``, ``S g`` and ``sampled(x, g)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .structure import SparseRows

TopkKernel = Callable[[Tensor, Tensor, int, str, bool, bool], Tensor]
RowsKernel = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
SampledKernel = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def define_topk(backend: str, topk: TopkKernel) -> TopkKernel:
    """Register ``sthfast::topk_<backend>`` and return
    ``topk(query, key, k, metric, self_first, approximate)``: ``[..., N, d], [..., M, d] ->
    [..., N, k]`` int64 (see :func:`sthfast.reference.topk_neighbors`); ``approximate`` permits,
    never requires, an approximate search."""

    @torch.library.custom_op(f"sthfast::topk_{backend}", mutates_args=())
    def op(query: Tensor, key: Tensor, k: int, metric: str, self_first: bool,
           approximate: bool) -> Tensor:
        return topk(query, key, k, metric, self_first, approximate).contiguous()  # as the fake

    @op.register_fake
    def _(query, key, k, metric, self_first, approximate):
        return query.new_empty(*query.shape[:-1], k, dtype=torch.int64)

    def run(query: Tensor, key: Tensor, k: int, metric: str, self_first: bool = False,
            approximate: bool = False) -> Tensor:
        return op(query.detach(), key.detach(), k, metric, self_first, approximate)

    run.op = op
    return run


def define_spmm(backend: str, rows: RowsKernel, sampled: SampledKernel) -> Callable[..., Tensor]:
    """Register ``sthfast::spmm_<backend>`` (and ``sthfast::sampled_dot_<backend>``, its backward's
    value gradient) and return ``spmm(structure, x, transpose=False)``:
    ``x [C, F] -> [R, F]`` (``[R, F] -> [C, F]`` when ``transpose``)."""

    @torch.library.custom_op(f"sthfast::sampled_dot_{backend}", mutates_args=())
    def sampled_op(row_ptr: Tensor, row: Tensor, col: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return sampled(row_ptr, row, col, a, b)

    @sampled_op.register_fake
    def _(row_ptr, row, col, a, b):
        return a.new_empty(col.shape[0])

    @torch.library.custom_op(f"sthfast::spmm_{backend}", mutates_args=())
    def op(row_ptr: Tensor, col: Tensor, row: Tensor, col_ptr: Tensor, t_col: Tensor,
           from_t: Tensor, val: Tensor, x: Tensor, transpose: bool) -> Tensor:
        if transpose:
            return rows(col_ptr, t_col, val[from_t], x)
        return rows(row_ptr, col, val, x)

    @op.register_fake
    def _(row_ptr, col, row, col_ptr, t_col, from_t, val, x, transpose):
        out_rows = (col_ptr if transpose else row_ptr).shape[0] - 1
        return x.new_empty(out_rows, x.shape[1])

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:8])
        ctx.transpose = inputs[8]

    def backward(ctx, grad):
        row_ptr, col, row, col_ptr, t_col, from_t, val, x = ctx.saved_tensors
        grad = grad.contiguous()
        grad_val = grad_x = None
        if ctx.needs_input_grad[6]:
            a, b = (x, grad) if ctx.transpose else (grad, x)
            grad_val = sampled_op(row_ptr, row, col, a, b)
        if ctx.needs_input_grad[7]:
            grad_x = op(row_ptr, col, row, col_ptr, t_col, from_t, val, grad, not ctx.transpose)
        return None, None, None, None, None, None, grad_val, grad_x, None

    op.register_autograd(backward, setup_context=setup_context)

    def spmm(structure: SparseRows, x: Tensor, transpose: bool = False) -> Tensor:
        s = structure
        return op(s.row_ptr, s.col, s.row, s.col_ptr, s.t_col, s.from_t, s.val, x.contiguous(),
                  transpose)

    spmm.op, spmm.sampled_op = op, sampled_op
    return spmm
