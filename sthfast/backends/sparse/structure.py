"""A sparse matrix stored for both propagation directions, and the builders the model needs.

Every spatial operator of the model is a sparse ``R x C`` matrix ``S`` applied over the node axis:
the hypergraph's ``H^T`` (rows: hyperedges, columns: member nodes, values: membership weights) and
the adaptive graph ``A`` (rows: nodes, columns: the nodes they read). Propagation needs ``S x`` and
``S^T x``, so the index structure is kept in CSR form for both directions; the values stay in one
(row-major) order so that their gradient has one layout.

Sizes are fixed by the inputs' shapes (``nnz = R k`` for the KNN structures), so building them on
CUDA needs no host synchronisation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ... import reference


class SparseRows(NamedTuple):
    """``S`` (``R x C``, ``nnz`` stored entries) in CSR for ``S`` and for ``S^T``.

    ``row_ptr [R+1]``, ``col [nnz]``, ``row [nnz]``: CSR of ``S`` (entry p is ``(row[p], col[p])``).
    ``col_ptr [C+1]``, ``t_col [nnz]``, ``from_t [nnz]``: CSR of ``S^T``; its q-th entry is the
    forward entry ``from_t[q]`` (row ``col[from_t[q]]`` of ``S^T``, column ``t_col[q]``).
    ``val [nnz]``: the values, differentiable, in forward order.
    No two entries share a ``(row, col)`` pair (torch's CSR kernels assume it; every builder here
    guarantees it).
    ``blocks``: None when ``S`` is shared by every sample; ``B`` when ``S`` is block diagonal with one
    ``R/B x C/B`` block per sample (the ``dynamic`` hypergraph).
    """

    row_ptr: Tensor
    col: Tensor
    row: Tensor
    col_ptr: Tensor
    t_col: Tensor
    from_t: Tensor
    val: Tensor
    blocks: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.row_ptr.shape[0] - 1, self.col_ptr.shape[0] - 1

    def row_sums(self) -> Tensor:
        """``S 1``: ``[R]``, differentiable in ``val``."""
        return self.val.new_zeros(self.shape[0]).index_add(0, self.row, self.val)

    def col_sums(self) -> Tensor:
        """``S^T 1``: ``[C]``, differentiable in ``val``."""
        return self.val.new_zeros(self.shape[1]).index_add(0, self.col, self.val)

    def to_dense(self) -> Tensor:
        """The dense ``[R, C]`` matrix (for tests and small N only)."""
        return self.val.new_zeros(self.shape).index_put((self.row, self.col), self.val, accumulate=True)


def from_entries(row: Tensor, col: Tensor, val: Tensor, num_rows: int, num_cols: int,
                 blocks: int | None = None) -> SparseRows:
    """Build from entries already sorted by row (``row`` non-decreasing)."""
    rows = torch.arange(num_rows + 1, device=row.device)
    row_ptr = torch.searchsorted(row, rows)
    from_t = torch.sort(col, stable=True).indices                   # entries grouped by column
    col_ptr = torch.searchsorted(col[from_t], torch.arange(num_cols + 1, device=col.device))
    return SparseRows(row_ptr, col, row, col_ptr, row[from_t], from_t, val, blocks)


def from_ell(col: Tensor, val: Tensor, num_cols: int) -> SparseRows:
    """Rows with exactly ``k`` distinct entries each: ``col, val [..., R, k]`` (leading dim = blocks,
    whose column indices are local to their block) -> one block-diagonal ``SparseRows``."""
    col, order = col.sort(dim=-1)                                    # CSR: columns sorted in a row
    val = val.gather(-1, order)
    blocks = col.shape[0] if col.dim() == 3 else None
    copies = 1 if blocks is None else blocks
    if blocks is not None:
        col = col + num_cols * torch.arange(blocks, device=col.device).view(-1, 1, 1)
    num_rows = copies * col.shape[-2]
    row = torch.arange(num_rows, device=col.device).repeat_interleave(col.shape[-1])
    return from_entries(row, col.reshape(-1), val.reshape(-1), num_rows, copies * num_cols, blocks)


def with_self_loops(adjacency: Tensor) -> SparseRows:
    """``A + I`` from an ``[N, N]`` adjacency, dense or sparse (COO), the form the sparse graph
    MixProp takes. Finding the entries costs one host synchronisation: build it once per adjacency,
    not per step."""
    n = adjacency.shape[0]
    if adjacency.layout == torch.strided:
        row, col = adjacency.nonzero(as_tuple=True)
        weight = adjacency[row, col]
    else:
        adjacency = adjacency.to_sparse_coo().coalesce()
        (row, col), weight = adjacency.indices(), adjacency.values()
        nonzero = weight != 0
        row, col, weight = row[nonzero], col[nonzero], weight[nonzero]
    loops = torch.arange(n, device=adjacency.device)
    entries = torch.sparse_coo_tensor(torch.stack([torch.cat([row, loops]), torch.cat([col, loops])]),
                                      torch.cat([weight, weight.new_ones(n)]),
                                      (n, n), check_invariants=False).coalesce()  # sums A_ii + 1, sorts
    (row, col), val = entries.indices(), entries.values()
    return from_entries(row, col, val, n, n)


def merged_knn_hypergraph(z: Tensor, idx: Tensor, binary: bool, temperature: float | Tensor) -> SparseRows:
    """``H^T`` of the KNN hypergraph from the neighbour lists ``idx [..., N, k]`` (self first).

    The same hypergraph as :func:`sthfast.reference.knn_hypergraph`: hyperedges with equal node sets
    are merged into the one with the smallest centre, their weights averaged; a merged-away
    hyperedge keeps its ``k`` entries with weight 0 (fixed size, so no host synchronisation).
    Equal sets are found by a lexicographic sort of the sorted member lists, O(N k log N).
    """
    weight = reference.membership_weights(z, idx, binary, temperature)  # [..., N, k]
    members, order = idx.sort(dim=-1)                                # node sets, sorted
    weight = weight.gather(-1, order)
    n, k = idx.shape[-2], idx.shape[-1]
    flat = members.reshape(-1, k)                                    # [G, k], G = blocks * N
    if idx.dim() == 3:
        block = torch.arange(idx.shape[0], device=idx.device).repeat_interleave(n)
        flat = torch.cat([block.unsqueeze(1), flat], 1)             # equal sets only within a block
    perm = torch.arange(flat.shape[0], device=idx.device)
    for j in reversed(range(flat.shape[1])):                         # LSD radix-style stable sorts
        perm = perm[torch.sort(flat[perm, j], stable=True).indices]
    ordered = flat[perm]
    starts = torch.ones(flat.shape[0], dtype=torch.bool, device=idx.device)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(-1)
    group = torch.empty_like(perm)
    group[perm] = torch.cumsum(starts, 0) - 1                        # [G] set id of each hyperedge
    # stable sorts keep equal sets in hyperedge order, so a group's first member is its smallest
    leader = torch.empty_like(perm)
    leader[perm] = perm[torch.cummax(torch.where(starts, torch.arange(len(perm), device=idx.device),
                                                 0), 0).values]
    keep = leader == torch.arange(len(perm), device=idx.device)
    flat_w = weight.reshape(-1, k)
    copies = torch.zeros(flat.shape[0], dtype=flat_w.dtype, device=idx.device).index_add(
        0, group, torch.ones_like(flat_w[:, 0]))
    merged = flat_w.new_zeros(flat_w.shape).index_add(0, group, flat_w) / copies.unsqueeze(1)
    merged_w = merged[group] * keep.unsqueeze(1).to(flat_w.dtype)
    return from_ell(members, merged_w.reshape(weight.shape), n)
