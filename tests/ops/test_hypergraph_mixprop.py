"""``hypergraph_mixprop``: the reference propagation by hand and its gradcheck; every fast path
(CPU and CUDA) against the reference, outputs and gradients in x and in the embeddings, over
shared, per-sample and binary hypergraphs, duplicates, k = N, one node, empty batches, half
precision, empty hyperedges; the kernels beneath (the sparse product, a custom op shared with
``graph_mixprop``, the extension's fused MixProp, ``cpp``: tiling, depth, blocks, threads, its
baseline copy, opcheck, second derivatives, malformed structures; and the Triton fused MixProp:
every column width, both chains, per-sample structures, malformed structures, opcheck); no N x N
buffer at N = 30,000."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from backend_cases import fast_paths, interpreted, needs_cpp, runnable, tolerance
from torch.autograd import gradcheck

from sthfast import ops, reference
from sthfast.backends import extension, sparse
from sthfast.backends.sparse import structure
from sthfast.backends.sparse.mixprop import HYPERGRAPH_HOPS
from sthfast.testing import HYPERGRAPH_CASES, features, mixprop_outputs_and_grads, points, weighted_sum

D = torch.float64


# --------------------------------------------------------------------------- the reference


def test_reference_propagation_by_hand():
    h = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, 1.0]], dtype=D)   # 3 nodes, 2 hyperedges
    x = torch.tensor([1.0, 2.0, 4.0], dtype=D).view(1, 1, 3, 1)
    e0 = (1 * 1 + 0.5 * 2) / 1.5
    e1 = (2 + 4) / 2
    expected = torch.tensor([e0, (0.5 * e0 + e1) / 1.5, e1], dtype=D).view(1, 1, 3, 1)
    torch.testing.assert_close(reference.hypergraph_propagate(x, h), expected)


def test_reference_operator_equals_its_propagation():
    x = features(2, 3, 5, 4, seed=20)
    h = torch.rand(5, 3, generator=torch.Generator().manual_seed(21), dtype=D)
    torch.testing.assert_close(reference.apply_operator(x, reference.hypergraph_operator(h)),
                               reference.hypergraph_propagate(x, h))


def test_reference_isolated_node_and_per_sample_hypergraphs():
    h = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=D)
    x = features(2, 3, 3, 4, seed=7)
    out = reference.hypergraph_propagate(x, h)
    assert out[:, :, 2].abs().sum() == 0 and torch.isfinite(out).all()
    outb = reference.hypergraph_propagate(x, torch.stack([h, torch.eye(3, dtype=D)]))
    torch.testing.assert_close(outb[0], out[0])
    torch.testing.assert_close(outb[1], x[1])


def test_reference_mixprop_recursion():
    x = features(2, 3, 4, 5, seed=11)
    out = reference.mixprop(x, lambda h: 2 * h, depth=2, beta=0.25)
    h1 = 0.25 * x + 0.75 * 2 * x
    h2 = 0.25 * x + 0.75 * 2 * h1
    torch.testing.assert_close(out, torch.cat([x, h1, h2], 1))
    assert torch.equal(reference.mixprop(x, lambda h: h, 0, 0.5), x)


def test_reference_gradcheck():
    g = torch.Generator().manual_seed(17)
    x = features(2, 2, 5, 3, seed=16, grad=True)
    h = torch.rand(5, 4, generator=g, dtype=D, requires_grad=True)
    hb = torch.rand(2, 5, 4, generator=g, dtype=D, requires_grad=True)
    assert gradcheck(reference.hypergraph_propagate, (x, h))
    assert gradcheck(reference.hypergraph_propagate, (x, hb))
    assert gradcheck(lambda t, w: reference.mixprop(t, lambda v: reference.hypergraph_propagate(v, w), 2, 0.1), (x, h))
    assert gradcheck(lambda t, w: reference.hypergraph_mixprop(t, w, 2, 0.1), (x, hb))


# --------------------------------------------------------------------------- fast paths


CASES = {**HYPERGRAPH_CASES, "300_nodes": (300, 3, None, False, 0), "300_nodes_dynamic": (300, 3, 3, False, 0)}


@pytest.mark.parametrize("backend,device", fast_paths("hypergraph_mixprop"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_paths_equal_reference(backend, device, dtype, case):
    n, k, batch, binary, dup = CASES[case]
    if n > 100 and interpreted(backend, device):
        pytest.skip("300 nodes take minutes in Triton's interpreter: compiled on CUDA only")
    z = points(n, 5 if n < 100 else 16, dtype, seed=n + k, duplicates=dup, batch=batch)
    x = features(batch or 2, 3, n, 4, dtype, seed=5)
    fast = mixprop_outputs_and_grads(backend, z, x, k, binary=binary, device=device)
    want = mixprop_outputs_and_grads("reference", z, x, k, binary=binary)
    assert len(fast) == len(want) == (2 if binary else 3)
    for got, expected in zip(fast, want):
        torch.testing.assert_close(got, expected, **tolerance(dtype, device))


@pytest.mark.parametrize("backend,device", fast_paths("hypergraph_mixprop"))
def test_empty_batch_through_shared_and_per_sample_hypergraphs(backend, device):
    z = points(6, 3, torch.float32).to(device)
    empty = torch.randn(0, 3, 6, 4, device=device)
    for h in (ops.knn_hypergraph(z, 2, backend=backend), ops.knn_hypergraph(z[None][:0], 2, backend=backend)):
        assert ops.hypergraph_mixprop(empty, h, 2, 0.05, backend=backend).shape == (0, 9, 6, 4)


@pytest.mark.parametrize("backend", ["reference"] + runnable("hypergraph_mixprop"))
def test_input_that_does_not_fit_the_hypergraph_is_a_clear_error(backend):
    z = points(6, 3, torch.float32, batch=2)
    dynamic = ops.knn_hypergraph(z, 2, backend=backend)
    shared = ops.knn_hypergraph(z[0], 2, backend=backend)
    with pytest.raises(ValueError, match=r"N = 6 nodes for a batch of 2"):
        ops.hypergraph_mixprop(torch.randn(1, 3, 6, 4), dynamic, 2, 0.05, backend=backend)
    with pytest.raises(ValueError, match=r"x \[2, 3, 5, 4\] must be \[B, C, N, T\] with N = 6"):
        ops.hypergraph_mixprop(torch.randn(2, 3, 5, 4), shared, 2, 0.05, backend=backend)


@pytest.mark.parametrize("backend,device", fast_paths("hypergraph_mixprop"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_and_matches_the_reference(backend, device, dtype):
    """Half inputs: propagation close to float32, and finite gradients even where hyperedges merge
    (degree-0 columns)."""
    z = points(12, 40, torch.float32, seed=2, duplicates=4).to(dtype)
    x = features(2, 3, 12, 4, dtype, seed=1)
    for k in (2, 3):
        y, gx, gz = mixprop_outputs_and_grads(backend, z, x, k, device=device)
        y32, gx32, _ = mixprop_outputs_and_grads("reference", z.float(), x.float(), k)
        assert y.dtype == dtype and torch.isfinite(gz).all() and torch.isfinite(gx).all()
        torch.testing.assert_close(y.float(), y32, rtol=0.05, atol=0.05)
        torch.testing.assert_close(gx.float(), gx32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("backend,device", fast_paths("hypergraph_mixprop"))
def test_empty_hyperedges_and_isolated_nodes_contribute_nothing(backend, device):
    # H^T: hyperedge 0 = {0, 2}, hyperedge 1 empty (all weights 0), hyperedge 2 = {2, 4}; nodes 1 and 3
    # are in no hyperedge, so they receive 0 (the reference's convention)
    row = torch.tensor([0, 0, 1, 1, 2, 2], device=device)
    col = torch.tensor([0, 2, 1, 3, 2, 4], device=device)
    val = torch.tensor([0.5, 1.0, 0.0, 0.0, 2.0, 0.25], dtype=D, device=device, requires_grad=True)
    h_t = structure.from_entries(row, col, val, 3, 5)
    x = features(2, 2, 5, 3, grad=True)
    xd = x.detach().to(device).requires_grad_()
    y = ops.hypergraph_mixprop(xd, h_t, 2, 0.1, backend=backend)
    dense = h_t.to_dense().T.detach().cpu().requires_grad_()
    want = reference.hypergraph_mixprop(x, dense, 2, 0.1)
    torch.testing.assert_close(y.cpu(), want)
    gx, gv = (t.cpu() for t in torch.autograd.grad(y.pow(2).sum(), (xd, val)))
    gx_ref, gdense = torch.autograd.grad(want.pow(2).sum(), (x, dense))
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gv, gdense.T[row.cpu(), col.cpu()])
    torch.testing.assert_close(y[:, 2:, [1, 3]].cpu(), 0.1 * x[:, :, [1, 3]].detach().repeat(1, 2, 1, 1))


# --------------------------------------------------------------------------- the sparse product


# the sparse product of the step-by-step propagation: only `sparse` multiplies step by step (cpp
# and triton fuse whole MixProps; faiss's MixProp is an alias of sparse's)
SPMM_PATHS = fast_paths("hypergraph_mixprop", exclude=("cpp", "triton"))


@pytest.mark.parametrize("backend,device", SPMM_PATHS)
def test_the_sparse_product_is_a_custom_op_that_passes_opcheck(backend, device):
    spmm = sparse.spmm
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(4)]).to(device)  # distinct per row
    val = torch.rand(4, 3, generator=g, dtype=D).to(device).requires_grad_()
    s = structure.from_ell(idx, val, 6)
    for transpose in (False, True):
        x = torch.randn(4 if transpose else 6, 5, generator=g, dtype=D).to(device).requires_grad_()
        torch.library.opcheck(spmm.op, (s.row_ptr, s.col, s.row, s.col_ptr, s.t_col, s.from_t, s.val, x, transpose))
        torch.autograd.gradcheck(lambda v, xx: spmm(s._replace(val=v), xx, transpose), (s.val, x))
    a, b = torch.randn(4, 5, dtype=D, device=device), torch.randn(6, 5, dtype=D, device=device)
    torch.library.opcheck(spmm.sampled_op, (s.row_ptr, s.row, s.col, a, b))


@pytest.mark.parametrize("backend,device", SPMM_PATHS)
def test_the_sparse_product_with_features_wider_than_one_block(backend, device):
    """F = 1,500 spans two 1,024-wide gather blocks and twelve 128-wide dot chunks."""
    g = torch.Generator().manual_seed(1)
    val = torch.rand(3, 2, generator=g, dtype=D).to(device).requires_grad_()
    s = structure.from_ell(torch.tensor([[0, 3], [1, 2], [2, 3]], device=device), val, 4)
    x = torch.randn(4, 1500, generator=g, dtype=D).to(device).requires_grad_()
    y = sparse.spmm(s, x)
    torch.testing.assert_close(y, s.to_dense() @ x)
    gv, gx = torch.autograd.grad(y.pow(2).sum(), (s.val, x))
    dense = s.to_dense().detach().requires_grad_()
    gd, gx_ref = torch.autograd.grad((dense @ x).pow(2).sum(), (dense, x))
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gv, gd[s.row, s.col])


# --------------------------------------------------------------------------- the fused MixProp (cpp)


@needs_cpp
@pytest.mark.parametrize("b,c,n,t", [
    (1, 23, 2000, 12),  # float64 at 2,000 nodes: 48-wide tiles, 4 + 4 + 4 + 4 + 4 + 3 channels
    (3, 5, 9, 1),       # one step, few nodes: all channels in one tile
    (1, 3, 600, 500),   # steps wider than a tile: one channel per tile
    (1, 1, 1, 4),       # one node
])
@pytest.mark.parametrize("depth", [0, 1, 4])
def test_fused_tiling_and_depth_equal_the_sparse_backend(b, c, n, t, depth):
    z, x = points(n, 5), features(b, c, n, t, seed=1)
    k = min(3, n)
    for got, want in zip(mixprop_outputs_and_grads("cpp", z, x, k, depth, structure_backend="sparse"),
                         mixprop_outputs_and_grads("sparse", z, x, k, depth)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@needs_cpp
def test_fused_block_diagonal_structure_equals_the_sparse_backend():
    z, x = points(10, 5, batch=3), features(3, 4, 10, 6, seed=1)
    for got, want in zip(mixprop_outputs_and_grads("cpp", z, x, structure_backend="sparse"),
                         mixprop_outputs_and_grads("sparse", z, x)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@needs_cpp
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads to compare with one")
def test_fused_thread_count_changes_only_the_summation_order():
    z, x = points(30, 5, torch.float32), features(4, 6, 30, 5, torch.float32, seed=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mixprop_outputs_and_grads("cpp", z, x, structure_backend="sparse")
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(mixprop_outputs_and_grads("cpp", z, x, structure_backend="sparse"), one):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


BASELINE_SCRIPT = """
import torch
from sthfast.backends import extension
from sthfast.testing import features, mixprop_outputs_and_grads as run, points
z, x = points(17, 5, torch.float32), features(2, 13, 17, 12, torch.float32, seed=1)
got, want = run("cpp", z, x, structure_backend="sparse"), run("sparse", z, x)
print(extension.mixprop_isa(), max(float((a - b).abs().max()) for a, b in zip(got, want)))
"""


@needs_cpp
@pytest.mark.skipif(extension.mixprop_isa() != "avx2", reason="only the baseline copy is compiled here")
def test_fused_baseline_copy_agrees_too():
    """STHFAST_CPU_BASELINE=1 runs the copy compiled for plain x86-64 (what CPUs without AVX2 get)."""
    done = subprocess.run([sys.executable, "-c", BASELINE_SCRIPT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STHFAST_CPU_BASELINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    isa, error = done.stdout.split()
    assert isa == "baseline" and float(error) < 1e-5


def small_structure():
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(6)])   # 6 x 6, 3 per row
    return structure.from_ell(idx, torch.rand(6, 3, generator=g, dtype=D), 6), g


@needs_cpp
@pytest.mark.parametrize("hops", [HYPERGRAPH_HOPS, ((False, 0),), ((True, 0),)])   # hypergraph, graph, graph^T
def test_fused_gradcheck_and_opcheck(hops):
    s, g = small_structure()
    vals = torch.rand(len({v for _, v in hops}), s.col.shape[0], generator=g, dtype=D, requires_grad=True)
    x = torch.randn(2, 3, 6, 4, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, xx: extension.mixprop(xx, s, v, hops, 2, 0.1), (vals, x))
    index = (s.row_ptr, s.col, s.col_ptr, s.t_col, s.from_t)
    config = ([int(t) for t, _ in hops], [v for _, v in hops], -1, 2, 0.1)
    torch.library.opcheck(torch.ops.sthfast.mixprop_forward.default, (*index, vals, x, *config))
    out = extension.mixprop(x, s, vals, hops, 2, 0.1).detach()
    for need_vals in (True, False):
        torch.library.opcheck(torch.ops.sthfast.mixprop_backward.default,
                              (torch.randn_like(out), out, *index, vals.detach(), *config, need_vals))


@needs_cpp
def test_fused_second_derivatives_through_x_equal_the_reference():
    """create_graph: the backward is the step-by-step twin's, so higher derivatives in x exist
    (the compiled backward alone would give none). Through the membership weights the sparse
    products have no second derivative: an error on both paths, not zeros."""
    z, x = points(20, 5).requires_grad_(), features(2, 3, 20, 4, seed=1, grad=True)
    hessians = {}
    for backend in ("cpp", "reference"):
        h = ops.knn_hypergraph(z.detach(), 3, backend="sparse" if backend == "cpp" else backend)
        y = ops.hypergraph_mixprop(x, h, 2, 0.05, backend=backend)
        (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        hessians[backend] = torch.autograd.grad(gx.pow(2).sum(), x)[0]
    torch.testing.assert_close(hessians["cpp"], hessians["reference"])
    for backend in ("cpp", "sparse"):
        y = ops.hypergraph_mixprop(x, ops.knn_hypergraph(z, 3, backend="sparse"), 2, 0.05, backend=backend)
        (gz,) = torch.autograd.grad(y.pow(2).sum(), z, create_graph=True)
        with pytest.raises(RuntimeError, match="no autograd formula"):
            torch.autograd.grad(gz.pow(2).sum(), z)


@needs_cpp
def test_fused_accepts_int32_indices():
    s, g = small_structure()
    narrow = s._replace(**{f: getattr(s, f).int() for f in ("row_ptr", "col", "col_ptr", "t_col", "from_t")})
    vals = torch.rand(2, s.col.shape[0], generator=g, dtype=D)
    x = torch.randn(1, 2, 6, 3, generator=g, dtype=D)
    torch.testing.assert_close(extension.mixprop(x, narrow, vals, HYPERGRAPH_HOPS, 2, 0.1),
                               extension.mixprop(x, s, vals, HYPERGRAPH_HOPS, 2, 0.1))


@needs_cpp
def test_fused_structures_that_do_not_fit_are_clear_errors():
    s, g = small_structure()
    vals = torch.rand(2, s.col.shape[0], dtype=D)
    x = torch.randn(1, 2, 6, 3, dtype=D)
    with pytest.raises(RuntimeError, match=r"vals must be contiguous \[V, 18\]"):
        extension.mixprop(x, s, vals[:, :5], HYPERGRAPH_HOPS, 2, 0.1)
    with pytest.raises(RuntimeError, match="reads value vector 2 of 2"):
        extension.mixprop(x, s, vals, ((False, 2),), 2, 0.1)
    with pytest.raises(RuntimeError, match="does not fit x"):
        extension.mixprop(torch.randn(1, 2, 5, 3, dtype=D), s, vals, HYPERGRAPH_HOPS, 2, 0.1)
    wide = structure.from_ell(torch.tensor([[0, 1], [2, 3]]), torch.ones(2, 2), 4)   # 2 x 4: no chain
    with pytest.raises(RuntimeError, match="map 4 nodes onto 2 rows"):
        extension.mixprop(torch.randn(1, 1, 4, 2), wide, torch.ones(1, 4), ((False, 0),), 1, 0.1)
    with pytest.raises(RuntimeError, match="one block per sample"):
        extension.mixprop(x, s._replace(blocks=3), vals, HYPERGRAPH_HOPS, 2, 0.1)
    with pytest.raises(RuntimeError, match="row pointers do not end at the 18 entries"):
        extension.mixprop(x, s._replace(row_ptr=s.row_ptr.clone().fill_(0)), vals, HYPERGRAPH_HOPS, 2, 0.1)


@needs_cpp
def test_auto_runs_the_fused_mixprops_on_cpu():
    assert ops.resolve("hypergraph_mixprop", "auto", "cpu") == "cpp"
    assert ops.resolve("graph_mixprop", "auto", "cpu") == "cpp"
    # the structures stay sparse's (or FAISS's for big searches): auto never picks cpp's copies
    assert ops.resolve("knn_hypergraph", "auto", "cpu") == "sparse"
    assert isinstance(ops.knn_hypergraph(torch.randn(8, 3), 3, backend="cpp"), sparse.SparseRows)


def test_without_the_extension_auto_falls_back_to_sparse(monkeypatch):
    monkeypatch.setattr(extension, "available", lambda: False)
    for op in ("hypergraph_mixprop", "graph_mixprop"):
        assert ops.resolve(op, "auto", "cpu") == "sparse"
    with pytest.raises(ValueError, match="backend 'cpp' cannot run hypergraph_mixprop on cpu"):
        ops.resolve("hypergraph_mixprop", "cpp", "cpu")


# --------------------------------------------------------------------------- the fused MixProp (triton)


TRITON_PATHS = fast_paths("hypergraph_mixprop", exclude=("cpp", "sparse"))


def _fused_against_steps(device, s, hops, x, depth=2, beta=0.1):
    """The Triton fused MixProp and sparse's step-by-step chain over the same structure and values:
    outputs and the gradients of x and of the value vectors, each as a list [fused, steps]."""
    from sthfast.backends.sparse.mixprop import by_steps
    from sthfast.backends.triton import mixprop as triton_mixprop

    g = torch.Generator().manual_seed(3)
    vals = torch.rand(len({v for _, v in hops}), s.col.shape[0], generator=g, dtype=x.dtype)
    results = []
    for name in ("fused", "steps"):
        xx = x.detach().to(device).requires_grad_()
        vv = vals.to(device).requires_grad_()
        sd = s._replace(**{f: getattr(s, f).to(device) for f in ("row_ptr", "col", "row", "col_ptr", "t_col",
                                                                  "from_t", "val")})
        y = (triton_mixprop.mixprop(xx, sd, vv, hops, depth, beta) if name == "fused"
             else by_steps(sparse.spmm, xx, sd, list(vv.unbind(0)), hops, depth, beta))
        grads = torch.autograd.grad(weighted_sum(y), (xx, vv), allow_unused=True, materialize_grads=True)
        results.append([t.detach().cpu() for t in (y, *grads)])
    return results


GRAPH, GRAPH_T = ((False, 0),), ((True, 0),)
# (hops, dtype, B, C, T): the launcher's 32 and 64 columns per program (float64: 64) under the
# interpreter's 4 multiprocessors, several column tiles per sample, both chains, both graph directions
WIDTH_CASES = {"hypergraph-32": (HYPERGRAPH_HOPS, torch.float32, 1, 1, 4),
               "hypergraph-64": (HYPERGRAPH_HOPS, torch.float32, 8, 16, 4),
               "hypergraph-float64": (HYPERGRAPH_HOPS, torch.float64, 1, 16, 4),
               "hypergraph-5-tiles": (HYPERGRAPH_HOPS, torch.float32, 2, 13, 12),   # channels split across tiles
               "graph-32": (GRAPH, torch.float32, 2, 3, 4), "graph-64": (GRAPH, torch.float32, 8, 16, 4),
               "graph_t-float64": (GRAPH_T, torch.float64, 4, 16, 4)}


@pytest.mark.parametrize("backend,device", TRITON_PATHS)
@pytest.mark.parametrize("case", list(WIDTH_CASES))
def test_triton_fused_mixprop_equals_the_steps_at_every_block_width(backend, device, case):
    """Both kernels (forward and backward) at each column width the launcher picks, with rows of
    unequal degree (S^T) and 35 rows (three row blocks)."""
    hops, dtype, b, c, t = WIDTH_CASES[case]
    g = torch.Generator().manual_seed(b + c)
    idx = torch.stack([torch.randperm(35, generator=g)[:3] for _ in range(35)])
    s = structure.from_ell(idx, torch.rand(35, 3, generator=g, dtype=dtype), 35)
    fused, steps = _fused_against_steps(device, s, hops, features(b, c, 35, t, dtype, seed=b))
    for got, want in zip(fused, steps):
        torch.testing.assert_close(got, want, **tolerance(dtype, device))


@pytest.mark.parametrize("backend,device", TRITON_PATHS)
def test_triton_fused_mixprop_per_sample_structure_and_depth_zero(backend, device):
    z = points(9, 4, batch=3)
    h = ops.knn_hypergraph(z, 3, backend="sparse")                   # block diagonal: one per sample
    x = features(3, 2, 9, 5, seed=2)
    for depth in (0, 3):
        fused, steps = _fused_against_steps(device, h, HYPERGRAPH_HOPS, x, depth=depth)
        for got, want in zip(fused, steps):
            torch.testing.assert_close(got, want, **tolerance(D, device))


@pytest.mark.parametrize("backend,device", TRITON_PATHS)
def test_triton_fused_mixprop_refuses_structures_that_do_not_fit(backend, device):
    from sthfast.backends.triton import mixprop as triton_mixprop

    s, _ = small_structure()
    vals = torch.rand(2, s.col.shape[0], dtype=D)
    x = torch.randn(1, 2, 6, 3, dtype=D)
    with pytest.raises(RuntimeError, match="reads value vector 2 of 2"):
        triton_mixprop.mixprop(x, s, vals, ((False, 2),), 2, 0.1)
    with pytest.raises(RuntimeError, match="does not fit x"):
        triton_mixprop.mixprop(torch.randn(1, 2, 5, 3, dtype=D), s, vals, HYPERGRAPH_HOPS, 2, 0.1)
    with pytest.raises(RuntimeError, match="one block per sample"):
        triton_mixprop.mixprop(x, s._replace(blocks=3), vals, HYPERGRAPH_HOPS, 2, 0.1)
    wide = structure.from_ell(torch.tensor([[0, 1], [2, 3]]), torch.ones(2, 2), 4)   # 2 x 4: no chain
    with pytest.raises(RuntimeError, match="do not chain"):
        triton_mixprop.mixprop(torch.randn(1, 1, 4, 2), wide, torch.ones(1, 4), ((False, 0),), 1, 0.1)


@pytest.mark.parametrize("backend,device", TRITON_PATHS)
def test_triton_fused_mixprop_passes_opcheck(backend, device):
    s, g = small_structure()
    index = [t.to(device) for t in (s.row_ptr, s.col, s.col_ptr, s.t_col, s.from_t)]
    vals = torch.rand(2, s.col.shape[0], generator=g, dtype=D).to(device).requires_grad_()
    x = torch.randn(2, 3, 6, 4, generator=g, dtype=D).to(device).requires_grad_()
    config = ([0, 1], [0, 1], -1, 2, 0.1)
    torch.library.opcheck(torch.ops.sthfast.mixprop_forward_triton.default, (*index, vals, x, *config),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


# --------------------------------------------------------------------------- memory at large N


NO_SQUARE_SCRIPT = """
import resource, sys, torch
from sthfast import ops
n, backend, headroom = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
z = torch.randn(2, n, 4, requires_grad=True)                      # dynamic: one hypergraph per sample
m1, m2 = torch.randn(n, 4, requires_grad=True), torch.randn(n, 4, requires_grad=True)
x = torch.randn(2, 2, n, 3, requires_grad=True)
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
h = ops.knn_hypergraph(z, 3, backend=backend)
a = ops.adaptive_graph(m1, m2, 3, 3.0, backend=backend)
y = ops.hypergraph_mixprop(x, h, 2, 0.05, backend=backend) + ops.graph_mixprop(x, a, 2, 0.05, backend=backend)
y.sum().backward()
assert z.grad.shape == z.shape and m1.grad.shape == m1.shape
print("ok")
"""


@pytest.mark.slow
def test_sparse_path_allocates_no_n_by_n_tensor(tmp_path):
    """N = 30,000 with 768 MiB (805 MB) of address space above what the inputs take (auto's peak
    measured 0.62 GB above it, with 2 threads as with 16): any N x N buffer, even of bytes
    (0.9 GB), fails to allocate; the reference, which needs them, is refused. (The graph ops run
    too: their structures share the same path.)"""
    n, headroom = 30_000, 3 << 28                                  # 805 MB: 0.62 GB measured + margin
    assert n * n > headroom
    script = tmp_path / "no_square.py"
    script.write_text(NO_SQUARE_SCRIPT)
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # glibc reserves 64 MiB of address space per
    run = lambda backend: subprocess.run(  # thread arena: a fixed count keeps the limit meaningful
        [sys.executable, str(script), str(n), backend, str(headroom)], capture_output=True,
        text=True, timeout=600, env=env)
    for backend in ("sparse", "auto"):                             # auto: the fused cpp MixProp where built
        done = run(backend)
        assert done.returncode == 0 and done.stdout.strip() == "ok", (backend, done.stderr[-2000:])
    refused = run("reference")                                     # the check can fail
    assert refused.returncode != 0 and "alloc" in refused.stderr.lower(), refused.stderr[-2000:]
