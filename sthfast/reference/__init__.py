"""Reference ops: plain, dense PyTorch, written for clarity, float64-safe and gradcheck-able.

They are the truth every fast path is tested against, and the runtime fallback of ``backend="auto"``.
Shapes are documented per function; ``...`` is an optional leading batch dimension.
"""

from ..backends import Implementation
from .dropout import dropout
from .graph import (
                    adaptive_graph,
                    adjacency_values,
                    graph_mixprop,
                    graph_operator,
                    graph_propagate,
                    projected_graph_mixprop,
                    static_graph,
)
from .hypergraph import (
                    apply_operator,
                    effective_order,
                    hypergraph_halves,
                    hypergraph_mixprop,
                    hypergraph_operator,
                    hypergraph_propagate,
                    knn_hypergraph,
                    membership_weights,
                    projected_hypergraph_mixprop,
                    safe_reciprocal,
)
from .mixprop import mixprop, projection
from .neighbors import topk_neighbors
from .pool_patch import pool_patch

# the ops of sthfast.ops, each with the signature of its dispatch function
OPS = ("pool_patch", "topk_neighbors", "knn_hypergraph", "hypergraph_mixprop", "adaptive_graph", "graph_mixprop",
       "static_graph", "projected_hypergraph_mixprop", "projected_graph_mixprop", "dropout")


IMPLEMENTATIONS = tuple(Implementation(op, "reference", globals()[op]) for op in OPS)

__all__ = ["IMPLEMENTATIONS", "OPS", "adaptive_graph", "adjacency_values", "apply_operator", "dropout",
           "effective_order",
           "graph_mixprop", "graph_operator", "graph_propagate", "hypergraph_halves", "hypergraph_mixprop",
           "hypergraph_operator", "hypergraph_propagate", "knn_hypergraph", "membership_weights", "mixprop",
           "pool_patch", "projected_graph_mixprop", "projected_hypergraph_mixprop", "projection", "safe_reciprocal",
           "static_graph", "topk_neighbors"]
