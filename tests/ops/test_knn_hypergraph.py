"""``knn_hypergraph``: the reference by hand (merged duplicate hyperedges, softmax membership
weights, ties), its gradcheck; every fast path's incidence and gradients against the reference
(shared, per-sample and binary hypergraphs, duplicates, k = N, one node, a temperature per
hyperedge; CPU and CUDA); clear errors."""

from __future__ import annotations

import pytest
import torch
from backend_cases import fast_paths, runnable, tolerance
from torch.autograd import gradcheck

from sthfast import ops, optional_deps, reference
from sthfast.testing import HYPERGRAPH_CASES, dense_incidence, embeddings, features, points, weighted_sum

D = torch.float64


# --------------------------------------------------------------------------- the reference


def test_reference_binary_merges_identical_sets():
    # Two tight clusters {0, 1, 2} and {3, 4, 5}: every node's 3-NN set is its cluster, so six
    # hyperedges collapse to two, kept at the smallest centre (columns 0 and 3).
    z = torch.tensor([[0, 0], [0.1, 0], [0, 0.1], [9, 9], [9.1, 9], [9, 9.1]], dtype=D)
    expected = torch.zeros(6, 6, dtype=D)
    expected[:3, 0] = 1
    expected[3:, 3] = 1
    assert torch.equal(reference.knn_hypergraph(z, 3, binary=True), expected)


def test_reference_weights_are_a_softmax_and_average_over_merged_copies():
    z = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=D)
    h = reference.knn_hypergraph(z, 2, binary=False, temperature=2.0)
    # 2-NN sets: 0:{0,1} 1:{1,0} 2:{2,1} 3:{3,2}; edges 0 and 1 merge into column 0.
    w01 = torch.softmax(torch.tensor([0.0, -1 / 2], dtype=D), 0)   # from centre 0: (0, 1)
    w10 = torch.softmax(torch.tensor([0.0, -1 / 2], dtype=D), 0)   # from centre 1: (1, 0)
    expected = torch.zeros(4, 4, dtype=D)
    expected[0, 0] = (w01[0] + w10[1]) / 2
    expected[1, 0] = (w01[1] + w10[0]) / 2
    w21 = torch.softmax(torch.tensor([0.0, -4 / 2], dtype=D), 0)
    expected[2, 2], expected[1, 2] = w21
    w32 = torch.softmax(torch.tensor([0.0, -49 / 2], dtype=D), 0)
    expected[3, 3], expected[2, 3] = w32
    torch.testing.assert_close(h, expected)
    torch.testing.assert_close(h.sum(0), torch.tensor([1, 0, 1, 1], dtype=D))


def test_reference_k_equals_n_single_node_and_batch():
    z = points(5, 3, seed=5)
    h = reference.knn_hypergraph(z, 5, binary=True)            # one hyperedge with everything
    assert torch.equal(h[:, 0], torch.ones(5, dtype=D)) and h[:, 1:].abs().sum() == 0
    assert torch.equal(reference.knn_hypergraph(torch.zeros(1, 3, dtype=D), 1), torch.ones(1, 1, dtype=D))
    zb = points(7, 3, seed=6, batch=2)
    hb = reference.knn_hypergraph(zb, 3)
    for b in range(2):
        torch.testing.assert_close(hb[b], reference.knn_hypergraph(zb[b], 3))


def test_reference_duplicate_points_are_deterministic():
    z = torch.tensor([[1.0, 1.0]] * 4 + [[3.0, 3.0]], dtype=D)
    h1, h2 = reference.knn_hypergraph(z, 2, binary=True), reference.knn_hypergraph(z.clone(), 2, binary=True)
    assert torch.equal(h1, h2)
    # Each node leads its own hyperedge even among duplicates, then the smallest tied index:
    # 0 -> {0, 1}, 1 -> {1, 0} (merged into column 0), 2 -> {2, 0}, 3 -> {3, 0}, 4 -> {4, 0}.
    expected = torch.zeros(5, 5, dtype=D)
    expected[[0, 1], 0] = 1
    for e in (2, 3, 4):
        expected[[0, e], e] = 1
    assert torch.equal(h1, expected)
    assert (h1.sum(1) > 0).all()                       # nobody is left out of every hyperedge


def test_reference_weights_do_not_collapse_onto_the_centre_in_high_dimension():
    z = torch.tanh(3 * points(200, 40, seed=23))       # like the model's features
    assert 0.34 < float(torch.diagonal(reference.knn_hypergraph(z, 3)).mean()) < 0.8


@pytest.mark.parametrize("batched", [False, True])
def test_reference_gradcheck(batched):
    z = points(7, 3, seed=13, batch=2 if batched else None).requires_grad_()
    assert gradcheck(lambda t: reference.knn_hypergraph(t, 3, temperature=0.7), (z,))


# --------------------------------------------------------------------------- fast paths


@pytest.mark.parametrize("backend,device", fast_paths("knn_hypergraph"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(HYPERGRAPH_CASES))
def test_incidence_and_gradient_equal_reference(backend, device, dtype, case):
    n, k, batch, binary, dup = HYPERGRAPH_CASES[case]
    z0 = points(n, 5, dtype, seed=n + k, duplicates=dup, batch=batch)
    results = {}
    for name, dev in ((backend, device), ("reference", "cpu")):
        z = z0.to(dev).requires_grad_(not binary)              # binary incidences have no gradient
        h = ops.knn_hypergraph(z, k, binary=binary, temperature=0.7, backend=name)
        h = h if name == "reference" else dense_incidence(h)
        grads = [] if binary else [torch.autograd.grad(weighted_sum(h), z)[0].cpu()]
        results[name] = [h.detach().cpu(), *grads]
    for got, want in zip(results[backend], results["reference"], strict=True):
        torch.testing.assert_close(got, want, **tolerance(dtype, device))


@pytest.mark.parametrize("backend,device", fast_paths("knn_hypergraph"))
@pytest.mark.parametrize("batch", [None, 2])
def test_per_hyperedge_temperatures_equal_reference_with_gradients(backend, device, batch):
    """A learned temperature per hyperedge (hyper_order='adaptive'): incidence, MixProp output and
    the gradients in z, x and the temperatures equal the reference's; equal temperatures give the
    scalar temperature's hypergraph."""
    n, k = 17, 4
    z0 = points(n, 5, seed=3, batch=batch)
    x0 = features(2, 3, n, 4, seed=1)
    t0 = torch.rand(n, generator=torch.Generator().manual_seed(2), dtype=D) * 2 + 0.05

    def run(name, dev):
        z, x, t = (v.detach().to(dev).requires_grad_() for v in (z0, x0, t0))
        h = ops.knn_hypergraph(z, k, temperature=t, backend=name)
        y = ops.hypergraph_mixprop(x, h, 2, 0.05, backend=name)
        weighted_sum(y).backward()
        dense = h if name == "reference" else dense_incidence(h)
        return [v.detach().cpu() for v in (dense, y, z.grad, x.grad, t.grad)]

    for fast, ref in zip(run(backend, device), run("reference", "cpu")):
        torch.testing.assert_close(fast, ref, **tolerance(D, device))
    z = z0.to(device)
    same = ops.knn_hypergraph(z, k, temperature=torch.full((n,), 0.7, dtype=D, device=device), backend=backend)
    torch.testing.assert_close(dense_incidence(same),
                               dense_incidence(ops.knn_hypergraph(z, k, temperature=0.7, backend=backend)))
    with pytest.raises(ValueError, match=r"temperature \[3\] must be a number or \[N\] = \[17\]"):
        ops.knn_hypergraph(z, k, temperature=torch.ones(3, device=device), backend=backend)


@pytest.mark.parametrize("backend", ["reference"] + runnable("knn_hypergraph"))
def test_bad_arguments_are_clear_errors(backend):
    z = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k=0"):
        ops.knn_hypergraph(z, 0, backend=backend)
    with pytest.raises(ValueError, match="k=6 neighbours asked for among 5 points"):
        ops.knn_hypergraph(z, 6, backend=backend)
    with pytest.raises(ValueError, match=r"must be \[N, d\] or \[B, N, d\]"):
        ops.knn_hypergraph(torch.randn(5), 1, backend=backend)


@pytest.mark.skipif(not optional_deps.probe("faiss").ok, reason="FAISS is not installed")
def test_auto_builds_big_hypergraphs_with_faiss_and_propagates_them_like_sparse():
    n = ops.FAISS_MIN_POINTS
    assert ops.resolve("knn_hypergraph", "auto", "cpu", n) == "faiss"
    z = embeddings(n, 6, seed=2, scale=0.5)
    x = torch.randn(1, 2, n, 3)
    out = ops.hypergraph_mixprop(x, ops.knn_hypergraph(z, 3), 2, 0.05)      # FAISS search, CSR result
    want = ops.hypergraph_mixprop(x, ops.knn_hypergraph(z, 3, backend="sparse"), 2, 0.05, backend="sparse")
    torch.testing.assert_close(out, want)
