"""The projected MixProp: a MixProp followed by its 1x1 projection, as one op whose fused kernels
never write the ``[B, C (depth + 1), N, T]`` expansion: C++ on the CPU (``csrc/projected_mixprop/``,
``sthfast::projected_mixprop_forward`` / ``_backward``, backend ``cpp``) and Triton on CUDA
(:mod:`sthfast.backends.triton.projected_mixprop`, ``sthfast::projected_mixprop_forward_triton`` /
``_backward_triton``, backend ``triton``), both pairs with the schemas below.

With ``h_0 = x``, ``h_{j+1} = beta x + P h_j`` (``P``'s values carrying ``1 - beta``) and the
projection ``out = sum_j W_j h_j`` (``W_j``: the ``C_out x C`` block of the weight that reads
``h_j``), the projection acts on channels and ``P`` on nodes, so they commute and

    out = sum_j P^j (K_j x),   K_j = W_j + beta sum_{k > j} W_k        (:func:`horner_coefficients`)

which the kernel evaluates by Horner's rule, ``y_D = K_D x``, ``y_j = K_j x + P y_{j+1}``,
``out = y_0``: ``x`` read once, ``out`` written once. The coefficients are computed here with torch
ops, so the weight's gradient follows from ``K``'s. Without a fused kernel (the reference, and the
backends whose MixProp is not fused with its projection) the op is the MixProp and then
:func:`sthfast.reference.projection`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .fused_mixprop import recomputed_backward

FORWARD_SCHEMA = ("(Tensor row_ptr, Tensor col, Tensor col_ptr, Tensor t_col, Tensor from_t, Tensor vals, Tensor x, "
                  "Tensor coeffs, int[] hop_transpose, int[] hop_value, int blocks) -> Tensor")
BACKWARD_SCHEMA = ("(Tensor grad, Tensor x, Tensor row_ptr, Tensor col, Tensor col_ptr, Tensor t_col, "
                   "Tensor from_t, Tensor vals, Tensor coeffs, int[] hop_transpose, int[] hop_value, int blocks, "
                   "bool need_vals, bool need_coeffs) -> (Tensor, Tensor, Tensor)")


def horner_coefficients(weight: Tensor, depth: int, beta: float) -> Tensor:
    """The projection ``weight [C_out, C (depth + 1)]`` (blocks ``W_0 .. W_depth`` of ``C``
    columns) -> ``K [depth + 1, C_out, C]``, ``K_j = W_j + beta sum_{k > j} W_k``."""
    c_out = weight.shape[0]
    blocks = weight.reshape(c_out, depth + 1, -1).transpose(0, 1)            # [D + 1, C_out, C]
    after = blocks.flip(0).cumsum(0).flip(0) - blocks                         # sum_{k > j} W_k
    return blocks + beta * after


def call(forward: Callable[..., Tensor], x: Tensor, structure, vals: Tensor, hops: tuple[tuple[bool, int], ...],
         coeffs: Tensor) -> Tensor:
    """``forward`` (a fused projected MixProp op) over ``x [B, C, N, T]`` -> ``[B, C_out, N, T]``: ``structure`` a
    :class:`~sthfast.backends.sparse.SparseRows`, ``vals [V, nnz]`` its value vectors, ``hops``
    the chain of ``P`` (as :func:`sthfast.backends.fused_mixprop.call`), ``coeffs [D + 1, C_out, C]``
    from :func:`horner_coefficients`. Gradients reach ``x``, ``vals`` and ``coeffs``."""
    s = structure
    index = [t.long().contiguous() for t in (s.row_ptr, s.col, s.col_ptr, s.t_col, s.from_t)]
    return forward(*index, vals, x, coeffs, [int(t) for t, _ in hops], [v for _, v in hops],
                   -1 if s.blocks is None else s.blocks)


def project(forward: Callable[..., Tensor], x: Tensor, structure, values: list[Tensor], hops, depth: int,
            beta: float, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A projector's work (:data:`sthfast.backends.sparse.mixprop.Projector`, less its per-hop
    ``stages``) on the fused op ``forward``."""
    out = call(forward, x, structure, torch.stack(list(values)), hops, horner_coefficients(weight, depth, beta))
    return out if bias is None else out + bias.view(1, -1, 1, 1).to(out.dtype)


def register(forward: str, backward: str) -> None:
    """Fake kernels and the autograd rule for the op pair ``forward`` / ``backward`` (qualified
    names, already defined with :data:`FORWARD_SCHEMA` / :data:`BACKWARD_SCHEMA`)."""
    backward_op = getattr(torch.ops.sthfast, backward.split("::")[1])

    @torch.library.register_fake(forward)
    def _(row_ptr, col, col_ptr, t_col, from_t, vals, x, coeffs, hop_transpose, hop_value, blocks):
        b, _, n, t = x.shape
        return x.new_empty(b, coeffs.shape[1], n, t).contiguous(memory_format=output_format(x))

    @torch.library.register_fake(backward)
    def _(grad, x, row_ptr, col, col_ptr, t_col, from_t, vals, coeffs, hop_transpose, hop_value, blocks,
          need_vals, need_coeffs):
        return (vals.new_empty(vals.shape), x.new_empty(x.shape).contiguous(memory_format=output_format(x)),
                coeffs.new_empty(coeffs.shape))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:8])
        ctx.config = inputs[8:]

    def backward_rule(ctx, grad):
        *index, vals, x, coeffs = ctx.saved_tensors
        need_vals, need_x, need_coeffs = ctx.needs_input_grad[5:8]
        if torch.is_grad_enabled():          # create_graph: differentiate the step-by-step twin
            twin = lambda: [_by_steps(x, index, vals, coeffs, *ctx.config)]
            grad_vals, grad_x, grad_coeffs = recomputed_backward(twin, [vals, x, coeffs], [grad])
        else:
            grad_vals, grad_x, grad_coeffs = backward_op(grad, x, *index, vals, coeffs, *ctx.config, need_vals,
                                                         need_coeffs)
        return (None, None, None, None, None, grad_vals if need_vals else None, grad_x if need_x else None,
                grad_coeffs if need_coeffs else None, None, None, None)

    torch.library.register_autograd(forward, backward_rule, setup_context=setup_context)


def output_format(x: Tensor) -> torch.memory_format:
    """The kernels' output format for ``x``: channels-last when ``x`` is stored so (and is not also
    contiguous), else the standard one."""
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _by_steps(x: Tensor, index: list[Tensor], vals: Tensor, coeffs: Tensor, hop_transpose: list[int],
              hop_value: list[int], blocks: int) -> Tensor:
    """The kernel's twin in torch ops: Horner's rule with the ``sparse`` backend's products."""
    from .sparse import SparseRows, spmm  # noqa: PLC0415 (sparse imports this module's users)
    from .sparse.mixprop import channel_major, node_major  # noqa: PLC0415

    row_ptr, col, col_ptr, t_col, from_t = index
    row = torch.repeat_interleave(torch.arange(row_ptr.shape[0] - 1, device=col.device), row_ptr.diff())
    s = SparseRows(row_ptr, col, row, col_ptr, t_col, from_t, vals[0], None if blocks == -1 else blocks)
    structures = [s._replace(val=v) for v in vals.unbind(0)]
    hops = list(zip(hop_transpose, hop_value))
    project: Callable[[int], Tensor] = lambda j: torch.einsum("oc,bcnt->bont", coeffs[j].to(x.dtype), x)
    y = node_major(project(coeffs.shape[0] - 1), s.blocks)
    for j in range(coeffs.shape[0] - 2, -1, -1):
        for transpose, v in hops:
            y = spmm(structures[v], y, transpose=bool(transpose))
        y = y + node_major(project(j), s.blocks)
    like = torch.empty(x.shape[0], coeffs.shape[1], *x.shape[2:], device="meta")    # channel_major reads its shape
    return channel_major(y.unsqueeze(0), like, s.blocks)
