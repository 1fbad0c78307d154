"""``topk_neighbors``: the reference against brute force and its tie rule; every fast path
(``sparse``, ``triton``, ``faiss``; CPU and CUDA) against the reference on fresh points, awkward
shapes, duplicates and exact ties; the custom ops' registration; FAISS's approximate index (recall,
threshold, fallback when FAISS is missing)."""

from __future__ import annotations

import sys

import pytest
import torch
from backend_cases import CUDA, fast_paths, interpreted, runnable

from sthfast import ops, optional_deps, reference
from sthfast.backends import faiss_search
from sthfast.backends.sparse import topk_neighbors as sparse_topk
from sthfast.testing import embeddings, points, recall

D = torch.float64
needs_faiss = pytest.mark.skipif(not optional_deps.probe("faiss").ok, reason="FAISS is not installed")


# --------------------------------------------------------------------------- the reference


def test_reference_l2_and_ip_against_brute_force():
    q, k = points(9, 4, seed=2), points(13, 4, seed=3)
    d = ((q[:, None] - k[None]) ** 2).sum(-1)
    assert torch.equal(reference.topk_neighbors(q, k, 5, "l2"), d.argsort(-1)[:, :5])
    assert torch.equal(reference.topk_neighbors(q, k, 5, "ip"), (q @ k.T).argsort(-1, descending=True)[:, :5])


def test_reference_ties_go_to_the_smaller_index():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], dtype=D)
    idx = reference.topk_neighbors(z, z, 4, "l2")
    assert idx[0].tolist() == [0, 2, 1, 3] and idx[2].tolist() == [0, 2, 1, 3]
    assert idx[3].tolist() == [1, 3, 0, 2]
    ones = torch.ones(3, 2, dtype=D)
    assert reference.topk_neighbors(ones, ones, 3, "ip").tolist() == [[0, 1, 2]] * 3


def test_reference_self_first_puts_each_query_first_despite_ties():
    z = torch.tensor([[0.0], [0.0], [0.0], [1.0]], dtype=D)
    assert reference.topk_neighbors(z, z, 2, "l2", self_first=True).tolist() == [[0, 1], [1, 0], [2, 0], [3, 0]]
    ones = torch.ones(3, 2, dtype=D)
    assert reference.topk_neighbors(ones, ones, 2, "ip", self_first=True).tolist() == [[0, 1], [1, 0], [2, 0]]


def test_reference_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match="metric='cosine'"):
        reference.topk_neighbors(torch.zeros(2, 2), torch.zeros(2, 2), 1, "cosine")


def test_reference_batched_equals_per_sample_and_k_equals_m():
    q = points(6, 2, seed=4, batch=3)
    batched = reference.topk_neighbors(q, q, 6, "l2")
    for b in range(3):
        assert torch.equal(batched[b], reference.topk_neighbors(q[b], q[b], 6, "l2"))
    assert torch.equal(batched.sort(-1).values, torch.arange(6).expand(3, 6, 6))


# --------------------------------------------------------------------------- fast paths


@pytest.mark.parametrize("backend,device", fast_paths("topk_neighbors"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("n,m,k,d", [(1, 1, 1, 6), (13, 29, 5, 6), (29, 13, 13, 40), (37, 37, 3, 80),
                                     (64, 50, 1, 17)])
def test_fast_paths_equal_reference(backend, device, dtype, metric, n, m, k, d):
    q, key = points(n, d, dtype, seed=n * m), points(m, d, dtype, seed=n + m)
    got = ops.topk_neighbors(q.to(device), key.to(device), k, metric, backend=backend)
    assert got.dtype == torch.int64 and got.shape == (n, k) and got.device.type == device
    assert torch.equal(got.cpu(), reference.topk_neighbors(q, key, k, metric))


@pytest.mark.parametrize("backend,device", fast_paths("topk_neighbors"))
@pytest.mark.parametrize("self_first", [False, True])
@pytest.mark.parametrize("n,k,d", [(7, 7, 24), (1000, 3, 24), (513, 20, 24), (2048, 7, 24), (5000, 20, 40)])
def test_fast_paths_at_larger_sizes_with_duplicates(backend, device, self_first, n, k, d):
    if n > 100 and interpreted(backend, device):
        pytest.skip("thousands of points take minutes in Triton's interpreter: compiled on CUDA only")
    if n > 4096 and device == "cpu":
        pytest.skip("5,000 points: for the GPU paths (on the CPU the reference's 25M-entry sort takes 10 s; 2,048 "
                    "runs)")
    z = points(n, d, torch.float32, seed=n, duplicates=n // 2)        # half the points twice: real ties
    for metric in ("l2", "ip"):
        got = ops.topk_neighbors(z.to(device), z.to(device), k, metric, self_first=self_first, backend=backend)
        assert torch.equal(got.cpu(), reference.topk_neighbors(z, z, k, metric, self_first))


@pytest.mark.parametrize("backend,device", fast_paths("topk_neighbors"))
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_exact_ties_go_to_the_smaller_index(backend, device, metric):
    # integer grid points: every distance / inner product is exact, so ties are real ties;
    # 9 copies of some points (more than the coarse pass's margin) force the exact fallback
    g = torch.Generator().manual_seed(3)
    key = torch.randint(-2, 3, (40, 3), generator=g).float()
    key[20:29] = key[5]
    q = torch.randint(-2, 3, (17, 3), generator=g).float()
    for k in (1, 4, 12, 40):
        got = ops.topk_neighbors(q.to(device), key.to(device), k, metric, backend=backend)
        assert torch.equal(got.cpu(), reference.topk_neighbors(q, key, k, metric)), k


@pytest.mark.parametrize("backend,device", fast_paths("topk_neighbors"))
def test_batched_with_duplicates_and_empty_batch(backend, device):
    z = points(23, 4, torch.float32, seed=1, duplicates=8, batch=3).to(device)
    assert torch.equal(ops.topk_neighbors(z, z, 5, backend=backend).cpu(),
                       reference.topk_neighbors(z.cpu(), z.cpu(), 5))
    assert ops.topk_neighbors(z[:0], z[:0], 2, backend=backend).shape == (0, 23, 2)


@pytest.mark.parametrize("backend,device", fast_paths("topk_neighbors"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_selects_in_float32(backend, device, dtype):
    z = points(12, 40, torch.float32, seed=2, duplicates=4)
    got = ops.topk_neighbors(z.to(dtype).to(device), z.to(dtype).to(device), 4, backend=backend)
    assert torch.equal(got.cpu(), reference.topk_neighbors(z.to(dtype).float(), z.to(dtype).float(), 4))


def test_sparse_search_over_many_tiles_and_chunks(monkeypatch):
    monkeypatch.setattr(sparse_topk, "TILE_ELEMENTS", 64)   # 16-key tiles, 4-query chunks
    z = points(101, 5, seed=7, duplicates=30)
    for k in (1, 3, 9):
        assert torch.equal(sparse_topk.topk_neighbors(z, z, k, "l2", True),
                           reference.topk_neighbors(z, z, k, self_first=True))
        assert torch.equal(sparse_topk.topk_neighbors(z, z.flip(0), k, "ip"),
                           reference.topk_neighbors(z, z.flip(0), k, "ip"))


@pytest.mark.parametrize("backend", ["reference"] + runnable("topk_neighbors"))
def test_bad_arguments_are_clear_errors(backend):
    z = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k=6 neighbours asked for among 5 points"):
        ops.topk_neighbors(z, z, 6, backend=backend)
    with pytest.raises(ValueError, match="does not match query"):
        ops.topk_neighbors(z, torch.randn(5, 4), 2, backend=backend)
    with pytest.raises(ValueError, match="metric='cosine'"):
        ops.topk_neighbors(z, z, 2, "cosine", backend=backend)
    with pytest.raises(ValueError, match=r"must be \[N, d\] or \[B, N, d\]"):
        ops.topk_neighbors(torch.randn(5), torch.randn(5), 1, backend=backend)


def _custom_op(backend: str):
    if backend == "sparse":
        from sthfast.backends import sparse

        return sparse.topk
    if backend == "faiss":
        return faiss_search.topk
    from sthfast.backends.triton import backend as kernels

    return kernels.topk


@pytest.mark.parametrize("backend,device", fast_paths("topk_neighbors"))
def test_the_search_is_a_custom_op_that_passes_opcheck(backend, device):
    z = torch.randn(2, 7, 3, generator=torch.Generator().manual_seed(0)).to(device)
    torch.library.opcheck(_custom_op(backend).op, (z, z, 3, "l2", True, False))


# --------------------------------------------------------------------------- FAISS


@needs_faiss
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("self_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_faiss_exact_equals_reference_on_grid_ties(metric, self_first, dtype):
    g = torch.Generator().manual_seed(3)
    grid = torch.randint(0, 3, (300, 5), generator=g).to(dtype)     # many exact ties and copies
    for z, k in ((grid, 6), (torch.randn(257, 40, generator=g, dtype=dtype), 3), (grid[:7], 7)):
        got = ops.topk_neighbors(z, z, k, metric, self_first=self_first, backend="faiss")
        assert torch.equal(got, reference.topk_neighbors(z, z, k, metric, self_first))


@needs_faiss
@pytest.mark.parametrize("data, d, ivf", [("clustered", 40, True), ("uniform", 8, True),
                                          ("uniform", 40, False)])
def test_faiss_approximate_recall_at_least_095(data, d, ivf, monkeypatch):
    """Recall@3 (the query itself left out) >= 0.95 on clustered and on uniform points. In 40
    uniform dimensions no probe count under a quarter of the cells reaches the target, so the
    search falls back to the exact scan: that is checked too."""
    monkeypatch.setattr(faiss_search, "APPROX_MIN_POINTS", 1000)
    used = []
    tuned = faiss_search._tuned
    monkeypatch.setattr(faiss_search, "_tuned", lambda *a: used.append(tuned(*a)) or used[-1])
    z = embeddings(5000, d, clusters=40, spread=0.2) if data == "clustered" else embeddings(5000, d, scale=0.5)
    got = ops.topk_neighbors(z, z, 3, self_first=True, approximate=True, backend="faiss")
    truth = reference.topk_neighbors(z, z, 3, self_first=True)
    assert used == [ivf]                                           # which index answered
    assert recall(got, truth) >= 0.95
    assert torch.equal(got[:, 0], torch.arange(5000))              # each hyperedge's centre first
    exact = ops.topk_neighbors(z, z, 3, self_first=True, backend="faiss")
    assert torch.equal(exact, truth)                               # approximate=False stays exact


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or not faiss_search.runs_on(torch.device("cuda")),
                    reason="needs a CUDA device and a GPU build of FAISS (pip install 'sthfast[faiss-gpu]')")
def test_faiss_approximate_recall_on_cuda(monkeypatch):
    monkeypatch.setattr(faiss_search, "APPROX_MIN_POINTS", 1000)
    z = embeddings(20000, 40, clusters=40, spread=0.2)
    got = ops.topk_neighbors(z.cuda(), z.cuda(), 4, self_first=True, approximate=True, backend="faiss").cpu()
    truth = ops.topk_neighbors(z, z, 4, self_first=True, backend="faiss")
    assert recall(got, truth) >= 0.95 and torch.equal(got[:, 0], torch.arange(20000))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2 or not faiss_search.runs_on(torch.device("cuda")),
                    reason="needs two CUDA devices and a GPU build of FAISS")
def test_faiss_search_on_the_second_gpu():
    z = embeddings(2000, 16, seed=2)
    got = ops.topk_neighbors(z.to("cuda:1"), z.to("cuda:1"), 5, backend="faiss")
    assert got.device == torch.device("cuda:1")
    assert torch.equal(got.cpu(), reference.topk_neighbors(z, z, 5))


@needs_faiss
def test_faiss_never_uses_the_approximate_index_on_small_sets(monkeypatch):
    monkeypatch.setattr(faiss_search, "_tuned", lambda *a: pytest.fail("IVF tried below the threshold"))
    z = embeddings(500, 8, seed=1, clusters=5, spread=0.2)
    got = ops.topk_neighbors(z, z, 4, approximate=True, backend="faiss")
    assert torch.equal(got, reference.topk_neighbors(z, z, 4))


@needs_faiss
def test_auto_uses_faiss_from_the_threshold():
    n = ops.FAISS_MIN_POINTS
    assert ops.resolve("topk_neighbors", "auto", "cpu", n) == "faiss"
    assert ops.resolve("knn_hypergraph", "auto", "cpu", n) == "faiss"
    assert ops.resolve("topk_neighbors", "auto", "cpu", n - 1) == "sparse"
    z = embeddings(n, 6, seed=2, scale=0.5)
    assert torch.equal(ops.topk_neighbors(z, z, 3), ops.topk_neighbors(z, z, 3, backend="sparse"))


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
    z = embeddings(ops.FAISS_MIN_POINTS, 4, seed=3, scale=0.5)
    assert torch.equal(ops.topk_neighbors(z, z, 2), ops.topk_neighbors(z, z, 2, backend="sparse"))
    with pytest.raises(ValueError, match="backend 'faiss' cannot run topk_neighbors on cpu"):
        ops.topk_neighbors(z, z, 2, backend="faiss")
    from sthfast.info import report

    assert "faiss" in report() and "not installed" in report()


@needs_faiss
def test_info_names_the_faiss_build():
    from sthfast.info import report

    text = report()
    assert "CPU build" in text or "GPU build" in text
    assert f"from {ops.FAISS_MIN_POINTS:,} points" in text
