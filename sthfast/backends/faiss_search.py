"""Neighbour search with FAISS (optional: ``pip install 'sthfast[faiss-cpu]'`` or ``[faiss-gpu]``),
for large point sets: the ``faiss`` backend's top-k, exact by default, an inverted file with a
tuned ``nprobe`` on request; how the results stay the reference's: ``sthfast/backends/README.md``."""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from torch import Tensor

from .. import optional_deps
from . import Implementation, nowhere, sparse
from .sparse.custom_ops import define_topk
from .sparse.topk_neighbors import MARGIN, per_point_set, refine

APPROX_MIN_POINTS = 20_000   # below this an IVF index costs more than it saves (benchmarks/)
TARGET_RECALL = 0.97
TUNE_QUERIES = 256
TRAIN_PER_CELL = 64          # k-means training points per cell (sampled)
MIN_TRAIN_PER_CELL = 39      # FAISS's minimum: fewer cells when the set is small


@functools.lru_cache(maxsize=None)
def _faiss():
    """The ``faiss`` module with its torch bridge installed (imported on first use only)."""
    import faiss  # noqa: PLC0415 (optional dependency)
    import faiss.contrib.torch_utils  # noqa: PLC0415 (lets indexes take torch tensors)

    return faiss


def runs_on(device: torch.device) -> bool:
    """Whether FAISS is installed and can search tensors on ``device`` (CUDA needs a GPU build)."""
    if not optional_deps.probe("faiss").ok:
        return False
    if device.type == "cuda":
        faiss = _faiss()
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    return device.type == "cpu"


@functools.lru_cache(maxsize=None)
def _gpu_resources(device_index: int):
    return _faiss().StandardGpuResources()


def _flat_index(d: int, metric: str, device: torch.device):
    faiss = _faiss()
    if device.type == "cuda":
        config = faiss.GpuIndexFlatConfig()
        config.device = device.index if device.index is not None else torch.cuda.current_device()
        kind = faiss.GpuIndexFlatL2 if metric == "l2" else faiss.GpuIndexFlatIP
        return kind(_gpu_resources(config.device), d, config)
    return faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)


def _ivf_index(key: Tensor, metric: str, cells: int):
    """An IVF-Flat index over ``key [M, d]`` (float32, contiguous), trained on a fixed sample."""
    faiss = _faiss()
    d = key.shape[1]
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if key.is_cuda:
        config = faiss.GpuIndexIVFFlatConfig()
        config.device = key.device.index if key.device.index is not None else torch.cuda.current_device()
        index = faiss.GpuIndexIVFFlat(_gpu_resources(config.device), d, cells, faiss_metric, config)
    else:
        index = faiss.IndexIVFFlat(_flat_index(d, metric, key.device), d, cells, faiss_metric)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randperm(key.shape[0], generator=generator)[:cells * TRAIN_PER_CELL].to(key.device)
    index.cp.seed = 0
    index.train(key[sample].contiguous())
    index.add(key)
    return index


def _search(index, query: Tensor, c: int, metric: str) -> tuple[Tensor, Tensor]:
    """``index.search`` with smaller-is-better scores: ``[N, c]`` candidates and scores."""
    distances, labels = index.search(query, c)
    return labels, (distances if metric == "l2" else -distances)


def _tuned(index, exact, query: Tensor, c: int, k: int, metric: str) -> bool:
    """Set ``index.nprobe`` to the smallest power of two (from 8) whose recall on a sample of
    queries reaches :data:`TARGET_RECALL`; False when that needs more than a quarter of the cells.
    Recall counts the true 2nd .. (k+1)-th neighbours found among the index's k + 1: the nearest,
    usually the query itself, is left out, so it cannot inflate the figure."""
    generator = torch.Generator().manual_seed(1)
    rows = torch.randperm(query.shape[0], generator=generator)[:TUNE_QUERIES].to(query.device)
    sample = query[rows].contiguous()
    truth = _search(exact, sample, k + 1, metric)[0][:, 1:]
    nprobe = 8
    while nprobe <= index.nlist // 4:
        index.nprobe = nprobe
        found, _ = _search(index, sample, k + 1, metric)
        hits = (found.unsqueeze(2) == truth.unsqueeze(1)).any(1).sum()
        if int(hits) >= TARGET_RECALL * truth.numel():
            return True
        nprobe *= 2
    return False


def _coarse(query: Tensor, key: Tensor, c: int, metric: str, self_first: bool,
            approximate: bool) -> tuple[Tensor, Tensor, bool]:
    """FAISS candidates ``[N, c]``, their smaller-is-better float32 scores, and whether the search
    was exhaustive (flat); with ``self_first`` each query holds itself (score ``-inf``) and its
    ``c - 1`` best others."""
    with torch.cuda.device(key.device) if key.is_cuda else contextlib.nullcontext():
        return _coarse_on_device(query, key, c, metric, self_first, approximate)


def _coarse_on_device(query: Tensor, key: Tensor, c: int, metric: str, self_first: bool,
                      approximate: bool) -> tuple[Tensor, Tensor, bool]:
    """:func:`_coarse` with the key's device current, so that FAISS runs on torch's stream there."""
    q = query.detach().float().contiguous()
    kk = key.detach().float().contiguous()
    exact = _flat_index(kk.shape[1], metric, kk.device)
    exact.add(kk)
    index = exact
    if approximate and kk.shape[0] >= APPROX_MIN_POINTS:
        cells = max(1, min(int(4 * math.sqrt(kk.shape[0])), kk.shape[0] // MIN_TRAIN_PER_CELL))
        ivf = _ivf_index(kk, metric, cells)
        if _tuned(ivf, exact, q, c, c - MARGIN, metric):
            index = ivf
    labels, scores = _search(index, q, c, metric)
    labels = labels.to(query.device, torch.long)
    scores = scores.to(query.device)
    if self_first:
        own = torch.arange(q.shape[0], device=labels.device).unsqueeze(1)
        present = (labels == own).any(1, keepdim=True)
        last = torch.arange(c, device=labels.device) == c - 1
        # the query itself takes its own slot if found, else the worst candidate's
        replace = (labels == own) | (~present & last)
        labels = torch.where(replace, own, labels)
        scores = torch.where(replace, torch.full_like(scores, -math.inf), scores)
    return labels, scores, index is exact


def topk_neighbors(query: Tensor, key: Tensor, k: int, metric: str = "l2",
                   self_first: bool = False, approximate: bool = False) -> Tensor:
    """Same contract as :func:`sthfast.reference.topk_neighbors` (``[..., N, k]`` int64); with
    ``approximate``, large key sets may miss some true neighbours (recall about
    :data:`TARGET_RECALL`; the candidates found are still ordered exactly)."""
    def coarse(q: Tensor, kk: Tensor, c: int, m: str, sf: bool) -> tuple[Tensor, Tensor, bool]:
        return _coarse(q, kk, c, m, sf, approximate)

    eps = torch.finfo(torch.float32).eps          # FAISS scores in float32
    return per_point_set(lambda q, kk: refine(q, kk, k, metric, self_first, coarse, eps), query, key, k)


topk = define_topk("faiss", topk_neighbors)
OPS = sparse.backend_ops(topk, spmm=sparse.spmm)   # FAISS search in the sparse builders and propagation
# Points from which ``auto`` searches neighbours with FAISS rather than the tiled torch search on
# the CPU: where FAISS's flat search overtook it on a 2-core CPU (benchmarks/large_n.py, RESULTS.md).
# On CUDA ``auto`` keeps Triton when it is installed (FAISS GPU unmeasured here: name ``faiss``).
FAISS_MIN_POINTS = 4096
# auto takes the searches on large point sets; the others are sparse's, there so that naming
# ``faiss`` works, never taken by auto (which resolves propagation on its own)
SEARCHES = ("topk_neighbors", "knn_hypergraph", "adaptive_graph")
FROM_SPARSE = ("static_graph", "hypergraph_mixprop", "graph_mixprop", "projected_hypergraph_mixprop",
               "projected_graph_mixprop")
IMPLEMENTATIONS = (
    *(Implementation(op, "faiss", OPS[op], auto_on=runs_on, min_points=FAISS_MIN_POINTS) for op in SEARCHES),
    *(Implementation(op, "faiss", OPS[op], auto_on=nowhere, runs_on=runs_on, same_as="sparse") for op in FROM_SPARSE))
