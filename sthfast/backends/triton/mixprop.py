"""Triton kernels of the sparse primitive (:mod:`sthfast.backends.sparse.custom_ops`): a CSR row gather and a
sampled dot product. Accumulation is in float32 (float64 for float64 inputs), weights included."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .launch import accumulator, on_device


def _block(width: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(width, 1))))


@triton.jit
def _csr_rows_kernel(row_ptr, col, val, x, y, F, BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """Program (r, f): ``y[r, f-block] = sum_p val[p] x[col[p], f-block]`` over row r's segment."""
    r = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = offs < F
    start = tl.load(row_ptr + r)
    end = tl.load(row_ptr + r + 1)
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    for p in range(start, end):
        c = tl.load(col + p)
        v = tl.load(val + p).to(ACC)
        acc += v * tl.load(x + c * F + offs, mask=mask, other=0.0).to(ACC)
    tl.store(y + r * F + offs, acc.to(y.dtype.element_ty), mask=mask)


@triton.jit
def _sampled_dot_kernel(row, col, a, b, out, NNZ, F, BLOCK_P: tl.constexpr, BLOCK_F: tl.constexpr,
                        ACC: tl.constexpr):
    """Program p-block: ``out[p] = <a[row[p]], b[col[p]]>`` for BLOCK_P stored entries."""
    p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    pmask = p < NNZ
    r = tl.load(row + p, mask=pmask, other=0)
    c = tl.load(col + p, mask=pmask, other=0)
    acc = tl.zeros([BLOCK_P], dtype=ACC)
    for f0 in range(0, F, BLOCK_F):
        f = f0 + tl.arange(0, BLOCK_F)
        m = pmask[:, None] & (f < F)[None, :]
        av = tl.load(a + r[:, None] * F + f[None, :], mask=m, other=0.0).to(ACC)
        bv = tl.load(b + c[:, None] * F + f[None, :], mask=m, other=0.0).to(ACC)
        acc += tl.sum(av * bv, axis=1)
    tl.store(out + p, acc.to(out.dtype.element_ty), mask=pmask)


def csr_rows(row_ptr: Tensor, col: Tensor, val: Tensor, x: Tensor) -> Tensor:
    """``y [R, F]``, ``y[r] = sum_p val[p] x[col[p]]`` over CSR row r; ``x [C, F]`` contiguous."""
    rows, width = row_ptr.shape[0] - 1, x.shape[1]
    y = x.new_empty(rows, width)
    if rows == 0 or width == 0:
        return y
    block = _block(width, 1024)
    acc = accumulator(x.dtype)
    with on_device(x):
        _csr_rows_kernel[(rows, triton.cdiv(width, block))](
            row_ptr, col, val.to(torch.float64 if acc == tl.float64 else torch.float32), x, y, width,
            BLOCK_F=block, ACC=acc)
    return y


def sampled_dot(row_ptr: Tensor, row: Tensor, col: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``[nnz]``: ``<a[row[p]], b[col[p]]>`` for every stored entry (``a, b [*, F]`` contiguous)."""
    nnz, width = col.shape[0], a.shape[1]
    out = a.new_zeros(nnz)
    if nnz == 0 or width == 0:
        return out
    block_p, block_f = 32, _block(width, 128)
    with on_device(a):
        _sampled_dot_kernel[(triton.cdiv(nnz, block_p),)](
            row, col, a.contiguous(), b.contiguous(), out, nnz, width, BLOCK_P=block_p,
            BLOCK_F=block_f, ACC=accumulator(a.dtype))
    return out
