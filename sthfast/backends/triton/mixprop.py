"""Triton kernels of the fused MixProp (the ``sthfast::mixprop_forward_triton`` / ``_backward_triton``
ops of :mod:`sthfast.backends.fused_mixprop`): the CUDA counterpart of ``csrc/mixprop/mixprop_cpu.cpp``.

MixProp over a sparse operator, all depth steps in one launch over ``x [B, C, N, T]``:
``h_0 = x, h_{j+1} = beta x + P h_j``, ``out[b, j C + c] = h_j[b, c]`` (``out [B, (D + 1) C, N, T]``),
``P`` a chain of one or two *hops* over one :class:`~sthfast.backends.sparse.SparseRows` ``S``
(hypergraph: gather ``S = D_e^-1 H^T`` then spread ``S^T``; graph: ``A`` or ``A^T``), each hop with its
value vector ``vals[v]`` on the pattern (normalisations and ``1 - beta`` folded in).

One program owns sample ``b`` and a tile of ``BLOCK_F`` of its ``C T`` columns (channel, step) and
runs the whole chain for them: every hop walks the rows ``BLOCK_R`` at a time, each row gathering
its CSR segment (no scatter, no atomics), reading and writing the tensors in the model's layout
(a row is ``T`` apart, a channel ``rows T``). The steps ``h_j`` live in ``out`` itself and a
two-hop step's middle (hyperedge) rows in a scratch ``mid``; as a program's threads hand rows to
each other through global memory, a barrier (``tl.debug_barrier``, a CTA ``bar.sync``) separates
the phases. The backward runs the chain back the same way from the saved steps: the gradient of
``x`` in ``float32`` / ``float64`` scratch and the value gradients (sampled dot products over the
program's columns) added atomically. Accumulation is in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import fused_mixprop
from .launch import MAX_REGISTERS, accumulator, on_device


@triton.jit
def _gather_rows(r, live_r, ptr, idx, emap, vals, first_row, first_col, src, src_cols, T, fmask,
                 HAS_MAP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """``[BLOCK_R, BLOCK_F]`` in ACC: ``sum_e vals[map(e)] src[idx[e] - first_col]`` over CSR row
    ``first_row + r`` for each of the rows ``r`` (``live_r``: those that exist), at the columns
    ``src_cols`` (a row is ``T`` apart in ``src``)."""
    start = tl.load(ptr + first_row + r, mask=live_r, other=0)
    degree = tl.load(ptr + first_row + r + 1, mask=live_r, other=0) - start
    acc = tl.zeros([BLOCK_R, BLOCK_F], dtype=ACC)
    for p in range(0, tl.max(degree, 0)):
        live = live_r & (p < degree)
        e = start + p
        j = tl.load(idx + e, mask=live, other=first_col) - first_col
        if HAS_MAP:
            e = tl.load(emap + e, mask=live, other=0)
        w = tl.load(vals + e, mask=live, other=0.0).to(ACC)
        v = tl.load(src + j[:, None] * T + src_cols[None, :], mask=live[:, None] & fmask[None, :], other=0.0)
        acc += w[:, None] * v.to(ACC)
    return acc


@triton.jit
def _hop_rows(r0, ptr, idx, emap, vals, first_row, first_col, rows, src, src_cols, dst, dst_cols, add,
              add_cols, coef, T, fmask, HAS_MAP: tl.constexpr, HAS_ADD: tl.constexpr, BLOCK_R: tl.constexpr,
              BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """Rows ``r0 .. r0 + BLOCK_R`` of one hop: ``dst[r] = sum_e vals[map(e)] src[idx[e] - first_col]``
    over CSR row ``first_row + r`` (``+ coef add[r]`` with HAS_ADD); a row is ``T`` apart in each
    buffer, ``*_cols [BLOCK_F]`` the columns' offsets."""
    r = r0 + tl.arange(0, BLOCK_R)
    live_r = r < rows
    acc = _gather_rows(r, live_r, ptr, idx, emap, vals, first_row, first_col, src, src_cols, T, fmask, HAS_MAP,
                       BLOCK_R, BLOCK_F, ACC)
    here = live_r[:, None] & fmask[None, :]
    if HAS_ADD:
        acc += coef * tl.load(add + r[:, None] * T + add_cols[None, :], mask=here, other=0.0).to(ACC)
    tl.store(dst + r[:, None] * T + dst_cols[None, :], acc.to(dst.dtype.element_ty), mask=here)


@triton.jit
def _hop(ptr, idx, emap, vals, first_row, first_col, rows, src, src_cols, dst, dst_cols, add, add_cols, coef,
         T, fmask, HAS_MAP: tl.constexpr, HAS_ADD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
         ACC: tl.constexpr):
    """A whole hop (every row) for the program's columns, then a barrier."""
    for r0 in range(0, rows, BLOCK_R):
        _hop_rows(r0, ptr, idx, emap, vals, first_row, first_col, rows, src, src_cols, dst, dst_cols, add,
                  add_cols, coef, T, fmask, HAS_MAP, HAS_ADD, BLOCK_R, BLOCK_F, ACC)
    tl.debug_barrier()


@triton.jit
def _value_grad(ptr, idx, emap, grad_vals, first_row, first_col, rows, grad_out, grad_cols, src, src_cols, T,
                fmask, HAS_MAP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """The value gradient of one hop over the program's columns, ``grad_vals[map(e)] +=
    <grad_out[r], src[idx[e] - first_col]>`` for every entry e of CSR row ``first_row + r``."""
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        live_r = r < rows
        start = tl.load(ptr + first_row + r, mask=live_r, other=0)
        degree = tl.load(ptr + first_row + r + 1, mask=live_r, other=0) - start
        here = live_r[:, None] & fmask[None, :]
        g = tl.load(grad_out + r[:, None] * T + grad_cols[None, :], mask=here, other=0.0).to(ACC)
        for p in range(0, tl.max(degree, 0)):
            live = live_r & (p < degree)
            e = start + p
            j = tl.load(idx + e, mask=live, other=first_col) - first_col
            if HAS_MAP:
                e = tl.load(emap + e, mask=live, other=0)
            v = tl.load(src + j[:, None] * T + src_cols[None, :], mask=live[:, None] & fmask[None, :], other=0.0)
            tl.atomic_add(grad_vals + e, tl.sum(g * v.to(ACC), axis=1), mask=live, sem="relaxed")   # any order


@triton.jit
def _rows_update(dst, src, coef, rows, T, cols, fmask, ACCUMULATE: tl.constexpr, BLOCK_R: tl.constexpr,
                 ACC: tl.constexpr):
    """``dst = coef src`` (``dst += coef src`` with ACCUMULATE) over ``rows`` rows of the program's
    columns, computed in ACC; then a barrier."""
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        here = (r < rows)[:, None] & fmask[None, :]
        at = r[:, None] * T + cols[None, :]
        value = coef * tl.load(src + at, mask=here, other=0.0).to(ACC)
        if ACCUMULATE:
            value += tl.load(dst + at, mask=here, other=0.0).to(ACC)
        tl.store(dst + at, value.to(dst.dtype.element_ty), mask=here)
    tl.debug_barrier()


@triton.jit
def _mixprop_forward_kernel(x, out, mid, vals, beta_ptr, a_ptr, a_idx, a_map, a_val, a_rows, b_ptr, b_idx, b_map, b_val,
                            C, N, T, depth, per_sample, A_MAP: tl.constexpr, B_MAP: tl.constexpr,
                            TWO_HOPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
                            ACC: tl.constexpr):
    """Program (sample s, column tile): the whole MixProp of its columns. Hop a maps the N nodes onto
    ``a_rows`` rows (the hyperedges, or the nodes again for a one-hop graph); hop b (TWO_HOPS) maps
    them back. ``per_sample``: 1 for a block-diagonal structure (block s serves sample s), else 0.
    ``beta_ptr``: beta in ACC (a float argument would be float32 even for float64 data)."""
    beta = tl.load(beta_ptr)
    s = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = f < C * T
    node_cols = (f // T).to(tl.int64) * N * T + f % T
    mid_cols = (f // T).to(tl.int64) * a_rows * T + f % T
    block = s * per_sample
    panel = C.to(tl.int64) * N * T                        # one [C, N, T] sample of x or step of out (int64)
    x_s = x + s * panel
    mid_s = mid + s * C * a_rows * T
    out_s = out + s * (depth + 1) * panel
    _rows_update(out_s, x_s, 1.0, N, T, node_cols, fmask, False, BLOCK_R, ACC)
    for j in range(1, depth + 1):
        h_prev = out_s + (j - 1) * panel
        h_next = out_s + j * panel
        if TWO_HOPS:
            _hop(a_ptr, a_idx, a_map, vals + a_val, block * a_rows, block * N, a_rows, h_prev, node_cols, mid_s,
                 mid_cols, x_s, node_cols, 0.0, T, fmask, A_MAP, False, BLOCK_R, BLOCK_F, ACC)
            _hop(b_ptr, b_idx, b_map, vals + b_val, block * N, block * a_rows, N, mid_s, mid_cols, h_next,
                 node_cols, x_s, node_cols, beta, T, fmask, B_MAP, True, BLOCK_R, BLOCK_F, ACC)
        else:
            _hop(a_ptr, a_idx, a_map, vals + a_val, block * N, block * N, N, h_prev, node_cols, h_next,
                 node_cols, x_s, node_cols, beta, T, fmask, A_MAP, True, BLOCK_R, BLOCK_F, ACC)


@triton.jit
def _mixprop_backward_kernel(grad, out, grad_x, g_now, g_next, mid, grad_mid, vals, grad_vals, beta_ptr,
                             a_ptr, a_idx, a_map, a_val, a_rows, at_ptr, at_idx, at_map,
                             b_ptr, b_idx, b_map, b_val, bt_ptr, bt_idx, bt_map,
                             C, N, T, depth, per_sample, A_MAP: tl.constexpr, AT_MAP: tl.constexpr,
                             B_MAP: tl.constexpr, BT_MAP: tl.constexpr, TWO_HOPS: tl.constexpr,
                             NEED_VALS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
                             ACC: tl.constexpr):
    """Program (sample s, column tile): the chain back from ``grad [B, (D + 1) C, N, T]`` and the
    forward's steps in ``out``. ``g_now`` / ``g_next`` (``[B, C, N, T]``, ACC) hold dL/dh_j, two so
    that a hop never reads the rows it writes; ``grad_x`` (ACC, zeros) sums ``beta`` dL/dh_j and dL/dh_0.
    ``a*`` / ``b*`` are the hops' forward CSR views, ``at*`` / ``bt*`` their transposes."""
    beta = tl.load(beta_ptr)
    s = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = f < C * T
    node_cols = (f // T).to(tl.int64) * N * T + f % T
    mid_cols = (f // T).to(tl.int64) * a_rows * T + f % T
    block = s * per_sample
    panel = C.to(tl.int64) * N * T
    grad_s = grad + s * (depth + 1) * panel
    out_s = out + s * (depth + 1) * panel
    gx = grad_x + s * panel
    now = g_now + s * panel
    nxt = g_next + s * panel
    mid_s = mid + s * C * a_rows * T
    gmid_s = grad_mid + s * C * a_rows * T
    _rows_update(now, grad_s + depth * panel, 1.0, N, T, node_cols, fmask, False, BLOCK_R, ACC)   # dL/dh_D
    for back in range(0, depth):
        j = depth - back
        h_prev = out_s + (j - 1) * panel
        _rows_update(gx, now, beta, N, T, node_cols, fmask, True, BLOCK_R, ACC)
        if TWO_HOPS:
            if NEED_VALS:     # hop b's input, the middle rows of step j, recomputed
                _hop(a_ptr, a_idx, a_map, vals + a_val, block * a_rows, block * N, a_rows, h_prev, node_cols,
                     mid_s, mid_cols, h_prev, node_cols, 0.0, T, fmask, A_MAP, False, BLOCK_R, BLOCK_F, ACC)
                _value_grad(b_ptr, b_idx, b_map, grad_vals + b_val, block * N, block * a_rows, N, now, node_cols,
                            mid_s, mid_cols, T, fmask, B_MAP, BLOCK_R, BLOCK_F, ACC)
            _hop(bt_ptr, bt_idx, bt_map, vals + b_val, block * a_rows, block * N, a_rows, now, node_cols, gmid_s,
                 mid_cols, now, node_cols, 0.0, T, fmask, BT_MAP, False, BLOCK_R, BLOCK_F, ACC)
            if NEED_VALS:
                _value_grad(a_ptr, a_idx, a_map, grad_vals + a_val, block * a_rows, block * N, a_rows, gmid_s,
                            mid_cols, h_prev, node_cols, T, fmask, A_MAP, BLOCK_R, BLOCK_F, ACC)
            _hop(at_ptr, at_idx, at_map, vals + a_val, block * N, block * a_rows, N, gmid_s, mid_cols, nxt,
                 node_cols, grad_s + (j - 1) * panel, node_cols, 1.0, T, fmask, AT_MAP, True, BLOCK_R, BLOCK_F, ACC)
        else:
            if NEED_VALS:
                _value_grad(a_ptr, a_idx, a_map, grad_vals + a_val, block * N, block * N, N, now, node_cols,
                            h_prev, node_cols, T, fmask, A_MAP, BLOCK_R, BLOCK_F, ACC)
            _hop(at_ptr, at_idx, at_map, vals + a_val, block * N, block * N, N, now, node_cols, nxt, node_cols,
                 grad_s + (j - 1) * panel, node_cols, 1.0, T, fmask, AT_MAP, True, BLOCK_R, BLOCK_F, ACC)
        now, nxt = nxt, now
    _rows_update(gx, now, 1.0, N, T, node_cols, fmask, True, BLOCK_R, ACC)


# --------------------------------------------------------------------------- launchers and the ops

# Tile shapes that ptxas compiles without spilling (tests/test_triton_aot.py checks every launch):
# rows per hop iteration, and the columns per program (64, or 32 for small batches; float64: 64).
BLOCK_R = 16
INTERPRETER_MULTIPROCESSORS = 4    # what the interpreter stands for: small tests launch both widths


def _block_f(programs_per_column: int, columns: int, device: torch.device, wide: bool) -> int:
    """Columns per program: 64, or 32 where 64 would leave fewer programs than two per
    multiprocessor (small batches), except for float64 (``wide``), whose 32-column kernels spill."""
    multiprocessors = (torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda"
                       else INTERPRETER_MULTIPROCESSORS)
    if wide or programs_per_column * triton.cdiv(columns, 64) >= 2 * multiprocessors:
        return 64
    return 32


class _Plan(NamedTuple):
    """The kernels' view of a fused MixProp call: each hop's CSR view forward (``a``, ``b``) and
    transposed (``at``, ``bt``) as ``(ptr, idx, map or None)``, the value offsets, the rows of
    hop a per block, and whether the structure is per sample."""

    a: tuple
    at: tuple
    b: tuple
    bt: tuple
    a_val: int
    b_val: int
    a_rows: int
    two_hops: bool
    per_sample: int


def _plan(row_ptr: Tensor, col: Tensor, col_ptr: Tensor, t_col: Tensor, from_t: Tensor, vals: Tensor,
          shape: tuple[int, ...], hop_transpose: list[int], hop_value: list[int], blocks: int) -> _Plan:
    """Checks the structure's sizes against ``x``'s ``shape`` ``[B, C, N, T]`` and the hops against
    each other (sizes only: no host synchronisation), as the C++ op does (``csrc/mixprop/mixprop.h``)."""
    if len(shape) != 4:
        raise RuntimeError(f"mixprop: x must be [B, C, N, T], got {list(shape)}")
    if not 1 <= len(hop_value) <= 2 or len(hop_transpose) != len(hop_value):
        raise RuntimeError("mixprop: one or two hops, each with a transpose flag and a value index")
    if blocks not in (-1, shape[0]):
        raise RuntimeError(f"mixprop: a block-diagonal structure needs one block per sample ({blocks} blocks, "
                           f"batch {shape[0]})")
    copies = 1 if blocks == -1 else blocks
    rows, nodes, nnz = row_ptr.shape[0] - 1, col_ptr.shape[0] - 1, col.shape[0]
    if rows % copies or nodes % copies or nodes // copies != shape[2]:
        raise RuntimeError(f"mixprop: a {rows} x {nodes} structure in {copies} block(s) does not fit x {list(shape)}")
    if t_col.shape[0] != nnz or from_t.shape[0] != nnz:
        raise RuntimeError(f"mixprop: both directions need {nnz} entries")
    if vals.dim() != 2 or vals.shape[1] != nnz:
        raise RuntimeError(f"mixprop: vals must be [V, {nnz}], got {list(vals.shape)}")
    for h, v in enumerate(hop_value):
        if not 0 <= v < vals.shape[0]:
            raise RuntimeError(f"mixprop: hop {h} reads value vector {v} of {vals.shape[0]}")
    forward, transposed = (row_ptr, col, None), (col_ptr, t_col, from_t)
    size = {False: (rows // copies, nodes // copies), True: (nodes // copies, rows // copies)}   # (rows, cols)
    views = [(transposed, forward) if t else (forward, transposed) for t in map(bool, hop_transpose)]
    sizes = [size[bool(t)] for t in hop_transpose]
    chain_ok = sizes[0][1] == shape[2] and sizes[-1][0] == shape[2] and (len(sizes) == 1 or sizes[1][1] == sizes[0][0])
    if not chain_ok:
        raise RuntimeError(f"mixprop: the hops do not chain {shape[2]} nodes onto themselves ({sizes})")
    a, at = views[0]
    b, bt = views[-1]
    return _Plan(a, at, b, bt, hop_value[0] * nnz, hop_value[-1] * nnz, sizes[0][0], len(sizes) == 2,
                 int(blocks != -1))


def _view_args(view: tuple, like: Tensor) -> tuple:
    ptr, idx, emap = view
    return ptr, idx, like if emap is None else emap


def forward(row_ptr: Tensor, col: Tensor, col_ptr: Tensor, t_col: Tensor, from_t: Tensor, vals: Tensor, x: Tensor,
            hop_transpose: list[int], hop_value: list[int], blocks: int, depth: int, beta: float) -> Tensor:
    """``sthfast::mixprop_forward_triton``: ``x [B, C, N, T] -> [B, C (depth + 1), N, T]``."""
    x = x.contiguous()
    b, c, n, t = x.shape
    out = x.new_empty(b, (depth + 1) * c, n, t)
    if x.numel() == 0:
        return out
    acc = accumulator(x.dtype)
    vals = vals.to(torch.float64 if acc == tl.float64 else torch.float32).contiguous()
    plan = _plan(row_ptr, col, col_ptr, t_col, from_t, vals, tuple(x.shape), hop_transpose, hop_value, blocks)
    mid = vals.new_empty(b, c, plan.a_rows, t) if plan.two_hops else vals.new_empty(1)
    block_f = _block_f(b, c * t, x.device, acc == tl.float64)
    with on_device(x):
        _mixprop_forward_kernel[(b, triton.cdiv(c * t, block_f))](
            x, out, mid, vals, vals.new_full((1,), beta), *_view_args(plan.a, col), plan.a_val, plan.a_rows,
            *_view_args(plan.b, col), plan.b_val, c, n, t, depth, plan.per_sample, A_MAP=plan.a[2] is not None,
            B_MAP=plan.b[2] is not None, TWO_HOPS=plan.two_hops, BLOCK_R=BLOCK_R, BLOCK_F=block_f, ACC=acc,
            maxnreg=MAX_REGISTERS)
    return out


def backward(grad: Tensor, out: Tensor, row_ptr: Tensor, col: Tensor, col_ptr: Tensor, t_col: Tensor,
             from_t: Tensor, vals: Tensor, hop_transpose: list[int], hop_value: list[int], blocks: int, depth: int,
             beta: float, need_vals: bool) -> tuple[Tensor, Tensor]:
    """``sthfast::mixprop_backward_triton``: the gradients of ``vals`` and ``x`` from the output's
    gradient ``grad`` and the forward's output ``out`` (``[B, (depth + 1) C, N, T]``)."""
    out, grad = out.contiguous(), grad.contiguous()
    b, dc, n, t = out.shape
    c = dc // (depth + 1)
    acc = accumulator(out.dtype)
    work = vals.to(torch.float64 if acc == tl.float64 else torch.float32).contiguous()
    grad_vals = torch.zeros_like(work)
    grad_x = work.new_zeros(b, c, n, t)
    if out.numel() == 0:
        return grad_vals.to(vals.dtype), grad_x.to(out.dtype)
    plan = _plan(row_ptr, col, col_ptr, t_col, from_t, work, (b, c, n, t), hop_transpose, hop_value, blocks)
    g_now, g_next = torch.empty_like(grad_x), torch.empty_like(grad_x)
    middle = (b, c, plan.a_rows, t)
    grad_mid = work.new_empty(middle if plan.two_hops else (1,))
    mid = work.new_empty(middle if plan.two_hops and need_vals else (1,))    # hop b's input, recomputed
    block_f = _block_f(b, c * t, out.device, acc == tl.float64)
    with on_device(out):
        _mixprop_backward_kernel[(b, triton.cdiv(c * t, block_f))](
            grad, out, grad_x, g_now, g_next, mid, grad_mid, work, grad_vals, work.new_full((1,), beta),
            *_view_args(plan.a, col), plan.a_val, plan.a_rows, *_view_args(plan.at, col),
            *_view_args(plan.b, col), plan.b_val, *_view_args(plan.bt, col), c, n, t, depth, plan.per_sample,
            A_MAP=plan.a[2] is not None, AT_MAP=plan.at[2] is not None, B_MAP=plan.b[2] is not None,
            BT_MAP=plan.bt[2] is not None, TWO_HOPS=plan.two_hops, NEED_VALS=bool(need_vals), BLOCK_R=BLOCK_R,
            BLOCK_F=block_f, ACC=acc, maxnreg=MAX_REGISTERS)
    return grad_vals.to(vals.dtype), grad_x.to(out.dtype)


FORWARD, BACKWARD = "sthfast::mixprop_forward_triton", "sthfast::mixprop_backward_triton"
torch.library.define(FORWARD, fused_mixprop.FORWARD_SCHEMA)
torch.library.define(BACKWARD, fused_mixprop.BACKWARD_SCHEMA)
torch.library.impl(FORWARD, ("CUDA", "CPU"))(forward)      # CPU: Triton's interpreter
torch.library.impl(BACKWARD, ("CUDA", "CPU"))(backward)
fused_mixprop.register(FORWARD, BACKWARD)


def mixprop(x: Tensor, structure, vals: Tensor, hops: tuple[tuple[bool, int], ...], depth: int,
            beta: float) -> Tensor:
    """The fused MixProp on CUDA, all steps in one launch forward and one backward; arguments as
    :func:`sthfast.backends.fused_mixprop.call`."""
    return fused_mixprop.call(torch.ops.sthfast.mixprop_forward_triton, x, structure, vals, hops, depth, beta)
