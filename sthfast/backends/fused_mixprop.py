"""The fused MixProp op's Python side, shared by its two kernel sets: ``sthfast::mixprop_forward`` /
``mixprop_backward`` (C++, CPU: ``csrc/mixprop/``, backend ``cpp``) and ``sthfast::mixprop_forward_triton``
/ ``mixprop_backward_triton`` (Triton, CUDA: :mod:`sthfast.backends.triton.mixprop`, backend ``triton``).

Both pairs have the schemas below: ``forward(index..., vals [V, nnz], x [B, C, N, T], hops, blocks,
depth, beta) -> [B, C (depth + 1), N, T]``, all steps of MixProp's ``h_{j+1} = beta x + (1 - beta) P
h_j`` in one call, ``P`` one or two hops over a :class:`~sthfast.backends.sparse.SparseRows` whose
values ``vals`` carry the ``(1 - beta)`` factor (see :mod:`sthfast.backends.sparse.mixprop`).
Here: :func:`call` (the arguments from a structure), the fake kernels for ``torch.compile``, and
the autograd rule: the backward op from the saved output, or, when a graph of the backward is asked
for (``create_graph``), the step-by-step twin differentiated instead (:func:`recomputed_backward`),
so that higher derivatives exist.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

FORWARD_SCHEMA = ("(Tensor row_ptr, Tensor col, Tensor col_ptr, Tensor t_col, Tensor from_t, Tensor vals, Tensor x, "
                  "int[] hop_transpose, int[] hop_value, int blocks, int depth, float beta) -> Tensor")
BACKWARD_SCHEMA = ("(Tensor grad, Tensor out, Tensor row_ptr, Tensor col, Tensor col_ptr, Tensor t_col, "
                   "Tensor from_t, Tensor vals, int[] hop_transpose, int[] hop_value, int blocks, int depth, "
                   "float beta, bool need_vals) -> (Tensor, Tensor)")


def call(forward: Callable[..., Tensor], x: Tensor, structure, vals: Tensor, hops: tuple[tuple[bool, int], ...],
         depth: int, beta: float) -> Tensor:
    """``forward`` (a fused MixProp op) over ``x [B, C, N, T]`` -> ``[B, C (depth + 1), N, T]``:
    ``structure`` a :class:`~sthfast.backends.sparse.SparseRows` ``S``, ``vals [V, nnz]`` value
    vectors on its pattern, ``hops`` the chain (``(transpose, v)``: ``S`` or ``S^T`` with
    ``vals[v]``). Gradients reach ``x`` and ``vals``. The op saves its output for the backward:
    modifying the output in place is then an error, as for any op that saves its output."""
    s = structure
    index = [t.long().contiguous() for t in (s.row_ptr, s.col, s.col_ptr, s.t_col, s.from_t)]
    return forward(*index, vals, x, [int(t) for t, _ in hops], [v for _, v in hops],
                   -1 if s.blocks is None else s.blocks, depth, float(beta))


def recomputed_backward(twin: Callable[[], list[Tensor]], inputs: list[Tensor],
                        grads: list[Tensor | None]) -> list[Tensor | None]:
    """The backward of a fused op when a graph of it is asked for (``create_graph``, higher
    derivatives): ``twin()`` recomputes the op's outputs differentiably from ``inputs`` with
    PyTorch ops, and those are differentiated instead (the compiled backward has no graph)."""
    with torch.enable_grad():
        outs = twin()
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    wanted = [t for t in inputs if t.requires_grad]
    if not pairs or not wanted:
        return [None] * len(inputs)
    found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                     create_graph=True, allow_unused=True))
    return [next(found) if t.requires_grad else None for t in inputs]


def register(forward: str, backward: str) -> None:
    """Fake kernels and the autograd rule for the op pair ``forward`` / ``backward`` (qualified
    names, already defined with :data:`FORWARD_SCHEMA` / :data:`BACKWARD_SCHEMA`)."""
    backward_op = getattr(torch.ops.sthfast, backward.split("::")[1])

    @torch.library.register_fake(forward)
    def _(row_ptr, col, col_ptr, t_col, from_t, vals, x, hop_transpose, hop_value, blocks, depth, beta):
        b, c, n, t = x.shape
        return x.new_empty(b, (depth + 1) * c, n, t)

    @torch.library.register_fake(backward)
    def _(grad, out, row_ptr, col, col_ptr, t_col, from_t, vals, hop_transpose, hop_value, blocks, depth, beta,
          need_vals):
        b, dc, n, t = out.shape
        return vals.new_empty(vals.shape), out.new_empty(b, dc // (depth + 1), n, t)

    def setup_context(ctx, inputs, output):
        # the output holds every step h_j, the hops' inputs: the backward reads them from it
        ctx.save_for_backward(output, *inputs[:7])
        ctx.config = inputs[7:]

    def backward_rule(ctx, grad):
        out, *index, vals, x = ctx.saved_tensors
        need_vals, need_x = ctx.needs_input_grad[5], ctx.needs_input_grad[6]
        if torch.is_grad_enabled():          # create_graph: differentiate the step-by-step twin
            grad_vals, grad_x = recomputed_backward(lambda: [_by_steps(x, index, vals, *ctx.config)],
                                                    [vals, x], [grad])
        else:
            grad_vals, grad_x = backward_op(grad, out, *index, vals, *ctx.config, need_vals)
        return (None, None, None, None, None, grad_vals if need_vals else None,
                grad_x if need_x else None, None, None, None, None, None)

    torch.library.register_autograd(forward, backward_rule, setup_context=setup_context)


def _by_steps(x: Tensor, index: list[Tensor], vals: Tensor, hop_transpose: list[int],
              hop_value: list[int], blocks: int, depth: int, beta: float) -> Tensor:
    """The fused MixProp's twin in PyTorch ops (the ``sparse`` backend's step-by-step products)."""
    from .sparse import SparseRows, spmm  # noqa: PLC0415 (sparse imports this module's users)
    from .sparse.mixprop import by_steps  # noqa: PLC0415

    row_ptr, col, col_ptr, t_col, from_t = index
    row = torch.repeat_interleave(torch.arange(row_ptr.shape[0] - 1, device=col.device), row_ptr.diff())
    s = SparseRows(row_ptr, col, row, col_ptr, t_col, from_t, vals[0], None if blocks == -1 else blocks)
    hops = tuple((bool(t), v) for t, v in zip(hop_transpose, hop_value))
    return by_steps(spmm, x, s, list(vals.unbind(0)), hops, depth, beta)
