"""Triton kernels of the projected MixProp (the ``sthfast::projected_mixprop_forward_triton`` /
``_backward_triton`` ops of :mod:`sthfast.backends.projected_mixprop`): the CUDA counterpart of
``csrc/projected_mixprop/``.

With the Horner coefficients ``K [D + 1, C_out, C]`` the op is ``out = y_0``, ``y_D = K_D x``,
``y_j = K_j x + P y_{j+1}``: each step a sparse product over the nodes (``P``: one or two hops, as
in :mod:`.mixprop`) and a channel product, never the ``[B, C (D + 1), N, T]`` expansion.

One program owns sample ``b`` and a block of ``STEPS`` time steps, *all* channels of them: a
column ``f`` of its tile is (channel ``f // STEPS``, step ``t0 + f % STEPS``), so that the hops
(which mix nodes) and the channel products (which mix channels) both stay within the program. The
steps ``y_j`` alternate between two float32 (float64) scratch buffers ``[B, C_out, N, T]``, a
two-hop step's middle (hyperedge) rows go to a scratch ``mid``, and a barrier separates the phases
(see :mod:`.mixprop`).

The backward runs the gradient chain ``g_0 = dL/dout``, ``g_{j+1} = P^T g_j``: ``dL/dx = sum_j K_j^T
g_j``, ``dL/dK_j = sum_{n, t} g_j x^T`` (per program, added atomically), and, when the hop values
need gradients, the products of ``g_j`` with the steps ``y_{j+1}``, recomputed first by Horner's
rule into a scratch of ``D`` steps. That backward scratch (``D + 4`` buffers of ``C_out``
channels and x's gradient, in float32) is transient: what the op saves for the backward is x
alone, where the unfused MixProp saves its ``(D + 1) C`` expansion. Inputs in channels-last
format are made contiguous first and the outputs converted back (copies the C++ kernels avoid).
Gradients summed with atomic adds vary in their last bits from run to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import projected_mixprop
from .launch import MAX_REGISTERS, accumulator, on_device
from .mixprop import BLOCK_R, _gather_rows, _hop, _plan, _rows_update, _value_grad, _view_args


@triton.jit
def _mixed_rows(r, live_r, src, channels, plane, coef, out_stride, in_stride, col_ch, col_t, T, fmask,
                BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """``[BLOCK_R, BLOCK_F]`` in ACC, column ``f`` of rows ``r``: ``sum_i coef[col_ch[f] out_stride +
    i in_stride] src[i plane + r T + col_t[f]]`` over the ``channels`` channels ``i`` of ``src``
    (``K x`` with ``out_stride = C, in_stride = 1``; ``K^T g`` with ``out_stride = 1, in_stride = C``)."""
    acc = tl.zeros([BLOCK_R, BLOCK_F], dtype=ACC)
    here = live_r[:, None] & fmask[None, :]
    at = r[:, None] * T + col_t[None, :]
    for i in range(0, channels):
        k = tl.load(coef + col_ch * out_stride + i * in_stride, mask=fmask, other=0.0).to(ACC)
        acc += k[None, :] * tl.load(src + i * plane + at, mask=here, other=0.0).to(ACC)
    return acc


@triton.jit
def _projection(dst, dst_cols, x_s, C, plane, k_j, rows, col_ch, col_t, T, fmask, BLOCK_R: tl.constexpr,
                BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """``dst = K_j x`` over every row of the program's columns, then a barrier."""
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        live_r = r < rows
        acc = _mixed_rows(r, live_r, x_s, C, plane, k_j, C, 1, col_ch, col_t, T, fmask, BLOCK_R, BLOCK_F, ACC)
        tl.store(dst + r[:, None] * T + dst_cols[None, :], acc.to(dst.dtype.element_ty),
                 mask=live_r[:, None] & fmask[None, :])
    tl.debug_barrier()


@triton.jit
def _projected_hop(ptr, idx, emap, vals, first_row, first_col, rows, src, src_cols, dst, dst_cols, x_s, C, plane,
                   k_j, col_ch, col_t, T, fmask, HAS_MAP: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """A hop into the nodes plus the channel product: ``dst[r] = sum_e vals[map(e)] src[idx[e] -
    first_col] + (K_j x)[r]`` over every row, then a barrier."""
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        live_r = r < rows
        acc = _gather_rows(r, live_r, ptr, idx, emap, vals, first_row, first_col, src, src_cols, T, fmask, HAS_MAP,
                           BLOCK_R, BLOCK_F, ACC)
        acc += _mixed_rows(r, live_r, x_s, C, plane, k_j, C, 1, col_ch, col_t, T, fmask, BLOCK_R, BLOCK_F, ACC)
        tl.store(dst + r[:, None] * T + dst_cols[None, :], acc.to(dst.dtype.element_ty),
                 mask=live_r[:, None] & fmask[None, :])
    tl.debug_barrier()


@triton.jit
def _horner_step(y_prev, dst, mid_s, mid_cols, cols, x_s, C, plane, k_j, vals, a_ptr, a_idx, a_map, a_val, a_rows,
                 b_ptr, b_idx, b_map, b_val, block, N, col_ch, col_t, T, fmask, A_MAP: tl.constexpr,
                 B_MAP: tl.constexpr, TWO_HOPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
                 ACC: tl.constexpr):
    """``dst = K_j x + P y_prev`` (``y_prev = y_{j+1}``), P's first hop through ``mid`` when it has two."""
    if TWO_HOPS:
        _hop(a_ptr, a_idx, a_map, vals + a_val, block * a_rows, block * N, a_rows, y_prev, cols, mid_s, mid_cols,
             y_prev, cols, 0.0, T, fmask, A_MAP, False, BLOCK_R, BLOCK_F, ACC)
        _projected_hop(b_ptr, b_idx, b_map, vals + b_val, block * N, block * a_rows, N, mid_s, mid_cols, dst, cols,
                       x_s, C, plane, k_j, col_ch, col_t, T, fmask, B_MAP, BLOCK_R, BLOCK_F, ACC)
    else:
        _projected_hop(a_ptr, a_idx, a_map, vals + a_val, block * N, block * N, N, y_prev, cols, dst, cols, x_s, C,
                       plane, k_j, col_ch, col_t, T, fmask, A_MAP, BLOCK_R, BLOCK_F, ACC)


@triton.jit
def _horner_steps(ys, slots, B, s, x_s, coeffs, mid_s, mid_cols, cols, C, C_OUT, plane, vals, a_ptr, a_idx, a_map,
                  a_val, a_rows, b_ptr, b_idx, b_map, b_val, block, N, depth, col_ch, col_t, T, fmask,
                  A_MAP: tl.constexpr, B_MAP: tl.constexpr, TWO_HOPS: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """``y_D .. y_1`` of sample ``s`` (``depth >= 1``) into ``ys [slots, B, C_out, N, T]``, ``y_j`` in
    slot ``(j - 1) % slots`` (the forward keeps two slots, the backward all ``D``). Returns ``y_1``."""
    panel = C_OUT * plane
    y_prev = ys + (((depth - 1) % slots) * B + s) * panel
    _projection(y_prev, cols, x_s, C, plane, coeffs + depth * C_OUT * C, N, col_ch, col_t, T, fmask, BLOCK_R, BLOCK_F,
                ACC)
    for back in range(1, depth):
        j = depth - back
        dst = ys + (((j - 1) % slots) * B + s) * panel
        _horner_step(y_prev, dst, mid_s, mid_cols, cols, x_s, C, plane, coeffs + j * C_OUT * C, vals, a_ptr, a_idx,
                     a_map, a_val, a_rows, b_ptr, b_idx, b_map, b_val, block, N, col_ch, col_t, T, fmask, A_MAP,
                     B_MAP, TWO_HOPS, BLOCK_R, BLOCK_F, ACC)
        y_prev = dst
    return y_prev


@triton.jit
def _projected_forward_kernel(x, out, ys, mid, vals, coeffs, a_ptr, a_idx, a_map, a_val, a_rows, b_ptr, b_idx,
                              b_map, b_val, B, C, C_OUT, N, T, depth, per_sample, A_MAP: tl.constexpr,
                              B_MAP: tl.constexpr, TWO_HOPS: tl.constexpr, STEPS: tl.constexpr,
                              BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """Program (sample s, block of STEPS steps): ``out = y_0`` of its columns, ``y_D .. y_1`` in the
    two slots of ``ys [2, B, C_out, N, T]``. Hop a maps the N nodes onto ``a_rows`` rows, hop b
    (TWO_HOPS) maps them back; ``per_sample`` 1 for a block-diagonal structure (block s serves
    sample s), else 0."""
    s = tl.program_id(0).to(tl.int64)
    f = tl.arange(0, BLOCK_F)
    col_ch = f // STEPS
    col_t = tl.program_id(1) * STEPS + f % STEPS
    fmask = (col_ch < C_OUT) & (col_t < T)
    plane = N.to(tl.int64) * T                          # one channel of a sample (int64)
    cols = col_ch.to(tl.int64) * plane + col_t
    mid_cols = col_ch.to(tl.int64) * a_rows * T + col_t
    block = s * per_sample
    x_s = x + s * C * plane
    out_s = out + s * C_OUT * plane
    mid_s = mid + s * C_OUT * a_rows * T
    if depth == 0:
        _projection(out_s, cols, x_s, C, plane, coeffs, N, col_ch, col_t, T, fmask, BLOCK_R, BLOCK_F, ACC)
    else:
        y_1 = _horner_steps(ys, 2, B, s, x_s, coeffs, mid_s, mid_cols, cols, C, C_OUT, plane, vals, a_ptr, a_idx,
                            a_map, a_val, a_rows, b_ptr, b_idx, b_map, b_val, block, N, depth, col_ch, col_t, T,
                            fmask, A_MAP, B_MAP, TWO_HOPS, BLOCK_R, BLOCK_F, ACC)
        _horner_step(y_1, out_s, mid_s, mid_cols, cols, x_s, C, plane, coeffs, vals, a_ptr, a_idx, a_map, a_val,
                     a_rows, b_ptr, b_idx, b_map, b_val, block, N, col_ch, col_t, T, fmask, A_MAP, B_MAP, TWO_HOPS,
                     BLOCK_R, BLOCK_F, ACC)


@triton.jit
def _input_grad(gx, g, C_OUT, plane, k_j, C, N, col_ch, col_t, T, cols, in_mask, BLOCK_R: tl.constexpr,
                BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """``gx += K_j^T g`` over every row of the program's (input-channel) columns, then a barrier."""
    for r0 in range(0, N, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        live_r = r < N
        at = r[:, None] * T + cols[None, :]
        here = live_r[:, None] & in_mask[None, :]
        acc = _mixed_rows(r, live_r, g, C_OUT, plane, k_j, 1, C, col_ch, col_t, T, in_mask, BLOCK_R, BLOCK_F, ACC)
        acc += tl.load(gx + at, mask=here, other=0.0)
        tl.store(gx + at, acc, mask=here)
    tl.debug_barrier()


@triton.jit
def _coeff_grad(grad_k, g, x_s, C, C_OUT, N, plane, cols, col_t, T, out_mask, STEPS: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """``grad_k[o, c] += sum g[o, n, t] x[c, n, t]`` over the nodes and the program's steps (one
    atomic add per channel pair and program)."""
    o = tl.arange(0, BLOCK_F // STEPS)
    for c in range(0, C):
        acc = tl.zeros([BLOCK_F], dtype=ACC)
        for r0 in range(0, N, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            here = (r < N)[:, None] & out_mask[None, :]
            gv = tl.load(g + r[:, None] * T + cols[None, :], mask=here, other=0.0)
            xv = tl.load(x_s + c * plane + r[:, None] * T + col_t[None, :], mask=here, other=0.0).to(ACC)
            acc += tl.sum(gv * xv, axis=0)
        per_channel = tl.sum(tl.reshape(acc, [BLOCK_F // STEPS, STEPS]), axis=1)    # columns are (o, step)
        tl.atomic_add(grad_k + o * C + c, per_channel, mask=o < C_OUT, sem="relaxed")      # any order


@triton.jit
def _projected_backward_kernel(grad, x, grad_x, grad_coeffs, ys, g_now, g_next, mid, grad_mid, vals, grad_vals,
                               coeffs, a_ptr, a_idx, a_map, a_val, a_rows, at_ptr, at_idx, at_map, b_ptr, b_idx,
                               b_map, b_val, bt_ptr, bt_idx, bt_map, B, C, C_OUT, N, T, depth, per_sample,
                               A_MAP: tl.constexpr, AT_MAP: tl.constexpr, B_MAP: tl.constexpr,
                               BT_MAP: tl.constexpr, TWO_HOPS: tl.constexpr, NEED_VALS: tl.constexpr,
                               NEED_COEFFS: tl.constexpr, STEPS: tl.constexpr, BLOCK_R: tl.constexpr,
                               BLOCK_F: tl.constexpr, ACC: tl.constexpr):
    """Program (sample s, block of STEPS steps): the gradient chain ``g_j`` back from ``grad [B,
    C_out, N, T]`` in ``g_now`` / ``g_next`` (ACC, two so that a hop never reads the rows it
    writes), adding ``K_j^T g_j`` to ``grad_x`` (ACC, zeros) and ``g_j x^T`` to ``grad_coeffs``
    (NEED_COEFFS); with NEED_VALS the steps ``y_1 .. y_D`` are recomputed first into ``ys [D, B,
    C_out, N, T]``. ``a*`` / ``b*`` are the hops' forward CSR views, ``at*`` / ``bt*`` their
    transposes."""
    s = tl.program_id(0).to(tl.int64)
    f = tl.arange(0, BLOCK_F)
    col_ch = f // STEPS
    col_t = tl.program_id(1) * STEPS + f % STEPS
    out_mask = (col_ch < C_OUT) & (col_t < T)
    in_mask = (col_ch < C) & (col_t < T)
    plane = N.to(tl.int64) * T
    cols = col_ch.to(tl.int64) * plane + col_t          # a [channels, N, T] buffer's columns, in or out
    mid_cols = col_ch.to(tl.int64) * a_rows * T + col_t
    block = s * per_sample
    x_s = x + s * C * plane
    gx = grad_x + s * C * plane
    now = g_now + s * C_OUT * plane
    nxt = g_next + s * C_OUT * plane
    mid_s = mid + s * C_OUT * a_rows * T
    gmid_s = grad_mid + s * C_OUT * a_rows * T
    if NEED_VALS:
        if depth > 0:
            _horner_steps(ys, depth, B, s, x_s, coeffs, mid_s, mid_cols, cols, C, C_OUT, plane, vals, a_ptr, a_idx,
                          a_map, a_val, a_rows, b_ptr, b_idx, b_map, b_val, block, N, depth, col_ch, col_t, T,
                          out_mask, A_MAP, B_MAP, TWO_HOPS, BLOCK_R, BLOCK_F, ACC)
    _rows_update(now, grad + s * C_OUT * plane, 1.0, N, T, cols, out_mask, False, BLOCK_R, ACC)      # g_0
    for j in range(0, depth):
        _input_grad(gx, now, C_OUT, plane, coeffs + j * C_OUT * C, C, N, col_ch, col_t, T, cols, in_mask, BLOCK_R,
                    BLOCK_F, ACC)
        if NEED_COEFFS:
            _coeff_grad(grad_coeffs + j * C_OUT * C, now, x_s, C, C_OUT, N, plane, cols, col_t, T, out_mask, STEPS,
                        BLOCK_R, BLOCK_F, ACC)
        y_next = ys + (j * B + s) * C_OUT * plane                                                    # y_{j+1}
        if TWO_HOPS:
            if NEED_VALS:     # hop b's input, the middle rows of step j, recomputed
                _hop(a_ptr, a_idx, a_map, vals + a_val, block * a_rows, block * N, a_rows, y_next, cols, mid_s,
                     mid_cols, y_next, cols, 0.0, T, out_mask, A_MAP, False, BLOCK_R, BLOCK_F, ACC)
                _value_grad(b_ptr, b_idx, b_map, grad_vals + b_val, block * N, block * a_rows, N, now, cols, mid_s,
                            mid_cols, T, out_mask, B_MAP, BLOCK_R, BLOCK_F, ACC)
            _hop(bt_ptr, bt_idx, bt_map, vals + b_val, block * a_rows, block * N, a_rows, now, cols, gmid_s,
                 mid_cols, now, cols, 0.0, T, out_mask, BT_MAP, False, BLOCK_R, BLOCK_F, ACC)
            if NEED_VALS:
                _value_grad(a_ptr, a_idx, a_map, grad_vals + a_val, block * a_rows, block * N, a_rows, gmid_s,
                            mid_cols, y_next, cols, T, out_mask, A_MAP, BLOCK_R, BLOCK_F, ACC)
            _hop(at_ptr, at_idx, at_map, vals + a_val, block * N, block * a_rows, N, gmid_s, mid_cols, nxt, cols,
                 nxt, cols, 0.0, T, out_mask, AT_MAP, False, BLOCK_R, BLOCK_F, ACC)
        else:
            if NEED_VALS:
                _value_grad(a_ptr, a_idx, a_map, grad_vals + a_val, block * N, block * N, N, now, cols, y_next,
                            cols, T, out_mask, A_MAP, BLOCK_R, BLOCK_F, ACC)
            _hop(at_ptr, at_idx, at_map, vals + a_val, block * N, block * N, N, now, cols, nxt, cols, nxt, cols, 0.0,
                 T, out_mask, AT_MAP, False, BLOCK_R, BLOCK_F, ACC)
        now, nxt = nxt, now
    _input_grad(gx, now, C_OUT, plane, coeffs + depth * C_OUT * C, C, N, col_ch, col_t, T, cols, in_mask, BLOCK_R,
                BLOCK_F, ACC)
    if NEED_COEFFS:
        _coeff_grad(grad_coeffs + depth * C_OUT * C, now, x_s, C, C_OUT, N, plane, cols, col_t, T, out_mask, STEPS,
                    BLOCK_R, BLOCK_F, ACC)


# --------------------------------------------------------------------------- launchers and the ops

TILE_COLUMNS = 64     # columns per program (all channels of 64 // channels steps), as the MixProp's


def _tile(channels: int) -> tuple[int, int]:
    """``(STEPS, BLOCK_F)``: a program's tile holds every one of ``channels`` channels (rounded up to
    a power of two) for STEPS steps, about :data:`TILE_COLUMNS` columns."""
    width = triton.next_power_of_2(max(channels, 1))
    steps = max(1, TILE_COLUMNS // width)
    return steps, width * steps


def _work(tensor: Tensor, acc) -> Tensor:
    """``tensor`` in the accumulator's dtype, contiguous (the kernels' view of values and coefficients)."""
    return tensor.to(torch.float64 if acc == tl.float64 else torch.float32).contiguous()


def _sizes(x: Tensor, coeffs: Tensor) -> tuple[int, int, int, int, int, int]:
    """``(B, C, N, T, depth, C_out)`` of ``x [B, C, N, T]`` and ``coeffs [D + 1, C_out, C]``, checked."""
    if x.dim() != 4:
        raise RuntimeError(f"projected_mixprop: x must be [B, C, N, T], got {list(x.shape)}")
    b, c, n, t = x.shape
    if coeffs.dim() != 3 or coeffs.shape[0] < 1 or coeffs.shape[2] != c:
        raise RuntimeError(f"projected_mixprop: coeffs must be [depth + 1, C_out, {c}], got {list(coeffs.shape)}")
    return b, c, n, t, coeffs.shape[0] - 1, coeffs.shape[1]


def forward(row_ptr: Tensor, col: Tensor, col_ptr: Tensor, t_col: Tensor, from_t: Tensor, vals: Tensor, x: Tensor,
            coeffs: Tensor, hop_transpose: list[int], hop_value: list[int], blocks: int) -> Tensor:
    """``sthfast::projected_mixprop_forward_triton``: ``x [B, C, N, T] -> [B, C_out, N, T]``."""
    fmt = projected_mixprop.output_format(x)
    b, c, n, t, depth, o = _sizes(x, coeffs)
    x = x.contiguous()
    acc = accumulator(x.dtype)
    work_vals, work_k = _work(vals, acc), _work(coeffs, acc)
    plan = _plan(row_ptr, col, col_ptr, t_col, from_t, work_vals, (b, c, n, t), hop_transpose, hop_value, blocks)
    if c == 0:                                           # K x = 0
        return x.new_zeros(b, o, n, t).contiguous(memory_format=fmt)
    out = x.new_empty(b, o, n, t)
    if out.numel() == 0:
        return out.contiguous(memory_format=fmt)
    ys = work_vals.new_empty((min(depth, 2), b, o, n, t) if depth else (1,))      # depth 1: slot 0 only
    mid = work_vals.new_empty((b, o, plan.a_rows, t) if plan.two_hops and depth else (1,))
    steps, block_f = _tile(o)
    with on_device(x):
        _projected_forward_kernel[(b, triton.cdiv(t, steps))](
            x, out, ys, mid, work_vals, work_k, *_view_args(plan.a, col), plan.a_val, plan.a_rows,
            *_view_args(plan.b, col), plan.b_val, b, c, o, n, t, depth, plan.per_sample, A_MAP=plan.a[2] is not None,
            B_MAP=plan.b[2] is not None, TWO_HOPS=plan.two_hops, STEPS=steps, BLOCK_R=BLOCK_R, BLOCK_F=block_f,
            ACC=acc, maxnreg=MAX_REGISTERS)
    return out.contiguous(memory_format=fmt)


def backward(grad: Tensor, x: Tensor, row_ptr: Tensor, col: Tensor, col_ptr: Tensor, t_col: Tensor, from_t: Tensor,
             vals: Tensor, coeffs: Tensor, hop_transpose: list[int], hop_value: list[int], blocks: int,
             need_vals: bool, need_coeffs: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``sthfast::projected_mixprop_backward_triton``: the gradients of ``vals``, ``x`` and
    ``coeffs`` from the output's gradient ``grad [B, C_out, N, T]``."""
    fmt = projected_mixprop.output_format(x)
    b, c, n, t, depth, o = _sizes(x, coeffs)
    if tuple(grad.shape) != (b, o, n, t):
        raise RuntimeError(f"projected_mixprop: grad must be [B, C_out, N, T] = {[b, o, n, t]}, got {list(grad.shape)}")
    x, grad = x.contiguous(), grad.contiguous()
    acc = accumulator(x.dtype)
    work_vals, work_k = _work(vals, acc), _work(coeffs, acc)
    plan = _plan(row_ptr, col, col_ptr, t_col, from_t, work_vals, (b, c, n, t), hop_transpose, hop_value, blocks)
    grad_vals, grad_k = torch.zeros_like(work_vals), torch.zeros_like(work_k)
    grad_x = work_vals.new_zeros(b, c, n, t)
    if x.numel() and grad.numel():
        need_vals = bool(need_vals) and depth > 0
        g_now, g_next = work_vals.new_empty(b, o, n, t), work_vals.new_empty(b, o, n, t)
        ys = work_vals.new_empty((depth, b, o, n, t) if need_vals else (1,))
        middle = (b, o, plan.a_rows, t) if plan.two_hops and depth else (1,)
        mid = work_vals.new_empty(middle if need_vals else (1,))
        grad_mid = work_vals.new_empty(middle)
        steps, block_f = _tile(max(c, o))
        with on_device(x):
            _projected_backward_kernel[(b, triton.cdiv(t, steps))](
                grad, x, grad_x, grad_k, ys, g_now, g_next, mid, grad_mid, work_vals, grad_vals, work_k,
                *_view_args(plan.a, col), plan.a_val, plan.a_rows, *_view_args(plan.at, col),
                *_view_args(plan.b, col), plan.b_val, *_view_args(plan.bt, col), b, c, o, n, t, depth,
                plan.per_sample, A_MAP=plan.a[2] is not None, AT_MAP=plan.at[2] is not None,
                B_MAP=plan.b[2] is not None, BT_MAP=plan.bt[2] is not None, TWO_HOPS=plan.two_hops,
                NEED_VALS=need_vals, NEED_COEFFS=bool(need_coeffs), STEPS=steps, BLOCK_R=BLOCK_R, BLOCK_F=block_f,
                ACC=acc, maxnreg=MAX_REGISTERS)
    return (grad_vals.to(vals.dtype), grad_x.to(x.dtype).contiguous(memory_format=fmt), grad_k.to(coeffs.dtype))


FORWARD, BACKWARD = "sthfast::projected_mixprop_forward_triton", "sthfast::projected_mixprop_backward_triton"
torch.library.define(FORWARD, projected_mixprop.FORWARD_SCHEMA)
torch.library.define(BACKWARD, projected_mixprop.BACKWARD_SCHEMA)
torch.library.impl(FORWARD, ("CUDA", "CPU"))(forward)      # CPU: Triton's interpreter
torch.library.impl(BACKWARD, ("CUDA", "CPU"))(backward)
projected_mixprop.register(FORWARD, BACKWARD)


def projected(x: Tensor, structure, values, hops: tuple[tuple[bool, int], ...], depth: int, beta: float,
              weight: Tensor, bias: Tensor | None, stages=()) -> Tensor:
    """The projected MixProp on CUDA, one launch forward and one backward (a
    :data:`sthfast.backends.sparse.mixprop.Projector`; no per-hop ``stages``)."""
    return projected_mixprop.project(torch.ops.sthfast.projected_mixprop_forward_triton, x, structure, values, hops,
                                     depth, beta, weight, bias)
