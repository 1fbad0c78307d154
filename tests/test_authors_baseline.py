"""The benchmarks' baseline of the authors' approach (``benchmarks/authors_approach.py``) builds the
same hyperedges as our reference, and its convolution runs forward and backward."""

from __future__ import annotations

import pytest
import torch

from sthfast import reference

pytest.importorskip("sklearn")
import authors_approach


@pytest.mark.parametrize("n,k", [(50, 3), (207, 3), (120, 5)])
def test_authors_hyperedges_equal_the_reference(n, k):
    g = torch.Generator().manual_seed(n)
    z = torch.tanh(torch.randn(n, 40, generator=g))                 # no ties: sklearn's order is free
    theirs = authors_approach.knn_incidence(z, k)
    ours = reference.knn_hypergraph(z, k, binary=True)
    kept = ours.sum(0) > 0                                          # merged-away columns are empty
    assert torch.equal(theirs, (ours[:, kept] > 0).float())
    assert (theirs.sum(0) == k).all()


def test_authors_convolution_forward_and_backward():
    torch.manual_seed(0)
    layer = authors_approach.AuthorsHypergraph(num_nodes=30)
    x = torch.randn(2, 4, 30, 5, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert layer.embedding.weight.grad is None                      # binary H: no gradient reaches E
