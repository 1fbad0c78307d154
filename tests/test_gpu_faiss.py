"""The ``faiss`` backend on CUDA tensors (GPU FAISS build) against the reference on the CPU.
Skipped with a reason where there is no GPU or no GPU build of FAISS."""

import pytest
import torch

from sthfast import ops, reference
from sthfast.backends import faiss_search

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.skipif(not torch.cuda.is_available() or not faiss_search.runs_on(torch.device("cuda")),
                                 reason="needs a GPU build of FAISS (pip install 'sthfast[faiss-gpu]')")]


@pytest.mark.parametrize("n,k", [(7, 7), (1000, 3), (5000, 20)])
@pytest.mark.parametrize("self_first", [False, True])
def test_exact_search_on_cuda_equals_reference(n, k, self_first):
    g = torch.Generator().manual_seed(n)
    z = torch.randn(n, 40, generator=g)
    z[n // 2:] = z[: n - n // 2]                                     # duplicates: real ties
    for metric in ("l2", "ip"):
        got = ops.topk_neighbors(z.cuda(), z.cuda(), k, metric, self_first=self_first, backend="faiss")
        assert got.is_cuda
        assert torch.equal(got.cpu(), reference.topk_neighbors(z, z, k, metric, self_first))


def test_approximate_search_on_cuda_recall(monkeypatch):
    monkeypatch.setattr(faiss_search, "APPROX_MIN_POINTS", 1000)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 40, generator=g)
    z = torch.tanh(centres[torch.randint(0, 40, (20000,), generator=g)] + 0.2 * torch.randn(20000, 40, generator=g))
    got = ops.topk_neighbors(z.cuda(), z.cuda(), 4, self_first=True, approximate=True, backend="faiss").cpu()
    truth = ops.topk_neighbors(z, z, 4, self_first=True, backend="faiss")
    found = (got[:, 1:].unsqueeze(2) == truth[:, 1:].unsqueeze(1)).any(1).float().mean()
    assert found >= 0.95 and torch.equal(got[:, 0], torch.arange(20000))


def test_hypergraph_on_cuda_equals_reference():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(300, 16, generator=g, dtype=torch.float64)
    x = torch.randn(2, 8, 300, 5, generator=g, dtype=torch.float64)
    results = {}
    for name, device in (("faiss", "cuda"), ("reference", "cpu")):
        zz, xx = z.to(device).requires_grad_(), x.to(device).requires_grad_()
        y = ops.hypergraph_mixprop(xx, ops.knn_hypergraph(zz, 3, backend=name), 2, 0.05, backend=name)
        y.square().sum().backward()
        results[name] = [t.cpu() for t in (y, xx.grad, zz.grad)]
    for got, want in zip(results["faiss"], results["reference"]):
        torch.testing.assert_close(got, want)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_search_on_the_second_gpu():
    z = torch.randn(2000, 16, generator=torch.Generator().manual_seed(2))
    got = ops.topk_neighbors(z.to("cuda:1"), z.to("cuda:1"), 5, backend="faiss")
    assert got.device == torch.device("cuda:1")
    assert torch.equal(got.cpu(), reference.topk_neighbors(z, z, 5))
