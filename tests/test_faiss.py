"""The FAISS neighbour search: exact results equal the reference, the approximate index's recall,
the size threshold of ``auto``, and a clean fallback when FAISS is not installed. The other ops of
the ``faiss`` backend are compared with the reference in ``test_fast_ops.py``; CUDA in
``test_gpu_faiss.py``."""

from __future__ import annotations

import sys

import pytest
import torch

from sthfast import optional_deps, ops, reference
from sthfast.backends import extension

from sthfast.backends import faiss_search

needs_faiss = pytest.mark.skipif(not optional_deps.probe("faiss").ok, reason="FAISS is not installed")


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of the true neighbours found, order ignored, leaving out the first column (each
    query itself, always right, which would inflate the figure)."""
    found, truth = found[:, 1:], truth[:, 1:]
    return (found.unsqueeze(2) == truth.unsqueeze(1)).any(1).float().mean().item()


def clustered(n, d, clusters, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    return torch.tanh(centres[torch.randint(0, clusters, (n,), generator=g)] + 0.2 * torch.randn(n, d, generator=g))


def uniform(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(0.5 * torch.randn(n, d, generator=g))


@needs_faiss
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("self_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_equals_reference_on_ties_and_duplicates(metric, self_first, dtype):
    g = torch.Generator().manual_seed(3)
    grid = torch.randint(0, 3, (300, 5), generator=g).to(dtype)     # many exact ties and copies
    for z, k in ((grid, 6), (torch.randn(257, 40, generator=g, dtype=dtype), 3), (grid[:7], 7)):
        got = ops.topk_neighbors(z, z, k, metric, self_first=self_first, backend="faiss")
        assert torch.equal(got, reference.topk_neighbors(z, z, k, metric, self_first))


@needs_faiss
@pytest.mark.parametrize("data, d, ivf", [("clustered", 40, True), ("uniform", 8, True),
                                          ("uniform", 40, False)])
def test_approximate_recall_at_least_095(data, d, ivf, monkeypatch):
    """Recall@3 (the query itself left out) >= 0.95 on clustered and on uniform points. In 40
    uniform dimensions no probe count under a quarter of the cells reaches the target, so the
    search falls back to the exact scan: that is checked too."""
    monkeypatch.setattr(faiss_search, "APPROX_MIN_POINTS", 1000)
    used = []
    tuned = faiss_search._tuned
    monkeypatch.setattr(faiss_search, "_tuned", lambda *a: used.append(tuned(*a)) or used[-1])
    z = clustered(5000, d, 40, 0) if data == "clustered" else uniform(5000, d, 0)
    got = ops.topk_neighbors(z, z, 3, self_first=True, approximate=True, backend="faiss")
    truth = reference.topk_neighbors(z, z, 3, self_first=True)
    assert used == [ivf]                                           # which index answered
    assert recall(got, truth) >= 0.95
    assert torch.equal(got[:, 0], torch.arange(5000))              # each hyperedge's centre first
    exact = ops.topk_neighbors(z, z, 3, self_first=True, backend="faiss")
    assert torch.equal(exact, truth)                               # approximate=False stays exact


@needs_faiss
def test_small_sets_never_use_the_approximate_index(monkeypatch):
    monkeypatch.setattr(faiss_search, "_tuned", lambda *a: pytest.fail("IVF tried below the threshold"))
    z = clustered(500, 8, 5, 1)
    got = ops.topk_neighbors(z, z, 4, approximate=True, backend="faiss")
    assert torch.equal(got, reference.topk_neighbors(z, z, 4))


@needs_faiss
def test_auto_uses_faiss_from_the_threshold():
    n = ops.FAISS_MIN_POINTS
    assert ops.resolve("topk_neighbors", "auto", "cpu", n) == "faiss"
    assert ops.resolve("knn_hypergraph", "auto", "cpu", n) == "faiss"
    assert ops.resolve("topk_neighbors", "auto", "cpu", n - 1) == "sparse"
    # propagation is resolved on its own: the extension's fused kernel, or sparse's
    assert ops.resolve("hypergraph_mixprop", "auto", "cpu") == ("cpp" if extension.available() else "sparse")
    assert ops.resolve("hypergraph_mixprop", "faiss", "cpu") == "faiss"
    z = uniform(n, 6, 2)
    hypergraph = ops.knn_hypergraph(z, 3)                          # auto: FAISS search, CSR result
    x = torch.randn(1, 2, n, 3)
    out = ops.hypergraph_mixprop(x, hypergraph, 2, 0.05)
    want = ops.hypergraph_mixprop(x, ops.knn_hypergraph(z, 3, backend="sparse"), 2, 0.05, backend="sparse")
    torch.testing.assert_close(out, want)


@pytest.fixture
def without_faiss(monkeypatch):
    """FAISS not installed: ``import faiss`` fails and the probe is re-run."""
    monkeypatch.setitem(sys.modules, "faiss", None)
    optional_deps.probe.cache_clear()
    faiss_search._faiss.cache_clear()
    yield
    optional_deps.probe.cache_clear()
    faiss_search._faiss.cache_clear()


def test_small_searches_do_not_import_faiss(monkeypatch):
    monkeypatch.setattr(optional_deps, "probe", lambda name: pytest.fail(f"probed {name}"))
    assert ops.resolve("topk_neighbors", "auto", "cpu", ops.FAISS_MIN_POINTS - 1) == "sparse"


def test_without_faiss_auto_falls_back_and_naming_it_is_a_clear_error(without_faiss):
    found = optional_deps.probe("faiss")
    assert not found.ok and "not installed" in found.detail
    assert ops.resolve("topk_neighbors", "auto", "cpu", 10 ** 6) == "sparse"
    z = uniform(ops.FAISS_MIN_POINTS, 4, 3)
    assert torch.equal(ops.topk_neighbors(z, z, 2), ops.topk_neighbors(z, z, 2, backend="sparse"))
    with pytest.raises(ValueError, match="backend 'faiss' cannot run topk_neighbors on cpu"):
        ops.topk_neighbors(z, z, 2, backend="faiss")
    from sthfast.info import report

    assert "faiss" in report() and "not installed" in report()


@needs_faiss
def test_info_names_the_faiss_build(capsys):
    from sthfast.info import report

    text = report()
    assert "CPU build" in text or "GPU build" in text
    assert f"from {ops.FAISS_MIN_POINTS:,} points" in text
