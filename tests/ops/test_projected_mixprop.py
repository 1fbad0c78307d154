"""The projected MixProps (``projected_hypergraph_mixprop``, ``projected_graph_mixprop``): the MixProp
followed by its 1x1 projection, fused by Horner's rule on ``cpp`` (C++) and ``triton`` (Triton).
Every fast path against the reference (outputs and gradients in x, the structure's inputs, the
weight and the bias) over the hypergraph (adaptive, binary, per sample) and the graph (both
directions), depths 0 to 3, channel counts in and out that differ, time blocks (large N);
bfloat16; the Horner coefficients by hand; second derivatives; opcheck; the Triton kernels'
tiles; bad shapes."""

from __future__ import annotations

import pytest
import torch
from backend_cases import fast_paths, interpreted, needs_cpp, tolerance
from torch.autograd import gradcheck, gradgradcheck

from sthfast import ops, reference
from sthfast.backends import projected_mixprop
from sthfast.backends.sparse.mixprop import HYPERGRAPH_HOPS, hypergraph_values
from sthfast.testing import features, points, weighted_sum

D = torch.float64


def _normal(*shape: int, dtype: torch.dtype = D, seed: int = 0, grad: bool = False) -> torch.Tensor:
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / 3
    return t.to(dtype).requires_grad_(grad)


def test_horner_coefficients_by_hand():
    w = torch.arange(12.0).view(2, 6)                     # C_out 2, C 2, depth 2: blocks W0 W1 W2
    k = projected_mixprop.horner_coefficients(w, 2, 0.25)
    blocks = [w[:, 0:2], w[:, 2:4], w[:, 4:6]]
    torch.testing.assert_close(k[2], blocks[2])
    torch.testing.assert_close(k[1], blocks[1] + 0.25 * blocks[2])
    torch.testing.assert_close(k[0], blocks[0] + 0.25 * (blocks[1] + blocks[2]))


def _structure_and_run(kind: str, name: str, z: torch.Tensor, x: torch.Tensor, depth: int, w, b):
    """The structure of ``kind`` built on ``name`` from ``z`` and the projected MixProp over it."""
    k = min(3, z.shape[-2])
    if kind in ("hypergraph", "binary", "per-sample"):
        h = ops.knn_hypergraph(z, k, binary=kind == "binary", backend=name)
        return ops.projected_hypergraph_mixprop(x, h, depth, 0.05, w, b, backend=name)
    g = ops.adaptive_graph(z, z.flip(0), k, 3.0, backend=name)
    return ops.projected_graph_mixprop(x, g, depth, 0.05, w, b, transpose=kind == "graph-transposed", backend=name)


CASES = {  # (structure, B, C, C_out, N, T, depth)
    "hypergraph": ("hypergraph", 2, 3, 4, 13, 5, 2),
    "binary": ("binary", 2, 4, 4, 9, 3, 1),
    "per-sample": ("per-sample", 3, 2, 5, 11, 4, 2),
    "graph": ("graph", 2, 3, 2, 12, 6, 3),
    "graph-transposed": ("graph-transposed", 1, 5, 3, 10, 2, 2),
    "depth-0": ("hypergraph", 2, 3, 4, 8, 3, 0),
    "one-node": ("graph", 2, 2, 3, 1, 4, 2),
}


@pytest.mark.parametrize("backend,device", fast_paths("projected_hypergraph_mixprop"))
@pytest.mark.parametrize("dtype", [D, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_equals_the_mixprop_then_the_projection(backend, device, dtype, case):
    kind, b, c, c_out, n, t, depth = CASES[case]
    if interpreted(backend, device) and dtype == D and case != "hypergraph":
        pytest.skip("the Triton interpreter is slow: one float64 case")
    z0 = points(n, 4, dtype, seed=n, batch=b if kind == "per-sample" else None)
    inputs = (z0, features(b, c, n, t, dtype, seed=c * n), _normal(c_out, c * (depth + 1), dtype=dtype, seed=7),
              _normal(c_out, dtype=dtype, seed=8))
    outs = {}
    for name, dev in ((backend, device), ("reference", "cpu")):
        z, x, w, bias = (v.detach().to(dev).requires_grad_() for v in inputs)
        y = _structure_and_run(kind, name, z, x, depth, w, bias)
        wanted = [x, w, bias] + ([z] if kind != "binary" and depth > 0 else [])
        outs[name] = [v.detach().cpu() for v in (y, *torch.autograd.grad(weighted_sum(y), wanted))]
    assert outs["reference"][0].shape == (b, c_out, n, t)
    for got, want in zip(outs[backend], outs["reference"]):
        torch.testing.assert_close(got, want, **tolerance(dtype, device))


@needs_cpp
def test_time_blocks_of_a_large_network_equal_the_reference():
    """At N = 3000 and 16 channels a block holds 2 of the 7 steps (csrc: kStepTileBytes), so the
    kernel splits every sample into 4 blocks, the last narrower (float32 against float64: the
    weight's gradient entries, of order 1, sum 42,000 products of order 1, so float32 rounding
    leaves about 1e-3 of absolute error)."""
    z = points(3000, 4, seed=1)
    inputs = (features(2, 16, 3000, 7, seed=2), _normal(16, 48, seed=3), _normal(16, seed=4))
    outs = {}
    for name, dtype in (("cpp", torch.float32), ("sparse", D)):
        x, w, bias = (v.to(dtype).requires_grad_() for v in inputs)
        h = ops.knn_hypergraph(z.to(dtype), 3, backend=name)
        y = ops.projected_hypergraph_mixprop(x, h, 2, 0.05, w, bias, backend=name)
        outs[name] = [v.double() for v in (y, *torch.autograd.grad(weighted_sum(y), (x, w, bias)))]
    for got, want in zip(outs["cpp"], outs["sparse"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("backend,device", fast_paths("projected_hypergraph_mixprop", exclude=("sparse",)))
def test_bfloat16_inputs_are_computed_in_float(backend, device):
    z = points(20, 4, torch.float32, seed=5).to(device)
    x = features(2, 8, 20, 6, torch.float32, seed=6).to(device)
    w = _normal(8, 24, dtype=torch.float32, seed=7).to(device)
    h = ops.knn_hypergraph(z, 3, backend=backend)
    results = {}
    for dtype in (torch.bfloat16, torch.float32):
        xx, ww = x.bfloat16().to(dtype).requires_grad_(), w.clone().requires_grad_()
        y = ops.projected_hypergraph_mixprop(xx, h, 2, 0.05, ww, backend=backend)
        assert y.dtype == dtype
        results[dtype] = [y.float(), *(g.float() for g in torch.autograd.grad(weighted_sum(y.float()), (xx, ww)))]
    for got, want in zip(results[torch.bfloat16], results[torch.float32]):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


KERNEL_PAIRS = fast_paths("projected_hypergraph_mixprop", exclude=("sparse",))     # cpp and triton


def _forward_op(backend: str):
    """The fused forward op of ``backend``'s kernel pair."""
    if backend == "triton":
        import sthfast.backends.triton.projected_mixprop  # noqa: F401 (defines the op; imports Triton)

        return torch.ops.sthfast.projected_mixprop_forward_triton.default
    return torch.ops.sthfast.projected_mixprop_forward.default


def _on(s, device: str):
    return s._replace(**{f: getattr(s, f).to(device) for f in s._fields if isinstance(getattr(s, f), torch.Tensor)})


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
def test_gradcheck_and_second_derivatives(backend, device):
    """First derivatives of each kernel pair in float64 (in x, the hop values and the coefficients),
    and (create_graph) second derivatives through its torch twin in x and the coefficients (the
    sparse products have no second derivative in their values)."""
    s = _on(ops.knn_hypergraph(points(6, 3, seed=9), 3, backend="sparse"), device)
    vals = torch.stack(hypergraph_values(s, 0.1)).detach().requires_grad_()
    x = features(2, 2, 6, 3, seed=10).to(device).requires_grad_()
    k = _normal(3, 3, 2, seed=11).to(device).requires_grad_()
    run = lambda xx, vv, kk: projected_mixprop.call(_forward_op(backend), xx, s, vv, HYPERGRAPH_HOPS, kk)
    if interpreted(backend, device):      # the interpreter is slow: random projections of the Jacobian
        assert gradcheck(run, (x, vals, k), fast_mode=True)
        return                            # (the second derivatives run the torch twin both pairs share)
    assert gradcheck(run, (x, vals, k))
    assert gradgradcheck(lambda xx, kk: run(xx, vals.detach(), kk), (x, k))


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
def test_opcheck(backend, device):
    s = _on(ops.knn_hypergraph(points(7, 3, torch.float32, seed=12), 3, backend="sparse"), device)
    vals = torch.stack(hypergraph_values(s, 0.1)).detach().requires_grad_()
    x = features(2, 3, 7, 4, torch.float32, seed=13).to(device).requires_grad_()
    k = _normal(3, 2, 3, dtype=torch.float32, seed=14).to(device).requires_grad_()
    index = [t.long().contiguous() for t in (s.row_ptr, s.col, s.col_ptr, s.t_col, s.from_t)]
    for xx in (x, x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()):  # fakes' strides too
        torch.library.opcheck(_forward_op(backend), (*index, vals, xx, k, [0, 1], [0, 1], -1))


# (structure, dtype, C, C_out, N, T): the Triton tiles at the model's width (32 channels: 2 steps a
# program); fewer output than input channels on both chains (forward tiles of 8 channels, 8 steps;
# backward tiles of 16 channels, 4 steps); 70 output channels (128 columns, 1 step); 35 rows (three
# row blocks) and several step blocks per sample; a per-sample structure over two step blocks with a
# frozen weight (no coefficient gradient)
TILE_CASES = {"model-width": ("hypergraph", torch.float32, 32, 32, 35, 5),
              "narrow-graph": ("graph", torch.float32, 16, 8, 35, 9),
              "narrow-hypergraph": ("hypergraph", torch.float32, 16, 8, 35, 9),
              "wide-out": ("graph-transposed", torch.float32, 5, 70, 20, 3),
              "frozen-weight-float64": ("per-sample", D, 4, 6, 18, 11)}


@pytest.mark.parametrize("backend,device", fast_paths("projected_hypergraph_mixprop", exclude=("sparse", "cpp")))
@pytest.mark.parametrize("case", list(TILE_CASES))
def test_triton_tiles_equal_the_reference(backend, device, case):
    kind, dtype, c, c_out, n, t = TILE_CASES[case]
    b, frozen = (3 if kind == "per-sample" else 2), case.startswith("frozen")
    z0 = points(n, 4, dtype, seed=n, batch=b if kind == "per-sample" else None)
    inputs = (z0, features(b, c, n, t, dtype, seed=c), _normal(c_out, c * 3, dtype=dtype, seed=7),
              _normal(c_out, dtype=dtype, seed=8))
    outs = {}
    for name, dev in ((backend, device), ("reference", "cpu")):
        z, x, w, bias = (v.detach().to(dev) for v in inputs)
        wanted = [v.requires_grad_() for v in ((z, x, bias) if frozen else (z, x, w, bias))]
        y = _structure_and_run(kind, name, z, x, 2, w, bias)
        outs[name] = [v.detach().cpu() for v in (y, *torch.autograd.grad(weighted_sum(y), wanted))]
    for got, want in zip(outs[backend], outs["reference"]):
        torch.testing.assert_close(got, want, **tolerance(dtype, device))


@needs_cpp
def test_second_derivatives_of_bfloat16_inputs_with_float_weights():
    """create_graph runs the torch twin, which must cast the float32 coefficients to x's dtype."""
    h = ops.knn_hypergraph(points(8, 3, torch.float32, seed=15), 3, backend="cpp")
    x = features(2, 3, 8, 4, torch.float32, seed=16).bfloat16().requires_grad_()
    y = ops.projected_hypergraph_mixprop(x, h, 2, 0.05, _normal(4, 9, dtype=torch.float32, seed=17), backend="cpp")
    grad, = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
    assert grad.dtype == torch.bfloat16 and grad.requires_grad and torch.isfinite(grad.float()).all()


def test_shapes_that_do_not_fit_are_clear_errors():
    z, x = points(9, 4, torch.float32, seed=0), features(2, 3, 9, 5, torch.float32, seed=1)
    h = ops.knn_hypergraph(z, 3)
    with pytest.raises(ValueError, match=r"weight \[4, 8\] must be \[C_out, C \(depth \+ 1\)\] = \[C_out, 9\]"):
        ops.projected_hypergraph_mixprop(x, h, 2, 0.05, torch.zeros(4, 8))
    with pytest.raises(ValueError, match=r"bias \[3\] must be \[C_out\] = \[4\]"):
        ops.projected_graph_mixprop(x, ops.adaptive_graph(z, z, 2, 3.0), 2, 0.05, torch.zeros(4, 9), torch.zeros(3))
    with pytest.raises(ValueError, match=r"x \[2, 3, 8, 5\] must be \[B, C, N, T\] with N = 9"):
        ops.projected_hypergraph_mixprop(x[:, :, :8], h, 2, 0.05, torch.zeros(4, 9))


def test_reference_is_the_mixprop_then_the_projection():
    z, x = points(7, 3, seed=2), features(2, 3, 7, 4, seed=3)
    w, b = _normal(5, 9, seed=4), _normal(5, seed=5)
    h = reference.knn_hypergraph(z, 3)
    want = torch.einsum("ok,bknt->bont", w, reference.hypergraph_mixprop(x, h, 2, 0.1)) + b.view(1, -1, 1, 1)
    torch.testing.assert_close(reference.projected_hypergraph_mixprop(x, h, 2, 0.1, w, b), want)


@needs_cpp
@pytest.mark.parametrize("steps", [5, 1])
def test_channels_last_inputs_give_channels_last_outputs_and_the_same_values(steps):
    """In torch's channels-last format ([B, N, T, C] storage) the kernel reads its tiles as runs
    of x (no transposition) and writes the output, and the gradient of x, in that format."""
    z = points(12, 4, seed=6)
    inputs = (features(2, 3, 12, steps, seed=7), _normal(4, 9, seed=8), _normal(4, seed=9))
    outs = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        x, w, bias = (v.detach().clone().requires_grad_() for v in inputs)
        y = ops.projected_hypergraph_mixprop(x.contiguous(memory_format=fmt), ops.knn_hypergraph(z, 3, backend="cpp"),
                                             2, 0.05, w, bias, backend="cpp")
        grads = torch.autograd.grad(weighted_sum(y), (x, w, bias))
        if fmt == torch.channels_last and steps > 1:
            assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        outs[fmt] = [y, *grads]
    for got, want in zip(outs[torch.channels_last], outs[torch.contiguous_format]):
        torch.testing.assert_close(got, want, **tolerance(D, "cpu"))


@pytest.mark.parametrize("backend,device", fast_paths("projected_hypergraph_mixprop", exclude=("sparse", "cpp")))
def test_triton_kernels_refuse_inputs_that_do_not_fit(backend, device):
    from sthfast.backends.triton import projected_mixprop as triton_projected

    s = _on(ops.knn_hypergraph(points(7, 3, torch.float32, seed=12), 3, backend="sparse"), device)
    index = [t.long().contiguous() for t in (s.row_ptr, s.col, s.col_ptr, s.t_col, s.from_t)]
    vals = torch.stack(hypergraph_values(s, 0.1))
    x = features(2, 3, 7, 4, torch.float32, seed=13).to(device)
    k = _normal(3, 2, 3, dtype=torch.float32, seed=14).to(device)
    hops = ([0, 1], [0, 1], -1)
    with pytest.raises(RuntimeError, match=r"x must be \[B, C, N, T\], got \[3, 7, 4\]"):
        triton_projected.forward(*index, vals, x[0], k, *hops)
    with pytest.raises(RuntimeError, match=r"coeffs must be \[depth \+ 1, C_out, 3\], got \[3, 2, 2\]"):
        triton_projected.forward(*index, vals, x, k[:, :, :2], *hops)
    with pytest.raises(RuntimeError, match=r"grad must be \[B, C_out, N, T\] = \[2, 2, 7, 4\], got \[2, 3, 7, 4\]"):
        triton_projected.backward(x, x, *index, vals, k, *hops, True, True)
