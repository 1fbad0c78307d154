"""The op dispatch point: the model calls only these functions; ``backend`` picks the implementation.

A backend is a family of fast paths: naming one selects it for the ops it implements (an error
where it cannot run on the tensors' device) and leaves the ops it does not implement to ``auto``.

Each op has a reference implementation (``sthfast.reference.<op>``, same signature). Every backend
module exports ``IMPLEMENTATIONS`` (:class:`sthfast.backends.Implementation` records), registered
below; ``backend="auto"`` takes the first backend in :data:`AUTO_ORDER` whose record accepts the
tensors' device (and, for a neighbour search, the number of points: FAISS only from
:data:`FAISS_MIN_POINTS`), and the reference when none does, so ``auto`` never fails where the
reference works.

Constructor ops (``knn_hypergraph``, ``adaptive_graph``) return a structure that the same
backend's propagation ops (``hypergraph_mixprop``, ``graph_mixprop`` and their projected forms,
the MixProp followed by its 1x1 projection) understand: a dense tensor
for ``reference``, :class:`sthfast.backends.sparse.SparseRows` for every other backend, so ``auto`` may
resolve each op on its own (a dense structure goes to the reference). A propagation op named with a
backend of the other kind is an error that names the backends which build what it was given. A
backend registers both ops of a pair or neither (see :data:`PAIRS`; a test checks every registered
backend).

An implementation may be an alias of another backend's (``Implementation.same_as``: ``cpp``'s
structure builders are ``sparse``'s); :func:`implementations` leaves aliases out on request.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .. import reference
from ..backends import AUTO_ORDER, BACKENDS, Implementation, extension, faiss_search, sparse, triton
from ..backends.faiss_search import FAISS_MIN_POINTS as FAISS_MIN_POINTS  # re-exported: ops.FAISS_MIN_POINTS

PAIRS = (("knn_hypergraph", "hypergraph_mixprop"), ("adaptive_graph", "graph_mixprop"),
         ("static_graph", "graph_mixprop"), ("knn_hypergraph", "projected_hypergraph_mixprop"),
         ("adaptive_graph", "projected_graph_mixprop"), ("static_graph", "projected_graph_mixprop"))

_REGISTRY: dict[str, dict[str, Implementation]] = {}       # op name -> backend name -> implementation


def register(implementation: Implementation) -> None:
    """Add (or replace) ``implementation.backend``'s implementation of ``implementation.op``."""
    _REGISTRY.setdefault(implementation.op, {})[implementation.backend] = implementation


def implementations(op: str, aliases: bool = True) -> dict[str, Implementation]:
    """Backend name -> implementation of ``op``: every one registered, whether it runs here or not
    (without ``aliases``: only those that run a function of their own)."""
    return {name: impl for name, impl in _REGISTRY[op].items() if aliases or impl.same_as is None}


def resolve(op: str, backend: str, device: torch.device | str, points: int = 0) -> str:
    """The backend that runs ``op`` on ``device`` (over ``points`` points, for a neighbour
    search) when asked for ``backend``."""
    device = torch.device(device)
    impls = _REGISTRY[op]
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {list(BACKENDS)}")
    if backend == "auto" or backend not in impls:  # a backend that lacks the op leaves it to auto
        return next(name for name in AUTO_ORDER   # sizes first: small searches never probe FAISS
                    if name in impls and points >= impls[name].min_points and impls[name].auto_on(device))
    if not impls[backend].runs(device):
        usable = [name for name in AUTO_ORDER if name in impls and impls[name].runs(device)]
        raise ValueError(f"backend {backend!r} cannot run {op} on {device}; usable here: {usable}")
    return backend


def _impl(op: str, backend: str, device: torch.device, points: int = 0) -> Callable:
    return _REGISTRY[op][resolve(op, backend, device, points)].fn


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


def _propagation_backend(op: str, constructor: str, x: Tensor, structure, backend: str) -> str:
    """The backend that propagates ``x`` over ``structure`` (built by ``constructor``) when asked
    for ``backend``: ``auto`` takes the reference for a dense structure; a named backend must take
    the structure's kind (dense: the reference's; :class:`SparseRows`: every other backend's)."""
    if not isinstance(structure, (Tensor, sparse.SparseRows)):
        raise ValueError(f"{op} propagates over what ops.{constructor} returns (a dense tensor or "
                         f"SparseRows), got {type(structure).__name__}")
    _check_fits(x, structure)
    dense = isinstance(structure, Tensor)
    if backend == "auto" and dense:
        return "reference"
    chosen = resolve(op, backend, x.device)
    if (chosen == "reference") != dense:
        builders = [name for name in _REGISTRY[constructor] if (name == "reference") == dense]
        kind = "a dense tensor" if dense else "SparseRows"
        raise ValueError(f"backend {chosen!r} cannot propagate over {kind}, which backend(s) {builders} build: "
                         f"build the structure with ops.{constructor} on the backend that propagates over it")
    return chosen


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
    """MixProp with ``P = D_v^-1 H D_e^-1 H^T``: ``x[B, C, N, T]`` -> ``[B, C (depth + 1), N, T]``;
    see :func:`sthfast.reference.hypergraph_mixprop`."""
    chosen = _propagation_backend("hypergraph_mixprop", "knn_hypergraph", x, hypergraph, backend)
    return _REGISTRY["hypergraph_mixprop"][chosen].fn(x, hypergraph, depth, beta)


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
    ``[B, C (depth + 1), N, T]``; see :func:`sthfast.reference.graph_mixprop`."""
    chosen = _propagation_backend("graph_mixprop", "adaptive_graph", x, graph, backend)
    return _REGISTRY["graph_mixprop"][chosen].fn(x, graph, depth, beta, transpose)


def _check_projection(x: Tensor, depth: int, weight: Tensor, bias: Tensor | None) -> None:
    """``weight [C_out, C (depth + 1)]`` and ``bias [C_out]`` project the MixProp of ``x [B, C, N, T]``."""
    if weight.dim() != 2 or x.dim() != 4 or weight.shape[1] != x.shape[1] * (depth + 1):
        raise ValueError(f"weight {list(weight.shape)} must be [C_out, C (depth + 1)] = [C_out, "
                         f"{x.shape[1] * (depth + 1) if x.dim() == 4 else 'C (depth + 1)'}] for x {list(x.shape)} "
                         f"and depth {depth}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias {list(bias.shape)} must be [C_out] = [{weight.shape[0]}]")


def projected_hypergraph_mixprop(x: Tensor, hypergraph, depth: int, beta: float, weight: Tensor,
                                 bias: Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """:func:`hypergraph_mixprop` then its 1x1 projection ``weight [C_out, C (depth + 1)]`` (and
    ``bias [C_out]``): ``x[B, C, N, T]`` -> ``[B, C_out, N, T]``. ``cpp`` never writes the
    ``(depth + 1) C`` expansion (:mod:`sthfast.backends.projected_mixprop`); see
    :func:`sthfast.reference.projected_hypergraph_mixprop`."""
    _check_projection(x, depth, weight, bias)
    chosen = _propagation_backend("projected_hypergraph_mixprop", "knn_hypergraph", x, hypergraph, backend)
    return _REGISTRY["projected_hypergraph_mixprop"][chosen].fn(x, hypergraph, depth, beta, weight, bias)


def projected_graph_mixprop(x: Tensor, graph, depth: int, beta: float, weight: Tensor, bias: Tensor | None = None,
                            transpose: bool = False, *, backend: str = "auto") -> Tensor:
    """:func:`graph_mixprop` then its 1x1 projection ``weight [C_out, C (depth + 1)]`` (and
    ``bias [C_out]``): ``x[B, C, N, T]`` -> ``[B, C_out, N, T]``; see
    :func:`projected_hypergraph_mixprop` and :func:`sthfast.reference.projected_graph_mixprop`."""
    _check_projection(x, depth, weight, bias)
    chosen = _propagation_backend("projected_graph_mixprop", "adaptive_graph", x, graph, backend)
    return _REGISTRY["projected_graph_mixprop"][chosen].fn(x, graph, depth, beta, weight, bias, transpose)


def dropout(x: Tensor, p: float, training: bool, *, backend: str = "auto") -> Tensor:
    """Zero each entry of ``x`` with probability ``p`` and scale the rest by ``1 / (1 - p)`` when
    ``training`` (``x`` itself otherwise); see :func:`sthfast.reference.dropout`. ``cpp`` hashes a
    seed drawn from torch's generator with each entry's index instead of drawing a Bernoulli
    variable per entry: the same distribution, other draws."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p={p} must be in [0, 1]")
    return _impl("dropout", backend, x.device)(x, p, training)


for _backend in (reference, sparse, extension, triton, faiss_search):
    for _implementation in _backend.IMPLEMENTATIONS:
        register(_implementation)

OPS = tuple(_REGISTRY)
