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
    again for a temporary while the square's backward runs) and the gradients of ``x``; plus the
    kernel's per-thread scratch, ``threads`` tiles of ``N x width`` values (6 of them backward,
    ``D + 2`` forward; :func:`fused_tile_width`). A fixed :data:`FUSED_WORKSPACE_BYTES` besides.
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

from .sparse.neighbors import MARGIN   # candidates searched beyond k

WORKSPACE_BYTES = 300 << 20
FUSED_WORKSPACE_BYTES = 40 << 20
# the fused kernel's tiles (csrc/cpu/mixprop_kernels.h: kStepTileBytes, kMinWidth, kMaxWidth)
_STEP_TILE_BYTES, _MIN_WIDTH, _MAX_WIDTH = 512 << 10, 48, 384


def fused_tile_width(n: int, c: int, t: int) -> int:
    """Values per row of the fused MixProp's tiles at ``n`` nodes, ``c`` channels of ``t`` steps."""
    width = min(max(_STEP_TILE_BYTES // 4 // max(n, 1), _MIN_WIDTH), _MAX_WIDTH)
    wanted = min(max(-(-width // max(t, 1)), 1), max(c, 1))
    tiles = -(-c // wanted)
    return -(-c // tiles) * t


def hypergraph_stage_bytes(n: int, k: int = 3, d: int = 40, b: int = 1, c: int = 32, t: int = 12,
                           depth: int = 2, backward: bool = False, fused: bool = True,
                           threads: int = 2) -> int:
    """Predicted peak bytes above the inputs of construction + hypergraph MixProp, on the fused
    path (``fused``, with ``threads`` worker threads) or the sparse one."""
    cand = k + MARGIN
    structure = n * (4 * cand * d + 12 * cand + 48 * k + 4 * k * d + 16)
    unit = 4 * b * c * n * t
    if not fused:
        activations = unit * (2 * depth + 3) + (unit * (2 * depth + 5) if backward else 0)
        return WORKSPACE_BYTES + structure + activations
    scratch = threads * 4 * n * fused_tile_width(n, c, t) * (6 if backward else depth + 2)
    activations = unit * (depth + 1) + (unit * (3 * depth + 5) if backward else 0)
    return FUSED_WORKSPACE_BYTES + structure + activations + scratch
