"""Peak-memory model of the hypergraph stage on the sparse path (what grows with N), checked
against measurements in ``benchmarks/large_n.py`` (see ``benchmarks/RESULTS.md``).

For node features ``z [N, d]``, ``k`` members per hyperedge, and MixProp of depth ``D`` over
``x [B, C, N, T]`` (float32, 4-byte values, 8-byte indices; ``c = k + 4`` search candidates):

* search and structure: ``N (4 c d + 12 c + 48 k + 4 k d + 16)`` bytes: the candidates' gathered
  features for the exact re-ranking, candidate indices and scores, ``H^T`` stored in both CSR
  directions (indices, pointers, values), and the membership weights' gathered features;
* propagation forward: ``4 B C N T (2 D + 3)`` bytes: the input, its node-major copy, the ``D``
  propagated steps, one hyperedge-side temporary, and the ``(D + 1)``-block output;
* with the backward pass, add ``4 B C N T (2 D + 5)`` bytes: the gradients of the same activations,
  plus the incoming output gradient and its node-major copy;
* a fixed :data:`WORKSPACE_BYTES` for the libraries' workspaces (FAISS search blocks, MKL sparse
  products, allocator slack), measured.

Nothing in it is ``N x N``. ``benchmarks/large_n.py`` measures the stage at N = 20,000, 50,000 and
100,000 and RESULTS.md prints measured / model. The whole model adds, per spatial layer, the temporal convolutions'
activations (a few ``4 B C N T`` each), the same propagation for the adaptive graph with
``subgraph_size`` entries per row, and the per-node parameters.
"""

from __future__ import annotations

from .sparse.neighbors import MARGIN   # candidates searched beyond k
WORKSPACE_BYTES = 300 << 20


def hypergraph_stage_bytes(n: int, k: int = 3, d: int = 40, b: int = 1, c: int = 32, t: int = 12,
                           depth: int = 2, backward: bool = False) -> int:
    """Predicted peak bytes above the inputs of construction + hypergraph MixProp (sparse path)."""
    cand = k + MARGIN
    structure = n * (4 * cand * d + 12 * cand + 48 * k + 4 * k * d + 16)
    unit = 4 * b * c * n * t
    activations = unit * (2 * depth + 3) + (unit * (2 * depth + 5) if backward else 0)
    return WORKSPACE_BYTES + structure + activations
