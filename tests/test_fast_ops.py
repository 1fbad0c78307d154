"""Every fast backend against the reference: outputs and gradients, fresh random inputs, awkward
shapes, duplicate points and exact ties. Backends: those of ``fast_backends.py`` (``sparse``
always; ``cpp``, ``faiss`` and ``triton`` where they can run)."""

from __future__ import annotations

import pytest
import torch

from sthfast import ops, reference
from sthfast.backends import sparse
from sthfast.backends.sparse import structure, topk_neighbors

from fast_backends import CPP, FAST_BACKENDS, MODEL_BACKENDS, SPMM_BACKENDS

DTYPES = [torch.float64, torch.float32]


def tolerance(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)


def as_dense_incidence(hypergraph) -> torch.Tensor:
    """``H`` (``[..., N, N]``) from a backend's ``H^T`` structure."""
    h_t = hypergraph.to_dense()
    if hypergraph.blocks is None:
        return h_t.T
    b, n = hypergraph.blocks, h_t.shape[0] // hypergraph.blocks
    return torch.stack([h_t[i * n:(i + 1) * n, i * n:(i + 1) * n].T for i in range(b)])


def points(n, d, dtype, seed, duplicates=0, batch=None):
    g = torch.Generator().manual_seed(seed)
    shape = (n, d) if batch is None else (batch, n, d)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    if duplicates:  # the first `duplicates` points repeated at the end, in scrambled order
        z[..., n - duplicates:, :] = z[..., :duplicates, :].flip(-2)
    return z.to(dtype)


# --------------------------------------------------------------------------- top-k neighbours


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("n,m,k,d", [(1, 1, 1, 6), (13, 29, 5, 6), (29, 13, 13, 40), (37, 37, 3, 80),
                                     (64, 50, 1, 17)])
def test_topk_equals_reference(backend, dtype, metric, n, m, k, d):
    q, key = points(n, d, dtype, seed=n * m), points(m, d, dtype, seed=n + m)
    got = ops.topk_neighbors(q, key, k, metric, backend=backend)
    assert got.dtype == torch.int64 and got.shape == (n, k)
    assert torch.equal(got, reference.topk_neighbors(q, key, k, metric))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_topk_exact_ties_go_to_the_smaller_index(backend, metric):
    # integer grid points: every distance / inner product is exact, so ties are real ties;
    # 9 copies of some points (more than the coarse pass's margin) force the exact fallback
    g = torch.Generator().manual_seed(3)
    key = torch.randint(-2, 3, (40, 3), generator=g).float()
    key[20:29] = key[5]
    q = torch.randint(-2, 3, (17, 3), generator=g).float()
    for k in (1, 4, 12, 40):
        got = ops.topk_neighbors(q, key, k, metric, backend=backend)
        assert torch.equal(got, reference.topk_neighbors(q, key, k, metric)), k


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_topk_batched_with_duplicates_and_empty_batch(backend):
    z = points(23, 4, torch.float32, seed=1, duplicates=8, batch=3)
    got = ops.topk_neighbors(z, z, 5, backend=backend)
    assert torch.equal(got, reference.topk_neighbors(z, z, 5))
    empty = z[:0]
    assert ops.topk_neighbors(empty, empty, 2, backend=backend).shape == (0, 23, 2)


def test_sparse_topk_over_many_tiles_and_chunks(monkeypatch):
    monkeypatch.setattr(topk_neighbors, "TILE_ELEMENTS", 64)   # 16-key tiles, 4-query chunks
    z = points(101, 5, torch.float64, seed=7, duplicates=30)
    for k in (1, 3, 9):
        assert torch.equal(topk_neighbors.topk_neighbors(z, z, k, "l2", True),
                           reference.topk_neighbors(z, z, k, self_first=True))
        assert torch.equal(topk_neighbors.topk_neighbors(z, z.flip(0), k, "ip"),
                           reference.topk_neighbors(z, z.flip(0), k, "ip"))


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_topk_bad_arguments_are_clear_errors(backend):
    z = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k=6 neighbours asked for among 5 points"):
        ops.topk_neighbors(z, z, 6, backend=backend)
    with pytest.raises(ValueError, match="k=0"):
        ops.knn_hypergraph(z, 0, backend=backend)
    with pytest.raises(ValueError, match="does not match query"):
        ops.topk_neighbors(z, torch.randn(5, 4), 2, backend=backend)
    with pytest.raises(ValueError, match="metric='cosine'"):
        ops.topk_neighbors(z, z, 2, "cosine", backend=backend)
    with pytest.raises(ValueError, match=r"must be \[N, d\] or \[B, N, d\]"):
        ops.knn_hypergraph(torch.randn(5), 1, backend=backend)


# --------------------------------------------------------------------------- hypergraph


def mixprop_outputs_and_grads(backend, z, x, k, binary=False, depth=2, beta=0.05):
    z = z.detach().requires_grad_(not binary)
    x = x.detach().requires_grad_()
    h = ops.knn_hypergraph(z, k, binary=binary, temperature=0.7, backend=backend)
    y = ops.hypergraph_mixprop(x, h, depth, beta, backend=backend)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)  # a non-symmetric loss
    (y * weights).sum().backward()
    return h, y, x.grad, z.grad


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("batch", [None, 2])
def test_per_hyperedge_temperatures_equal_reference_with_gradients(backend, batch):
    """A learned temperature per hyperedge (hyper_order='adaptive'): incidence, MixProp output and
    the gradients in z, x and the temperatures equal the reference's; equal temperatures give the
    scalar temperature's hypergraph."""
    n, k = 17, 4
    z0 = points(n, 5, torch.float64, seed=3, batch=batch)
    x0 = torch.randn(2, 3, n, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t0 = torch.rand(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 + 0.05

    def run(name):
        z, x, t = (v.detach().clone().requires_grad_() for v in (z0, x0, t0))
        h = ops.knn_hypergraph(z, k, temperature=t, backend=name)
        y = ops.hypergraph_mixprop(x, h, 2, 0.05, backend=name)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        return (h if name == "reference" else as_dense_incidence(h)), y, z.grad, x.grad, t.grad

    for fast, ref in zip(run(backend), run("reference")):
        torch.testing.assert_close(fast, ref, **tolerance(torch.float64))
    same = ops.knn_hypergraph(z0, k, temperature=torch.full((n,), 0.7, dtype=torch.float64), backend=backend)
    torch.testing.assert_close(as_dense_incidence(same),
                               as_dense_incidence(ops.knn_hypergraph(z0, k, temperature=0.7, backend=backend)))
    with pytest.raises(ValueError, match=r"temperature \[3\] must be a number or \[N\] = \[17\]"):
        ops.knn_hypergraph(z0, k, temperature=torch.ones(3), backend=backend)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["shared", "dynamic", "binary", "duplicates", "k_equals_n", "one_node"])
def test_hypergraph_mixprop_equals_reference(backend, dtype, case):
    n, k, batch, binary, dup = 19, 3, None, False, 0
    if case == "dynamic":
        batch = 2
    elif case == "binary":
        binary = True
    elif case == "duplicates":
        dup = 9
    elif case == "k_equals_n":
        n, k = 7, 7
    elif case == "one_node":
        n, k = 1, 1
    z = points(n, 5, dtype, seed=n + k, duplicates=dup, batch=batch)
    x = torch.randn(2, 3, n, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    h_fast, *fast = mixprop_outputs_and_grads(backend, z, x, k, binary)
    h_ref, *ref = mixprop_outputs_and_grads("reference", z, x, k, binary)
    torch.testing.assert_close(as_dense_incidence(h_fast), h_ref, **tolerance(dtype))
    for got, want in zip(fast, ref):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, **tolerance(dtype))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_empty_batch_through_every_structure(backend):
    z = points(6, 3, torch.float32, seed=0)
    empty = torch.randn(0, 3, 6, 4)
    shared = ops.knn_hypergraph(z, 2, backend=backend)
    dynamic = ops.knn_hypergraph(z[None][:0], 2, backend=backend)
    graph = ops.adaptive_graph(z, z.flip(0), 2, 3.0, backend=backend)
    for h in (shared, dynamic):
        assert ops.hypergraph_mixprop(empty, h, 2, 0.05, backend=backend).shape == (0, 9, 6, 4)
    assert ops.graph_mixprop(empty, graph, 2, 0.05, backend=backend).shape == (0, 9, 6, 4)


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_input_that_does_not_fit_the_structure_is_a_clear_error(backend):
    z = points(6, 3, torch.float32, seed=0, batch=2)
    dynamic = ops.knn_hypergraph(z, 2, backend=backend)
    shared = ops.knn_hypergraph(z[0], 2, backend=backend)
    with pytest.raises(ValueError, match=r"N = 6 nodes for a batch of 2"):
        ops.hypergraph_mixprop(torch.randn(1, 3, 6, 4), dynamic, 2, 0.05, backend=backend)
    with pytest.raises(ValueError, match=r"x \[2, 3, 5, 4\] must be \[B, C, N, T\] with N = 6"):
        ops.hypergraph_mixprop(torch.randn(2, 3, 5, 4), shared, 2, 0.05, backend=backend)
    with pytest.raises(ValueError, match="must be"):
        ops.graph_mixprop(torch.randn(3, 6, 4), ops.adaptive_graph(z[0], z[1], 2, 1.0, backend=backend),
                          2, 0.05, backend=backend)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_and_matches_the_reference(backend, dtype):
    """Half inputs: selection in float32 (the reference's neighbours), propagation close to
    float32, and finite gradients even where hyperedges merge (degree-0 columns)."""
    z = points(12, 40, torch.float32, seed=2, duplicates=4).to(dtype)
    x = torch.randn(2, 3, 12, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.equal(ops.topk_neighbors(z, z, 4, backend=backend),
                       ops.topk_neighbors(z.float(), z.float(), 4, backend="reference"))
    for k in (2, 3):
        _, y, gx, gz = mixprop_outputs_and_grads(backend, z, x, k)
        _, y32, gx32, gz32 = mixprop_outputs_and_grads("reference", z.float(), x.float(), k)
        assert y.dtype == dtype and torch.isfinite(gz).all() and torch.isfinite(gx).all()
        torch.testing.assert_close(y.float(), y32, rtol=0.05, atol=0.05)
        torch.testing.assert_close(gx.float(), gx32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_empty_hyperedges_and_isolated_nodes_contribute_nothing(backend):
    # H^T: hyperedge 0 = {0, 2}, hyperedge 1 empty (all weights 0), hyperedge 2 = {2, 4}; nodes 1 and 3
    # are in no hyperedge, so they receive 0 (the reference's convention)
    row = torch.tensor([0, 0, 1, 1, 2, 2])
    col = torch.tensor([0, 2, 1, 3, 2, 4])
    val = torch.tensor([0.5, 1.0, 0.0, 0.0, 2.0, 0.25], dtype=torch.float64, requires_grad=True)
    h_t = structure.from_entries(row, col, val, 3, 5)
    x = torch.randn(2, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    y = ops.hypergraph_mixprop(x, h_t, 2, 0.1, backend=backend)
    dense = h_t.to_dense().T.detach().requires_grad_()
    want = reference.mixprop(x, lambda v: reference.hypergraph_propagate(v, dense), 2, 0.1)
    torch.testing.assert_close(y, want)
    gx, gv = torch.autograd.grad(y.pow(2).sum(), (x, val))
    gx_ref, gdense = torch.autograd.grad(want.pow(2).sum(), (x, dense))
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gv, gdense.T[row, col])
    torch.testing.assert_close(y[:, 2:, [1, 3]], 0.1 * x[:, :, [1, 3]].repeat(1, 2, 1, 1))


# --------------------------------------------------------------------------- graphs


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("n,k", [(17, 4), (5, 5), (1, 1)])
def test_adaptive_graph_mixprop_equals_reference(backend, dtype, transpose, n, k):
    g = torch.Generator().manual_seed(n * k)
    m = [torch.randn(n, 6, generator=g, dtype=torch.float64).to(dtype) for _ in range(2)]
    x = torch.randn(2, 3, n, 4, generator=g, dtype=torch.float64).to(dtype)
    outs = {}
    for name in (backend, "reference"):
        m1, m2, xx = (t.detach().requires_grad_() for t in (*m, x))
        a = ops.adaptive_graph(m1, m2, k, 3.0, backend=name)
        y = ops.graph_mixprop(xx, a, 2, 0.05, transpose=transpose, backend=name)
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum().backward()
        dense = a if name == "reference" else a.to_dense() - torch.eye(n, dtype=dtype)
        outs[name] = (dense, y, xx.grad, m1.grad, m2.grad)
    for got, want in zip(outs[backend], outs["reference"]):
        torch.testing.assert_close(got, want, **tolerance(dtype))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_static_graph_mixprop_equals_reference(backend):
    g = torch.Generator().manual_seed(0)
    adj = torch.rand(9, 9, generator=g, dtype=torch.float64) * (torch.rand(9, 9, generator=g) < 0.3)
    adj[4] = 0                                                       # a node that reads nobody
    x = torch.randn(2, 3, 9, 5, generator=g, dtype=torch.float64)
    for transpose in (False, True):
        got = ops.graph_mixprop(x, ops.static_graph(adj, backend=backend), 3, 0.2, transpose,
                                backend=backend)
        want = ops.graph_mixprop(x, ops.static_graph(adj, backend="reference"), 3, 0.2, transpose,
                                 backend="reference")
        torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- the custom op


def spmm_and_topk(backend):
    if backend == "sparse":
        return sparse.spmm, sparse.topk
    if backend == "faiss":
        from sthfast.backends import faiss_search

        return sparse.spmm, faiss_search.topk
    from sthfast.backends.triton import backend as kernels

    return kernels.spmm, kernels.topk


@pytest.mark.parametrize("backend", SPMM_BACKENDS)
def test_custom_ops_pass_opcheck(backend):
    spmm, topk = spmm_and_topk(backend)
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(4)])  # distinct per row
    val = torch.rand(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s = structure.from_ell(idx, val, 6)
    for transpose in (False, True):
        x = torch.randn(4 if transpose else 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
        torch.library.opcheck(spmm.op, (s.row_ptr, s.col, s.row, s.col_ptr, s.t_col, s.from_t, s.val,
                                        x, transpose))
        if backend == "sparse":  # ~100 launches: too slow in the interpreter; the mixprop tests
            torch.autograd.gradcheck(  # compare triton's gradients with the reference's instead
                lambda v, xx: spmm(s._replace(val=v), xx, transpose), (s.val, x))
    a, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    torch.library.opcheck(spmm.sampled_op, (s.row_ptr, s.row, s.col, a, b))
    z = torch.randn(2, 7, 3, generator=g)
    torch.library.opcheck(topk.op, (z, z, 3, "l2", True, False))


@pytest.mark.parametrize("backend", ["sparse"] + CPP)
def test_construction_and_propagation_compile_as_one_graph(backend):
    """The fast paths' ops are custom ops or fixed-size torch ops: no graph break, forward or
    backward."""
    def spatial(z, m1, m2, x):
        h = ops.knn_hypergraph(z, 3, backend=backend)
        a = ops.adaptive_graph(m1, m2, 2, 3.0, backend=backend)
        return (ops.hypergraph_mixprop(x, h, 2, 0.05, backend=backend)
                + ops.graph_mixprop(x, a, 2, 0.05, transpose=True, backend=backend))

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(9, 4, generator=g, requires_grad=True) for _ in range(3)]
    args.append(torch.randn(2, 3, 9, 5, generator=g, requires_grad=True))
    compiled = torch.compile(spatial, backend="aot_eager", fullgraph=True)
    got, want = compiled(*args), spatial(*args)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.sum(), args), torch.autograd.grad(want.sum(), args)):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- the whole model


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
@pytest.mark.parametrize("graph,hypergraph", [("adaptive", "adaptive"), ("static", "dynamic"),
                                              ("none", "binary")])
def test_model_on_a_real_window_equals_the_reference_model(small_config, backend, graph, hypergraph):
    from sthfast import STHSepNet
    from sthfast.data import load_series, prepare
    from sthfast.data.embedded import embedded_path

    data = prepare(load_series(embedded_path()), 12, 6)
    x, _, _ = data.train.batch(torch.tensor([0, 500, 1000]))       # [3, 12, 207, 1], LOS-LOOP
    adj = torch.as_tensor(data.series.adjacency, dtype=torch.float32) if graph == "static" else None
    grads = {}
    for name in ("reference", backend):
        torch.manual_seed(0)
        config = small_config(num_nodes=207, graph=graph, hypergraph=hypergraph, backend=name)
        model = STHSepNet(config, adjacency=adj)
        y = model(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads[name] = (y, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (y_ref, g_ref), (y_fast, g_fast) = grads["reference"], grads[backend]
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-4, atol=1e-5)
    assert g_fast.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-3, atol=1e-5, msg=name)


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
    """N = 44,000 with 1.5 GiB of address space above what the inputs take (the sparse path peaks
    near 0.5 GB): any N x N buffer, even of bytes (1.9 GB), fails to allocate; the reference, which
    needs them, is refused."""
    import os
    import subprocess
    import sys

    n, headroom = 44_000, 3 << 29                                  # 1.5 GiB: 0.5 GB measured + margin
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


@pytest.mark.parametrize("backend", SPMM_BACKENDS)
def test_spmm_with_features_wider_than_one_block(backend):
    """F = 1,500 spans two 1,024-wide gather blocks and twelve 128-wide dot chunks."""
    spmm = spmm_and_topk(backend)[0]
    g = torch.Generator().manual_seed(1)
    s = structure.from_ell(torch.tensor([[0, 3], [1, 2], [2, 3]]),
                           torch.rand(3, 2, generator=g, dtype=torch.float64, requires_grad=True), 4)
    x = torch.randn(4, 1500, generator=g, dtype=torch.float64, requires_grad=True)
    y = spmm(s, x)
    torch.testing.assert_close(y, s.to_dense() @ x)
    gv, gx = torch.autograd.grad(y.pow(2).sum(), (s.val, x))
    dense = s.to_dense().detach().requires_grad_()
    gd, gx_ref = torch.autograd.grad((dense @ x).pow(2).sum(), (dense, x))
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gv, gd[s.row, s.col])
