"""Reference ops: plain, dense PyTorch, written for clarity, float64-safe and gradcheck-able.

They are the truth every fast path is tested against, and the runtime fallback of ``backend="auto"``.
Shapes are documented per function; ``...`` is an optional leading batch dimension.
"""

from .graph import adaptive_graph, adjacency_values, graph_operator, graph_propagate
from .hypergraph import (apply_operator, hypergraph_halves, hypergraph_operator, hypergraph_propagate,
                         effective_order, knn_hypergraph, membership_weights, safe_reciprocal)
from .mixprop import mixprop
from .neighbors import topk_neighbors
from .pool_patch import pool_patch

__all__ = ["adaptive_graph", "adjacency_values", "apply_operator", "graph_operator", "graph_propagate",
           "effective_order", "hypergraph_halves", "hypergraph_operator", "hypergraph_propagate", "knn_hypergraph", "membership_weights",
           "mixprop", "safe_reciprocal", "topk_neighbors", "pool_patch"]
