"""``adaptive_graph``: the reference by hand and its gradcheck; every fast path's graph (``A + I``
kept sparse) and its gradients in both node-vector sets against the reference (CPU and CUDA)."""

from __future__ import annotations

import pytest
import torch
from backend_cases import fast_paths, tolerance
from torch.autograd import gradcheck

from sthfast import ops, reference
from sthfast.testing import points, weighted_sum


def test_reference_by_hand():
    m1, m2 = points(6, 3, seed=8), points(6, 3, seed=9)
    a = reference.adaptive_graph(m1, m2, 2, alpha=3.0)
    score = m1 @ m2.T - m2 @ m1.T
    full = torch.relu(torch.tanh(3.0 * score))
    keep = torch.zeros_like(full).scatter(1, score.argsort(1, descending=True)[:, :2], 1.0)
    torch.testing.assert_close(a, full * keep)


def test_reference_gradcheck():
    m1, m2 = points(6, 3, seed=14).requires_grad_(), points(6, 3, seed=15).requires_grad_()
    assert gradcheck(lambda a, b: reference.adaptive_graph(a, b, 3, 0.5), (m1, m2))


@pytest.mark.parametrize("backend,device", fast_paths("adaptive_graph"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,k", [(17, 4), (5, 5), (1, 1)])
def test_graph_and_gradients_equal_reference(backend, device, dtype, n, k):
    m = [points(n, 6, dtype, seed=n * k + i) for i in range(2)]
    results = {}
    for name, dev in ((backend, device), ("reference", "cpu")):
        m1, m2 = (t.to(dev).requires_grad_() for t in m)
        a = ops.adaptive_graph(m1, m2, k, 3.0, backend=name)
        dense = a if name == "reference" else a.to_dense() - torch.eye(n, dtype=dtype, device=dev)  # A + I -> A
        results[name] = [t.detach().cpu() for t in (dense, *torch.autograd.grad(weighted_sum(dense), (m1, m2)))]
    for got, want in zip(results[backend], results["reference"]):
        torch.testing.assert_close(got, want, **tolerance(dtype, device))
