"""Reference ops: plain, dense PyTorch, written for clarity, float64-safe and gradcheck-able.

They are the truth every fast path is tested against, and the runtime fallback of ``backend="auto"``.
Shapes are documented per function; ``...`` is an optional leading batch dimension.
"""

from ..backends import Implementation
from .graph import adaptive_graph, adjacency_values, graph_mixprop, graph_operator, graph_propagate, static_graph
from .hypergraph import (
                         apply_operator,
                         effective_order,
                         hypergraph_halves,
                         hypergraph_mixprop,
                         hypergraph_operator,
                         hypergraph_propagate,
                         knn_hypergraph,
                         membership_weights,
                         safe_reciprocal,
)
from .mixprop import mixprop
from .neighbors import topk_neighbors
from .pool_patch import pool_patch

# the ops of sthfast.ops, each with the signature of its dispatch function
OPS = ("pool_patch", "topk_neighbors", "knn_hypergraph", "hypergraph_mixprop", "adaptive_graph", "graph_mixprop",
       "static_graph")


IMPLEMENTATIONS = tuple(Implementation(op, "reference", globals()[op]) for op in OPS)

__all__ = ["IMPLEMENTATIONS", "OPS", "adaptive_graph", "adjacency_values", "apply_operator", "effective_order",
           "graph_mixprop", "graph_operator", "graph_propagate", "hypergraph_halves", "hypergraph_mixprop",
           "hypergraph_operator", "hypergraph_propagate", "knn_hypergraph", "membership_weights", "mixprop",
           "pool_patch", "safe_reciprocal", "static_graph", "topk_neighbors"]
