"""Peak-memory model of the hypergraph stage (what grows with N), checked against measurements in
``benchmarks/large_n.py`` (``benchmarks/RESULTS.md``); its terms are derived in
``sthfast/backends/README.md``."""

from __future__ import annotations

from .backends.sparse.topk_neighbors import MARGIN  # candidates searched beyond k

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
