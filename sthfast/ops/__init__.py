"""The op dispatch point: the model calls only these functions; ``backend`` picks the implementation.

A backend is a family of fast paths: naming one selects it for the ops it implements (an error
where it cannot run on the tensors' device) and leaves the ops it does not implement to ``auto``.

Each op has a reference implementation (:mod:`sthfast.reference`). Fast paths register themselves
with :func:`register` under a backend name; ``backend="auto"`` takes the first registered backend in
:data:`AUTO_ORDER` that supports the tensors' device (and, for a neighbour search, the number of
points: FAISS only from :data:`FAISS_MIN_POINTS`), and the reference when none does, so ``auto``
never fails where the reference works.

Constructor ops (``knn_hypergraph``, ``adaptive_graph``) return a structure that the same
backend's propagation op (``hypergraph_mixprop``, ``graph_mixprop``) understands: a dense tensor
for ``reference``, :class:`sthfast.backends.sparse.SparseRows` for every other backend, so ``auto`` may
resolve each op on its own. A backend registers both ops of a pair or neither (see :data:`PAIRS`;
a test checks every registered backend).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .. import optional_deps, reference
from ..backends import AUTO_ORDER, BACKENDS, extension, faiss_search, sparse

PAIRS = (("knn_hypergraph", "hypergraph_mixprop"), ("adaptive_graph", "graph_mixprop"),
         ("static_graph", "graph_mixprop"))
# Points from which ``auto`` searches neighbours with FAISS rather than the tiled torch search on
# the CPU: where FAISS's flat search overtook it on a 2-core CPU (benchmarks/large_n.py, RESULTS.md).
# On CUDA ``auto`` keeps Triton when it is installed (FAISS GPU unmeasured here: name ``faiss``).
FAISS_MIN_POINTS = 4096

# op name -> backend name -> (implementation, auto picks it on device, runs on device if named,
#                             fewest points for auto)
_REGISTRY: dict[str, dict[str, tuple[Callable, Callable[[torch.device], bool],
                                     Callable[[torch.device], bool], int]]] = {}


def _anywhere(device: torch.device) -> bool:
    return True


def _nowhere(device: torch.device) -> bool:
    return False


def register(op: str, backend: str, fn: Callable,
             supports: Callable[[torch.device], bool] = _anywhere,
             runs: Callable[[torch.device], bool] | None = None, min_points: int = 0) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op``: ``auto`` picks it on the devices
    ``supports`` accepts (for point sets of at least ``min_points``); named explicitly it runs
    wherever ``runs`` accepts (default: the same, wider for Triton's CPU interpreter)."""
    if backend not in AUTO_ORDER:
        raise ValueError(f"backend {backend!r} is not one of {list(AUTO_ORDER)}")
    _REGISTRY.setdefault(op, {})[backend] = (fn, supports, runs or supports, min_points)


def resolve(op: str, backend: str, device: torch.device | str, points: int = 0) -> str:
    """The backend that runs ``op`` on ``device`` (over ``points`` points, for a neighbour
    search) when asked for ``backend``."""
    device = torch.device(device)
    impls = _REGISTRY[op]
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {list(BACKENDS)}")
    if backend == "auto" or backend not in impls:  # a backend that lacks the op leaves it to auto
        return next(name for name in AUTO_ORDER   # sizes first: small searches never probe FAISS
                    if name in impls and points >= impls[name][3] and impls[name][1](device))
    if not impls[backend][2](device):
        usable = [name for name in AUTO_ORDER if name in impls and impls[name][2](device)]
        raise ValueError(f"backend {backend!r} cannot run {op} on {device}; usable here: {usable}")
    return backend


def _impl(op: str, backend: str, device: torch.device, points: int = 0) -> Callable:
    return _REGISTRY[op][resolve(op, backend, device, points)][0]


def pool_patch(x: Tensor, patch_len: int, stride: int, normalize: bool = True, eps: float = 1e-5,
               node_mask: Tensor | None = None, *, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """``x[B, T, N, F]`` -> ``patches[B, F, L, P], mean[B, F], std[B, F]``; see
    :func:`sthfast.reference.pool_patch`."""
    if x.dim() != 4 or x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"x must be [B, T, N, F] with T, N >= 1, got shape {list(x.shape)}")
    if not (1 <= patch_len and 1 <= stride):
        raise ValueError(f"patch_len={patch_len} and stride={stride} must be at least 1")
    if patch_len > x.shape[1] + stride:
        raise ValueError(f"patch_len={patch_len} is longer than the {x.shape[1]} steps padded by "
                         f"stride {stride}")
    if node_mask is not None and node_mask.shape not in ((x.shape[2],), (x.shape[0], x.shape[2])):
        raise ValueError(f"node_mask {list(node_mask.shape)} must be [N] or [B, N] for x {list(x.shape)}")
    return _impl("pool_patch", backend, x.device)(x, patch_len, stride, normalize, eps, node_mask)


def _check_points(name: str, points: Tensor, k: int, keys: Tensor | None = None) -> None:
    """``points`` is ``[N, d]`` / ``[B, N, d]`` and ``1 <= k <=`` the number of keys (default: points)."""
    if points.dim() not in (2, 3):
        raise ValueError(f"{name} must be [N, d] or [B, N, d], got shape {list(points.shape)}")
    count = (points if keys is None else keys).shape[-2]
    if not 1 <= k <= count:
        raise ValueError(f"k={k} neighbours asked for among {count} points: need 1 <= k <= {count}")


def _check_fits(x: Tensor, structure) -> None:
    """``x [B, C, N, T]`` matches a graph / hypergraph over N nodes (per sample: B of them)."""
    if isinstance(structure, sparse.SparseRows):
        blocks = structure.blocks
        nodes = structure.shape[1] // blocks if blocks else (None if blocks == 0 else structure.shape[1])
    else:
        blocks = structure.shape[0] if structure.dim() == 3 else None
        nodes = structure.shape[-2]
    if x.dim() != 4 or (nodes is not None and x.shape[2] != nodes) or blocks not in (None, x.shape[0]):
        per = "" if blocks is None else f" for a batch of {blocks}"
        raise ValueError(f"x {list(x.shape)} must be [B, C, N, T] with N = {nodes} nodes{per}, "
                         "as the graph it is propagated over")


def topk_neighbors(query: Tensor, key: Tensor, k: int, metric: str = "l2", *,
                   self_first: bool = False, approximate: bool = False,
                   backend: str = "auto") -> Tensor:
    """``query[..., N, d], key[..., M, d]`` -> indices ``[..., N, k]``, best first, ties to the
    smaller index; see :func:`sthfast.reference.topk_neighbors`. ``approximate`` lets the
    ``faiss`` backend use an approximate index on large key sets (:mod:`sthfast.backends.faiss_search`);
    every other search is exact."""
    _check_points("query", query, k, key)
    if key.shape[:-2] != query.shape[:-2] or key.shape[-1] != query.shape[-1]:
        raise ValueError(f"key {list(key.shape)} does not match query {list(query.shape)}")
    if metric not in reference.neighbors.METRICS:
        raise ValueError(f"metric={metric!r} is not one of {list(reference.neighbors.METRICS)}")
    if self_first and query.shape != key.shape:
        raise ValueError(f"self_first needs one point set: query {list(query.shape)}, key {list(key.shape)}")
    impl = _impl("topk_neighbors", backend, query.device, key.shape[-2])
    return impl(query, key, k, metric, self_first, approximate)


def knn_hypergraph(z: Tensor, k: int, binary: bool = False, temperature: float | Tensor = 1.0, *,
                   neighbors: Tensor | None = None, backend: str = "auto"):
    """Node features ``z[..., N, d]`` -> the merged KNN hypergraph: the reference returns the dense
    incidence ``H [..., N, N]``, the other backends ``H^T`` as :class:`sthfast.backends.sparse.SparseRows`;
    see :func:`sthfast.reference.knn_hypergraph`. ``neighbors [..., N, k]`` (self first, from
    :func:`topk_neighbors` with ``self_first=True``) skips the search: the membership weights are
    still computed from ``z``, so they stay differentiable. ``temperature``: a positive number or
    one per hyperedge (``[N]``, positive)."""
    _check_points("z", z, k)
    if isinstance(temperature, Tensor) and temperature.shape != (z.shape[-2],):
        raise ValueError(f"temperature {list(temperature.shape)} must be a number or [N] = [{z.shape[-2]}]")
    if neighbors is not None and neighbors.shape != (*z.shape[:-1], k):
        raise ValueError(f"neighbors {list(neighbors.shape)} must be [..., N, k] = {[*z.shape[:-1], k]}")
    return _impl("knn_hypergraph", backend, z.device, z.shape[-2])(z, k, binary, temperature, neighbors)


def hypergraph_mixprop(x: Tensor, hypergraph, depth: int, beta: float, *,
                       backend: str = "auto") -> Tensor:
    """MixProp with ``P = D_v^-1 H D_e^-1 H^T``: ``x[B, C, N, T]`` -> ``[B, C (depth + 1), N, T]``."""
    _check_fits(x, hypergraph)
    return _impl("hypergraph_mixprop", backend, x.device)(x, hypergraph, depth, beta)


def adaptive_graph(m1: Tensor, m2: Tensor, k: int, alpha: float, *, backend: str = "auto"):
    """Top-``k``-per-row adaptive graph from ``m1, m2 [N, d]`` (the reference returns dense
    ``[N, N]``, the other backends :class:`sthfast.backends.sparse.SparseRows`); see
    :func:`sthfast.reference.adaptive_graph`."""
    _check_points("m1", m1, k)
    return _impl("adaptive_graph", backend, m1.device, m1.shape[0])(m1, m2, k, alpha)


def static_graph(adjacency: Tensor, *, backend: str = "auto"):
    """A fixed adjacency ``[N, N]``, dense or sparse (COO), in the form ``backend``'s
    ``graph_mixprop`` takes (the reference makes it dense)."""
    if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"adjacency must be [N, N], got {list(adjacency.shape)}")
    return _impl("static_graph", backend, adjacency.device, adjacency.shape[0])(adjacency)


def graph_mixprop(x: Tensor, graph, depth: int, beta: float, transpose: bool = False, *,
                  backend: str = "auto") -> Tensor:
    """MixProp with ``P = D^-1 (A + I)`` (``A^T`` when ``transpose``): ``x[B, C, N, T]`` ->
    ``[B, C (depth + 1), N, T]``."""
    _check_fits(x, graph)
    return _impl("graph_mixprop", backend, x.device)(x, graph, depth, beta, transpose)


def _reference_hypergraph_mixprop(x: Tensor, incidence: Tensor, depth: int, beta: float) -> Tensor:
    """Dense, in the cheaper order: the ``N x N`` operator formed once (O(N^3)) when the columns
    propagated per incidence (``F``, ``depth`` times) outnumber the nodes, else the two halves per
    step (O(N^2 F)): the model's wide batches at small N, vs the benchmarks' narrow ones at large N."""
    n = x.shape[2]
    columns = x.numel() // max(n, 1) // (x.shape[0] if incidence.dim() == 3 else 1)
    if n < depth * columns:
        operator = reference.hypergraph_operator(incidence)
        return reference.mixprop(x, lambda h: reference.apply_operator(h, operator), depth, beta)
    halves = reference.hypergraph_halves(incidence)                 # once per call, not per step
    return reference.mixprop(x, lambda h: reference.hypergraph_propagate(h, incidence, halves),
                             depth, beta)


def _reference_graph_mixprop(x: Tensor, adjacency: Tensor, depth: int, beta: float,
                             transpose: bool) -> Tensor:
    operator = reference.graph_operator(adjacency.T if transpose else adjacency)
    return reference.mixprop(x, lambda h: reference.apply_operator(h, operator), depth, beta)


def _reference_topk(query: Tensor, key: Tensor, k: int, metric: str, self_first: bool,
                    approximate: bool) -> Tensor:
    return reference.topk_neighbors(query, key, k, metric, self_first)   # always exact


for _op, _fn in (("pool_patch", reference.pool_patch), ("topk_neighbors", _reference_topk),
                 ("knn_hypergraph", reference.knn_hypergraph),
                 ("hypergraph_mixprop", _reference_hypergraph_mixprop),
                 ("adaptive_graph", reference.adaptive_graph),
                 ("graph_mixprop", _reference_graph_mixprop),
                 ("static_graph", lambda a: a.to_dense() if a.layout != torch.strided else a)):
    register(_op, "reference", _fn)
for _op, _fn in sparse.OPS.items():  # torch's sparse CSR kernels: CPU (MKL) and CUDA (cuSPARSE)
    register(_op, "sparse", _fn, supports=lambda device: device.type in ("cpu", "cuda"))


def _cpp_runs(device: torch.device) -> bool:
    return device.type == "cpu" and extension.available()


register("pool_patch", "cpp", extension.pool_patch, supports=_cpp_runs)
# the extension's fused MixProp over sparse's structures: auto picks the propagations on the CPU;
# the constructors are sparse's, registered so that naming ``cpp`` works, never picked by auto
# (which resolves them on their own: the tiled search or FAISS, by size)
for _op, _fn in sparse.backend_ops(sparse.spmm, sparse.topk, mixprop=extension.mixprop).items():
    if _op in ("hypergraph_mixprop", "graph_mixprop"):
        register(_op, "cpp", _fn, supports=_cpp_runs)
    elif _op != "topk_neighbors":
        register(_op, "cpp", _fn, supports=_nowhere, runs=_cpp_runs)
register("pool_patch", "cuda", extension.pool_patch,
         supports=lambda device: device.type == "cuda" and extension.has_cuda_kernels())


def _triton_auto(device: torch.device) -> bool:
    return device.type == "cuda" and optional_deps.probe("triton").ok and optional_deps.triton_gpu_ok(device)


def _triton_runs(device: torch.device) -> bool:
    return _triton_auto(device) or (device.type == "cpu" and optional_deps.triton_interpreter())


def _triton(op: str) -> Callable:
    def run(*args):
        from ..backends.triton import OPS  # noqa: PLC0415 (imports Triton: only when the backend runs)

        return OPS[op](*args)

    return run


for _op in sparse.OPS:
    register(_op, "triton", _triton(_op), supports=_triton_auto, runs=_triton_runs)


# FAISS: auto picks its searches on large point sets; its propagation ops are sparse's, registered
# so that naming ``faiss`` works, and never picked by auto (which resolves propagation on its own)
for _op, _fn in faiss_search.OPS.items():
    if _op in ("topk_neighbors", "knn_hypergraph", "adaptive_graph"):
        register(_op, "faiss", _fn, supports=faiss_search.runs_on, min_points=FAISS_MIN_POINTS)
    else:
        register(_op, "faiss", _fn, supports=_nowhere, runs=faiss_search.runs_on)

OPS = tuple(_REGISTRY)
