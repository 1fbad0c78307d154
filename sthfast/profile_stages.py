"""Named stages of a forward pass, for the profiler (:mod:`sthfast.profiler`, ``sthfast profile``) and for
``torch.profiler`` traces: each is a ``torch.profiler.record_function`` range ``sthfast.<name>``,
which costs about a microsecond when no profiler is recording.

:data:`STAGES` are the top-level stages of the model's forward pass, in order: they do not overlap,
so their times add up to the forward's (less the untimed glue between them). :data:`SUBSTAGES`
nest inside a stage (the hypergraph MixProp's node -> hyperedge and hyperedge -> node products).
"""

from __future__ import annotations

from torch.profiler import record_function

Row = tuple[str, bool, list[tuple[float, float] | None]]

STAGES = ("input_checks", "temporal_stream", "graph_construction", "node_features", "neighbour_search",
          "hyperedge_structure", "input_convolutions", "temporal_convolutions", "graph_mixprop",
          "hypergraph_mixprop", "mixprop_projection", "residual_and_norm", "output_convolutions", "identity_head",
          "fusion")
SUBSTAGES = {"hypergraph_mixprop": ("v2e", "e2v")}
PREFIX = "sthfast."


def stage(name: str) -> record_function:
    """``with stage("neighbour_search"): ...`` marks a range named ``sthfast.neighbour_search``."""
    return record_function(PREFIX + name)


def table_rows(results: dict[str, dict[str, float]]) -> list[Row]:
    """The rows of a per-stage table over scenarios ``results`` (scenario -> stage -> ms), for
    any renderer: ``(label, nested, cells)``, each cell ``(ms, share of the forward)`` or None where
    the scenario has no such stage (a stage or substage no scenario has is left out: the fused
    MixProp has no substages; a profile recorded before a stage existed lacks it). After the
    stages and substages: their sum, the measured forward, the backward and the total."""
    keys = [(name, False) for name in STAGES] + [(sub, True) for subs in SUBSTAGES.values() for sub in subs]
    keys += [("sum of stages", False), ("forward", False), ("backward", False), ("total", False)]
    rows = []
    for key, nested in keys:
        cells = []
        for r in results.values():
            value = sum(r.get(s, 0.0) for s in STAGES) if key == "sum of stages" else r.get(key)
            cells.append((value, value / r["forward"]) if value else None)
        if not any(cells):
            continue
        rows.append(("forward (measured)" if key == "forward" else key, nested, cells))
    return rows
