"""The compiled extension ``sthfast._C`` (``csrc/``, built from ``CMakeLists.txt``): the fused
pool + patch op (CPU kernels always, CUDA kernels where the build had nvcc and a CUDA torch) and
the fused sparse MixProp (CPU).

The C++ side defines ``sthfast::pool_patch_forward`` / ``sthfast::pool_patch_backward``,
``sthfast::mixprop_forward`` / ``sthfast::mixprop_backward`` and their device kernels; this module
adds what makes them complete PyTorch ops: fake (meta) kernels for ``torch.compile`` and the
autograd rules (with ``create_graph`` the backward differentiates a PyTorch twin instead, so that
higher derivatives exist). Nothing here fails when the extension is missing: :func:`available`
says so, and ``backend="auto"`` then uses the reference pool + patch and the ``sparse`` MixProp.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..reference.pool_patch import num_patches
from . import Implementation, fused_mixprop, nowhere, projected_mixprop, sparse


@functools.lru_cache(maxsize=None)
def load() -> str | None:
    """Import the extension once; None when it loaded, else why not (one line)."""
    try:
        from .. import _C  # noqa: F401, PLC0415 (importing registers the ops)
    except ImportError as err:
        return f"not built ({err}); see csrc/README.md"
    try:
        _register_python_parts()
    except Exception as err:  # noqa: BLE001 (e.g. a torch older than 2.4: no register_fake)
        return f"built, but its Python registration failed ({err})"
    return None


@torch.compiler.assume_constant_result   # torch.compile: a constant, not a call to trace
def available() -> bool:
    """Whether the extension's CPU kernels can run."""
    return load() is None


@torch.compiler.assume_constant_result
def has_cuda_kernels() -> bool:
    """Whether the extension was compiled with its CUDA kernels."""
    return available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "sthfast::pool_patch_forward", "CUDA")


def _require() -> None:
    if not available():                      # (a constant under torch.compile)
        raise RuntimeError(f"the sthfast C++ extension is unavailable: {load()}")


def pool_patch(x: Tensor, patch_len: int, stride: int, normalize: bool = True, eps: float = 1e-5,
               node_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The extension's fused op, same contract as :func:`sthfast.reference.pool_patch`: one pass
    over ``x [B, T, N, F]`` forward, one backward."""
    _require()
    weight = None if node_mask is None else node_mask.detach().to(x.dtype)  # no gradient to a mask
    patches, mean, std, _ = torch.ops.sthfast.pool_patch_forward(x, patch_len, stride, normalize,
                                                                 eps, weight)
    return patches, mean, std


def mixprop_isa() -> str | None:
    """Which copy of the fused MixProp's CPU kernels runs here: ``"avx2"`` (AVX2 + FMA) or
    ``"baseline"`` (``STHFAST_CPU_BASELINE=1`` forces it); None without the extension."""
    return torch.ops.sthfast.mixprop_isa() if available() else None


def mixprop(x: Tensor, structure, vals: Tensor, hops: tuple[tuple[bool, int], ...], depth: int,
            beta: float) -> Tensor:
    """The fused MixProp on the CPU (``csrc/mixprop/mixprop_cpu.cpp``), all steps in one pass over
    ``x [B, C, N, T]`` -> ``[B, C (depth + 1), N, T]``; arguments as
    :func:`sthfast.backends.fused_mixprop.call`."""
    _require()
    return fused_mixprop.call(torch.ops.sthfast.mixprop_forward, x, structure, vals, hops, depth, beta)


def projected(x: Tensor, structure, values, hops: tuple[tuple[bool, int], ...], depth: int, beta: float,
              weight: Tensor, bias: Tensor | None, stages=()) -> Tensor:
    """The projected MixProp on the CPU (``csrc/projected_mixprop/``): ``x [B, C, N, T]`` ->
    ``[B, C_out, N, T]`` without the ``(depth + 1) C`` expansion; see
    :mod:`sthfast.backends.projected_mixprop`."""
    _require()
    return projected_mixprop.project(torch.ops.sthfast.projected_mixprop_forward, x, structure, values, hops, depth,
                                     beta, weight, bias)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with a hashed mask (``csrc/dropout/``): the same distribution as
    :func:`sthfast.reference.dropout`, in one pass over ``x``, the mask a hash of a seed drawn from
    torch's generator (so ``torch.manual_seed`` and a resumed run's RNG state fix it) and of each
    entry's index; the backward recomputes it instead of keeping it."""
    _require()
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0
    seed = torch.randint(-(2 ** 63), 2 ** 63 - 1, (), dtype=torch.int64)
    return torch.ops.sthfast.hashed_dropout(x, p, seed)


def mixprop_tile_width(num_nodes: int, channels: int, steps: int, value_bytes: int = 4) -> int:
    """Values per row of the fused MixProp's tiles (``csrc/mixprop/mixprop.h``), for the memory model."""
    _require()
    return torch.ops.sthfast.mixprop_tile_width(num_nodes, channels, steps, value_bytes)


def _register_python_parts() -> None:
    _register_pool_patch()
    _register_dropout()
    fused_mixprop.register("sthfast::mixprop_forward", "sthfast::mixprop_backward")
    projected_mixprop.register("sthfast::projected_mixprop_forward", "sthfast::projected_mixprop_backward")


def _register_dropout() -> None:
    @torch.library.register_fake("sthfast::hashed_dropout")
    def _(x, p, seed):
        return x.new_empty(x.shape)                  # contiguous, as the kernel writes it

    def setup_context(ctx, inputs, output):
        ctx.p = inputs[1]
        ctx.save_for_backward(inputs[2])

    def backward(ctx, grad):                  # the same mask on the gradient (differentiable again)
        seed, = ctx.saved_tensors
        return torch.ops.sthfast.hashed_dropout(grad, ctx.p, seed), None, None

    torch.library.register_autograd("sthfast::hashed_dropout", backward, setup_context=setup_context)


def _register_pool_patch() -> None:
    @torch.library.register_fake("sthfast::pool_patch_forward")
    def _(x, patch_len, stride, normalize, eps, weight):
        b, t, _, f = x.shape
        return (x.new_empty(b, f, num_patches(t, patch_len, stride), patch_len), x.new_empty(b, f),
                x.new_empty(b, f), x.new_empty(b, f, t))

    @torch.library.register_fake("sthfast::pool_patch_backward")
    def _(grad_patches, grad_mean, grad_std, series, std, weight, num_nodes, stride, normalize):
        b, f, t = series.shape
        return series.new_empty(b, t, num_nodes, f)

    def setup_context(ctx, inputs, output):
        x, patch_len, stride, normalize, _, weight = inputs
        _, mean, std, series = output
        ctx.mark_non_differentiable(series)
        if not normalize:                                    # mean 0 and std 1 are constants then
            ctx.mark_non_differentiable(mean, std)
        ctx.save_for_backward(series, std, weight, x)
        ctx.num_nodes, ctx.patch_len, ctx.stride, ctx.normalize = x.shape[2], patch_len, stride, normalize
        ctx.eps = inputs[4]

    def backward(ctx, grad_patches, grad_mean, grad_std, _):
        series, std, weight, x = ctx.saved_tensors
        if torch.is_grad_enabled():          # create_graph: differentiate the reference twin
            from ..reference import pool_patch as reference_pool_patch  # noqa: PLC0415

            twin = lambda: reference_pool_patch(x, ctx.patch_len, ctx.stride, ctx.normalize, ctx.eps, weight)
            return (*fused_mixprop.recomputed_backward(twin, [x], [grad_patches, grad_mean, grad_std]),
                    None, None, None, None, None)
        b, f, t = series.shape
        zeros = series.new_zeros(b, f)
        if grad_patches is None:
            grad_patches = series.new_zeros(b, f, num_patches(t, ctx.patch_len, ctx.stride), ctx.patch_len)
        grad_x = torch.ops.sthfast.pool_patch_backward(
            grad_patches, zeros if grad_mean is None else grad_mean,
            zeros if grad_std is None else grad_std, series, std, weight, ctx.num_nodes, ctx.stride,
            ctx.normalize)
        return grad_x, None, None, None, None, None

    torch.library.register_autograd("sthfast::pool_patch_forward", backward,
                                    setup_context=setup_context)


def runs_on_cpu(device: torch.device) -> bool:
    return device.type == "cpu" and available()


def runs_on_cuda(device: torch.device) -> bool:
    return device.type == "cuda" and has_cuda_kernels()


def _implementations() -> tuple[Implementation, ...]:
    """pool + patch (``cpp`` on the CPU, ``cuda`` on GPUs) and the fused MixProps over sparse's
    structures (``cpp``), which ``auto`` takes on the CPU; the constructors are sparse's, there
    so that naming ``cpp`` works, never taken by ``auto`` (which resolves them on their own: the
    tiled search or FAISS, by size)."""
    fused = sparse.backend_ops(sparse.topk, fused=mixprop, projector=projected)
    return (Implementation("pool_patch", "cpp", pool_patch, auto_on=runs_on_cpu),
            Implementation("dropout", "cpp", dropout, auto_on=runs_on_cpu),
            Implementation("pool_patch", "cuda", pool_patch, auto_on=runs_on_cuda),
            *(Implementation(op, "cpp", fused[op], auto_on=runs_on_cpu)
              for op in ("hypergraph_mixprop", "graph_mixprop", "projected_hypergraph_mixprop",
                         "projected_graph_mixprop")),
            *(Implementation(op, "cpp", fused[op], auto_on=nowhere, runs_on=runs_on_cpu, same_as="sparse")
              for op in ("knn_hypergraph", "adaptive_graph", "static_graph")))


IMPLEMENTATIONS = _implementations()
