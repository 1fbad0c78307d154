"""``graph_mixprop``: the reference propagation ``D^-1 (A + I)`` by hand and its gradcheck; every
fast path over the adaptive graph, both directions, against the reference (outputs and gradients
in x and in the node vectors, CPU and CUDA); empty batches; inputs that do not fit. The kernels
beneath (the sparse product, the fused ``cpp`` MixProp with one hop) are tested with
``hypergraph_mixprop``'s, in test_hypergraph_mixprop.py."""

from __future__ import annotations

import pytest
import torch
from backend_cases import fast_paths, runnable, tolerance
from torch.autograd import gradcheck

from sthfast import ops, reference
from sthfast.testing import features, points, weighted_sum

D = torch.float64


def test_reference_propagation_by_hand():
    a = reference.adaptive_graph(points(6, 3, seed=8), points(6, 3, seed=9), 2, alpha=3.0)
    x = features(2, 3, 6, 5, seed=10)
    p = (a + torch.eye(6, dtype=D)) / (a + torch.eye(6, dtype=D)).sum(1, keepdim=True)
    torch.testing.assert_close(reference.graph_propagate(x, a), torch.einsum("vw,bcwt->bcvt", p, x))


def test_reference_operator_is_row_normalised_and_equals_its_propagation():
    x = features(2, 3, 5, 4, seed=20)
    a = torch.rand(5, 5, generator=torch.Generator().manual_seed(22), dtype=D)
    torch.testing.assert_close(reference.apply_operator(x, reference.graph_operator(a)),
                               reference.graph_propagate(x, a))
    torch.testing.assert_close(reference.graph_operator(a).sum(1), torch.ones(5, dtype=D))


def test_reference_gradcheck():
    x = features(2, 2, 5, 3, seed=16, grad=True)
    a = torch.rand(5, 5, generator=torch.Generator().manual_seed(19), dtype=D, requires_grad=True)
    assert gradcheck(reference.graph_propagate, (x, a))
    assert gradcheck(lambda t, w: reference.graph_mixprop(t, w, 2, 0.1, transpose=True), (x, a))


@pytest.mark.parametrize("backend,device", fast_paths("graph_mixprop"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("n,k", [(17, 4), (5, 5), (1, 1)])
def test_over_the_adaptive_graph_equals_reference(backend, device, dtype, transpose, n, k):
    m = [points(n, 6, dtype, seed=n * k + i) for i in range(2)]
    x0 = features(2, 3, n, 4, dtype, seed=n * k + 2)
    outs = {}
    for name, dev in ((backend, device), ("reference", "cpu")):
        m1, m2, x = (t.detach().to(dev).requires_grad_() for t in (*m, x0))
        y = ops.graph_mixprop(x, ops.adaptive_graph(m1, m2, k, 3.0, backend=name), 2, 0.05, transpose=transpose,
                              backend=name)
        outs[name] = [t.detach().cpu() for t in (y, *torch.autograd.grad(weighted_sum(y), (x, m1, m2)))]
    for got, want in zip(outs[backend], outs["reference"]):
        torch.testing.assert_close(got, want, **tolerance(dtype, device))


@pytest.mark.parametrize("backend,device", fast_paths("graph_mixprop"))
def test_empty_batch(backend, device):
    z = points(6, 3, torch.float32).to(device)
    graph = ops.adaptive_graph(z, z.flip(0), 2, 3.0, backend=backend)
    empty = torch.randn(0, 3, 6, 4, device=device)
    assert ops.graph_mixprop(empty, graph, 2, 0.05, backend=backend).shape == (0, 9, 6, 4)


@pytest.mark.parametrize("backend", ["reference"] + runnable("graph_mixprop"))
def test_input_that_does_not_fit_the_graph_is_a_clear_error(backend):
    z = points(6, 3, torch.float32, batch=2)
    graph = ops.adaptive_graph(z[0], z[1], 2, 1.0, backend=backend)
    with pytest.raises(ValueError, match="must be"):
        ops.graph_mixprop(torch.randn(3, 6, 4), graph, 2, 0.05, backend=backend)
