"""Named stages of a forward pass, for the profiler (``python/profile_hypergraph.py``) and for
``torch.profiler`` traces: each is a ``torch.profiler.record_function`` range ``sthfast.<name>``,
which costs about a microsecond when no profiler is recording.

:data:`STAGES` are the top-level stages of the model's forward pass, in order: they do not overlap,
so their times add up to the forward's (less the untimed glue between them). :data:`SUBSTAGES`
nest inside a stage (the hypergraph MixProp's node -> hyperedge and hyperedge -> node products).
"""

from __future__ import annotations

from torch.profiler import record_function

STAGES = ("temporal_stream", "graph_construction", "node_features", "neighbour_search",
          "hyperedge_structure", "input_convolutions", "temporal_convolutions", "graph_mixprop",
          "hypergraph_mixprop", "residual_and_norm", "output_convolutions", "fusion")
SUBSTAGES = {"hypergraph_mixprop": ("v2e", "e2v")}
PREFIX = "sthfast."


def stage(name: str) -> record_function:
    """``with stage("neighbour_search"): ...`` marks a range named ``sthfast.neighbour_search``."""
    return record_function(PREFIX + name)
