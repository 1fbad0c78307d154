"""The extension's fused MixProp (``csrc/mixprop/mixprop_cpu.cpp``, backend ``cpp``) beyond the
comparisons with the reference that ``test_fast_ops.py`` runs for every fast backend: its tiling
(ragged channel tiles, one step, steps wider than a tile), depth 0 and deep MixProps, block-diagonal
structures, both compiled copies (AVX2 and the baseline), thread counts, its registration as an op
(opcheck of forward and backward, gradcheck, second derivatives; torch.compile: test_fast_ops.py) and clear errors
for structures that do not fit."""

import os
import subprocess
import sys

import pytest
import torch

from sthfast import ops
from sthfast.backends import extension, sparse
from sthfast.backends.sparse import structure
from sthfast.backends.sparse.mixprop import HYPERGRAPH_HOPS

pytestmark = pytest.mark.skipif(not extension.available(),
                                reason=f"the C++ extension is not built: {extension.load()}")

def hypergraph_case(b, c, n, t, dtype=torch.float64, seed=0, dynamic=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((b, n, 5) if dynamic else (n, 5), generator=g, dtype=dtype, requires_grad=True)
    x = torch.randn(b, c, n, t, generator=g, dtype=dtype, requires_grad=True)
    return z, x


def outputs_and_grads(backend, z, x, k=3, depth=2, beta=0.05):
    h = ops.knn_hypergraph(z, k, backend="sparse")
    y = ops.hypergraph_mixprop(x, h, depth, beta, backend=backend)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=y.dtype)
    return (y, *torch.autograd.grad((y * w).sum(), (x, z), allow_unused=True, materialize_grads=True))


@pytest.mark.parametrize("b,c,n,t", [
    (1, 23, 2000, 12),  # float64 at 2,000 nodes: 48-wide tiles, 4 + 4 + 4 + 4 + 4 + 3 channels
    (3, 5, 9, 1),       # one step, few nodes: all channels in one tile
    (1, 3, 600, 500),   # steps wider than a tile: one channel per tile
    (1, 1, 1, 4),       # one node
])
@pytest.mark.parametrize("depth", [0, 1, 4])
def test_tiling_and_depth_equal_the_sparse_backend(b, c, n, t, depth):
    z, x = hypergraph_case(b, c, n, t)
    k = min(3, n)
    for got, want in zip(outputs_and_grads("cpp", z, x, k, depth), outputs_and_grads("sparse", z, x, k, depth)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_block_diagonal_structure_equals_the_sparse_backend():
    z, x = hypergraph_case(3, 4, 10, 6, dynamic=True)
    for got, want in zip(outputs_and_grads("cpp", z, x), outputs_and_grads("sparse", z, x)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads to compare with one")
def test_thread_count_changes_only_the_summation_order():
    z, x = hypergraph_case(4, 6, 30, 5, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs_and_grads("cpp", z, x)
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(outputs_and_grads("cpp", z, x), one):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


BASELINE_SCRIPT = """
import torch
from sthfast.backends import extension
from test_fused_mixprop import hypergraph_case, outputs_and_grads
z, x = hypergraph_case(2, 13, 17, 12, dtype=torch.float32)
got, want = outputs_and_grads("cpp", z, x), outputs_and_grads("sparse", z, x)
print(extension.mixprop_isa(), max(float((a - b).abs().max()) for a, b in zip(got, want)))
"""


@pytest.mark.skipif(extension.mixprop_isa() != "avx2", reason="only the baseline copy is compiled here")
def test_the_baseline_copy_agrees_too():
    """STHFAST_CPU_BASELINE=1 runs the copy compiled for plain x86-64 (what CPUs without AVX2 get)."""
    here = os.pathsep.join(filter(None, (os.path.dirname(__file__), os.environ.get("PYTHONPATH"))))
    done = subprocess.run([sys.executable, "-c", BASELINE_SCRIPT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STHFAST_CPU_BASELINE": "1", "PYTHONPATH": here})
    assert done.returncode == 0, done.stderr[-2000:]
    isa, error = done.stdout.split()
    assert isa == "baseline" and float(error) < 1e-5


def small_structure(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(6)])   # 6 x 6, 3 per row
    return structure.from_ell(idx, torch.rand(6, 3, generator=g, dtype=dtype), 6), g


@pytest.mark.parametrize("hops", [HYPERGRAPH_HOPS, ((False, 0),), ((True, 0),)])
def test_gradcheck_and_opcheck(hops):
    s, g = small_structure()
    vals = torch.rand(len({v for _, v in hops}), s.col.shape[0], generator=g, dtype=torch.float64,
                      requires_grad=True)
    x = torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, xx: extension.mixprop(xx, s, v, hops, 2, 0.1), (vals, x))
    index = (s.row_ptr, s.col, s.col_ptr, s.t_col, s.from_t)
    config = ([int(t) for t, _ in hops], [v for _, v in hops], -1, 2, 0.1)
    torch.library.opcheck(torch.ops.sthfast.mixprop_forward.default, (*index, vals, x, *config))
    out = extension.mixprop(x, s, vals, hops, 2, 0.1).detach()
    for need_vals in (True, False):
        torch.library.opcheck(torch.ops.sthfast.mixprop_backward.default,
                              (torch.randn_like(out), out, *index, vals.detach(), *config, need_vals))


def test_second_derivatives_through_x_equal_the_reference():
    """create_graph: the backward is the step-by-step twin's, so higher derivatives in x exist
    (the compiled backward alone would give none). Through the membership weights the sparse
    products have no second derivative: an error on both paths, not zeros."""
    z, x = hypergraph_case(2, 3, 20, 4)
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


def test_int32_indices_are_accepted():
    s, g = small_structure()
    narrow = s._replace(**{f: getattr(s, f).int() for f in ("row_ptr", "col", "col_ptr", "t_col", "from_t")})
    vals = torch.rand(2, s.col.shape[0], generator=g, dtype=torch.float64)
    x = torch.randn(1, 2, 6, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(extension.mixprop(x, narrow, vals, HYPERGRAPH_HOPS, 2, 0.1),
                               extension.mixprop(x, s, vals, HYPERGRAPH_HOPS, 2, 0.1))


def test_structures_that_do_not_fit_are_clear_errors():
    s, g = small_structure()
    vals = torch.rand(2, s.col.shape[0], dtype=torch.float64)
    x = torch.randn(1, 2, 6, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"vals must be contiguous \[V, 18\]"):
        extension.mixprop(x, s, vals[:, :5], HYPERGRAPH_HOPS, 2, 0.1)
    with pytest.raises(RuntimeError, match="reads value vector 2 of 2"):
        extension.mixprop(x, s, vals, ((False, 2),), 2, 0.1)
    with pytest.raises(RuntimeError, match="does not fit x"):
        extension.mixprop(torch.randn(1, 2, 5, 3, dtype=torch.float64), s, vals, HYPERGRAPH_HOPS, 2, 0.1)
    wide = structure.from_ell(torch.tensor([[0, 1], [2, 3]]), torch.ones(2, 2), 4)   # 2 x 4: no chain
    with pytest.raises(RuntimeError, match="map 4 nodes onto 2 rows"):
        extension.mixprop(torch.randn(1, 1, 4, 2), wide, torch.ones(1, 4), ((False, 0),), 1, 0.1)
    with pytest.raises(RuntimeError, match="one block per sample"):
        extension.mixprop(x, s._replace(blocks=3), vals, HYPERGRAPH_HOPS, 2, 0.1)
    with pytest.raises(RuntimeError, match="row pointers do not end at the 18 entries"):
        extension.mixprop(x, s._replace(row_ptr=s.row_ptr.clone().fill_(0)), vals, HYPERGRAPH_HOPS, 2, 0.1)


def test_auto_runs_the_fused_propagations_on_cpu():
    assert ops.resolve("hypergraph_mixprop", "auto", "cpu") == "cpp"
    assert ops.resolve("graph_mixprop", "auto", "cpu") == "cpp"
    # the structures stay sparse's (or FAISS's for big searches): auto never picks cpp's copies
    assert ops.resolve("knn_hypergraph", "auto", "cpu") == "sparse"
    assert isinstance(ops.knn_hypergraph(torch.randn(8, 3), 3, backend="cpp"), sparse.SparseRows)
