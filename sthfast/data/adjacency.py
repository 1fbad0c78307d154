"""Readers for adjacency matrices: dense ``.npy`` / ``.npz`` / ``.csv``, or a ``from,to,cost`` edge
list (the PEMS format), with node ids mapped through an id list when the edges use sensor ids."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from .formats import DataError, check_numpy_file

WEIGHTINGS = ("binary", "cost", "gaussian")
NPZ_KEYS = ("adj", "adjacency", "dist_km", "A")


def load_adjacency(path: str | Path, num_nodes: int, *, ids: str | Path | np.ndarray | None = None,
                   weighting: str = "binary", key: str | None = None) -> np.ndarray:
    """Read an ``[N, N]`` float32 adjacency.

    Args:
        path: ``.npy`` (dense), ``.npz`` (array ``key`` or the first of ``adj``, ``adjacency``,
            ``dist_km``, ``A``), or ``.csv``: a dense numeric matrix, or an edge list whose header
            starts ``from,to`` with an optional third weight column (``cost`` / ``distance``).
        num_nodes: N of the data.
        ids: for edge lists naming sensor ids rather than indices ``0..N-1``: the ids in node order
            (an array, or a text file with one id per line; a ``.txt`` beside the ``.csv`` with the
            same stem is used when present, as PEMS03 ships it).
        weighting: edge-list weights: ``binary`` (1 per edge), ``cost`` (the third column as is),
            ``gaussian`` (``exp(-(cost / std(cost))^2)``, DCRNN's kernel). Edges are symmetric.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{file}: adjacency file not found")
    if weighting not in WEIGHTINGS:
        raise DataError(f"{file}: weighting={weighting!r} is not one of {list(WEIGHTINGS)}")
    suffix = file.suffix.lower()
    if suffix in (".npy", ".npz"):
        adj = _read_numpy(file, key)
    elif suffix == ".csv":
        adj = _read_csv_adjacency(file, num_nodes, ids, weighting)
    else:
        raise DataError(f"{file}: unknown adjacency format {suffix!r}; expected .npy, .npz or .csv")
    adj = np.asarray(adj, dtype=np.float32)
    if adj.shape != (num_nodes, num_nodes):
        raise DataError(f"{file}: adjacency is {list(adj.shape)} but the data has N={num_nodes} nodes")
    if not np.isfinite(adj).all() or (adj < 0).any():
        raise DataError(f"{file}: adjacency must be finite and non-negative")
    return adj


def _read_numpy(file: Path, key: str | None) -> np.ndarray:
    try:
        check_numpy_file(file)
        if file.suffix.lower() == ".npy":
            return np.load(file, allow_pickle=False)
        with np.load(file, allow_pickle=False) as z:
            name = key or next((k for k in NPZ_KEYS if k in z.files), None)
            if name is None or name not in z.files:
                raise DataError(f"{file}: no adjacency array {key or list(NPZ_KEYS)}; arrays: {z.files}")
            return z[name]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{file}: not a readable numpy file ({err})") from None


def _read_csv_adjacency(file: Path, num_nodes: int, ids, weighting: str) -> np.ndarray:
    with open(file, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise DataError(f"{file}: empty adjacency file")
    head = [c.strip().lower() for c in rows[0]]
    if head[:2] != ["from", "to"]:
        try:
            return np.array([[float(c) for c in row] for row in rows], dtype=np.float64)
        except ValueError as err:
            raise DataError(f"{file}: neither a numeric matrix nor a from,to[,cost] edge list ({err})") from None
    widths = {len(row) for row in rows[1:]}
    if len(widths) > 1 or (widths and min(widths) < 2):
        raise DataError(f"{file}: edge rows have {sorted(widths)} columns; expected from,to[,cost] on every row")
    try:
        edges = np.array([[float(c) for c in row[:3]] for row in rows[1:]], dtype=np.float64)
    except ValueError as err:
        raise DataError(f"{file}: non-numeric edge ({err})") from None
    if edges.size == 0:
        return np.zeros((num_nodes, num_nodes))
    index = _node_index(file, ids, num_nodes)
    src, dst = (_map(file, edges[:, i], index, num_nodes) for i in (0, 1))
    cost = edges[:, 2] if edges.shape[1] > 2 else np.ones(len(edges))
    if weighting == "binary":
        weight = np.ones(len(edges))
    elif weighting == "gaussian":
        weight = np.exp(-np.square(cost / (cost.std() or 1.0)))
    else:
        weight = cost
    adj = np.zeros((num_nodes, num_nodes))
    adj[src, dst] = weight
    adj[dst, src] = weight
    return adj


def _node_index(file: Path, ids, num_nodes: int) -> dict[int, int] | None:
    if ids is None and file.with_suffix(".txt").is_file():
        ids = file.with_suffix(".txt")
    if ids is None:
        return None
    source = ids if isinstance(ids, (str, Path)) else "ids"
    try:
        if isinstance(ids, (str, Path)):
            ids = Path(ids).read_text().split()
        ids = [int(i) for i in np.asarray(ids).ravel()]
    except (OSError, ValueError) as err:
        raise DataError(f"{file}: cannot read the node id list {source} ({err})") from None
    if len(ids) != num_nodes:
        raise DataError(f"{file}: the id list has {len(ids)} ids but the data has N={num_nodes} nodes")
    return {node_id: i for i, node_id in enumerate(ids)}


def _map(file: Path, column: np.ndarray, index: dict[int, int] | None, num_nodes: int) -> np.ndarray:
    nodes = column.astype(np.int64)
    if index is None:
        bad = nodes[(nodes < 0) | (nodes >= num_nodes)]
        if bad.size:
            raise DataError(f"{file}: edge endpoints {bad[:5].tolist()} outside 0..{num_nodes - 1} "
                            "(pass the sensor id list with ids=)")
        return nodes
    missing = sorted({int(n) for n in nodes if int(n) not in index})
    if missing:
        raise DataError(f"{file}: edge endpoints {missing[:5]} are not in the id list")
    return np.array([index[int(n)] for n in nodes])
