"""Peak-memory model of the hypergraph stage (what grows with N), checked against measurements in
``benchmarks/large_n.py`` (see ``benchmarks/RESULTS.md``).

For node features ``z [N, d]``, ``k`` members per hyperedge, and MixProp of depth ``D`` over
``x [B, C, N, T]`` (float32, 4-byte values, 8-byte indices; ``c = k + 4`` search candidates;
``u = 4 B C N T`` bytes, one activation the size of ``x``):

* search and structure: ``N (4 c d + 12 c + 48 k + 4 k d + 16)`` bytes: the candidates' gathered
  features for the exact re-ranking, candidate indices and scores, ``H^T`` stored in both CSR
  directions (indices, pointers, values), and the membership weights' gathered features;
* propagation, by path:

  - ``fused`` (the extension's MixProp, what ``auto`` runs on the CPU): forward ``(D + 1) u``, the
    output; with the backward pass of the benchmark's loss (``y.square().mean()``) add
    ``(3 D + 5) u``: the loss's square and the output's gradient (``(D + 1) u`` each, and as much
    again for a temporary while the square's backward runs), the gradient of ``x`` (``u``) and one
    ``u`` of allocator slack (fitted); plus the
    kernel's scratch, per worker thread (at most one per work item): ``D + 2`` tiles of
    ``N x width`` values forward, 6 backward (``width`` from the kernel's tiling rule,
    :func:`sthfast.backends.extension.mixprop_tile_width`), and the backward's value-gradient accumulators
    (``2 k N`` values per thread). Nothing else: no library workspace is left on this path
    (measured / model 0.9 to 1.2 from N = 20,000 to 100,000 in benchmarks/RESULTS.md, where the
    repeated calls' allocator slack is in the measurement).
  - ``sparse`` (torch's CSR products, step by step): forward ``(2 D + 3) u``: the input, its
    node-major copy, the ``D`` propagated steps, one hyperedge-side temporary, and the
    ``(D + 1)``-block output; with the backward pass add ``(2 D + 5) u``: the gradients of the same
    activations, plus the incoming output gradient and its node-major copy; and a fixed
    :data:`WORKSPACE_BYTES` for the libraries' workspaces (FAISS search blocks, MKL sparse
    products, allocator slack), measured.

Nothing in it is ``N x N``. ``benchmarks/large_n.py`` measures the stage at N = 20,000, 50,000 and
100,000 and RESULTS.md prints measured / model. The whole model adds, per spatial layer, the
temporal convolutions' activations (a few ``u`` each), the same propagation for the adaptive graph
with ``subgraph_size`` entries per row, and the per-node parameters.
"""

from __future__ import annotations

from .backends.sparse.neighbors import MARGIN   # candidates searched beyond k

WORKSPACE_BYTES = 300 << 20


def hypergraph_stage_bytes(n: int, k: int = 3, d: int = 40, b: int = 1, c: int = 32, t: int = 12,
                           depth: int = 2, backward: bool = False, fused: bool | None = None,
                           threads: int = 2) -> int:
    """Predicted peak bytes above the inputs of construction + hypergraph MixProp, on the fused
    path (``fused``, with ``threads`` worker threads) or the sparse one; by default the path that
    ``auto`` runs on the CPU here."""
    if fused is None:
        from .ops import resolve  # noqa: PLC0415

        fused = resolve("hypergraph_mixprop", "auto", "cpu") == "cpp"
    cand = k + MARGIN
    structure = n * (4 * cand * d + 12 * cand + 48 * k + 4 * k * d + 16)
    unit = 4 * b * c * n * t
    if not fused:
        activations = unit * (2 * depth + 3) + (unit * (2 * depth + 5) if backward else 0)
        return WORKSPACE_BYTES + structure + activations
    from .backends.extension import mixprop_tile_width  # noqa: PLC0415 (the kernel's own tiling rule)

    width = mixprop_tile_width(n, c, t)
    workers = min(threads, b * -(-c * t // width))                 # at most one per work item
    tiles = max(6, depth + 2) if backward else depth + 2
    scratch = workers * (4 * n * width * tiles + (4 * 2 * k * n if backward else 0))
    activations = unit * (depth + 1) + (unit * (3 * depth + 5) if backward else 0)
    return structure + activations + scratch
