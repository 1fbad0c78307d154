"""The ``triton`` backend: the ops of :mod:`.backend` (Triton kernels in sparse's builders and
propagation), imported with Triton only when one runs.

``auto`` takes them on CUDA devices where Triton is installed. On a machine without a GPU the
kernels run only when named, under ``TRITON_INTERPRET=1`` (set before Triton is first imported),
which the tests use at small sizes; it says nothing about speed.
"""

from __future__ import annotations

from typing import Callable

import torch

from ... import optional_deps
from .. import Implementation

# sparse's structure builders and propagations, over Triton's search and sparse-product kernels
RUNS = ("topk_neighbors", "knn_hypergraph", "adaptive_graph", "static_graph", "hypergraph_mixprop", "graph_mixprop",
        "projected_hypergraph_mixprop", "projected_graph_mixprop")


def auto_on(device: torch.device) -> bool:
    return device.type == "cuda" and optional_deps.probe("triton").ok and optional_deps.triton_gpu_ok(device)


def runs_on(device: torch.device) -> bool:
    return auto_on(device) or (device.type == "cpu" and optional_deps.triton_interpreter())


def _deferred(op: str) -> Callable:
    def run(*args):
        from .backend import OPS  # noqa: PLC0415 (imports Triton: only when the backend runs)

        return OPS[op](*args)

    return run


# static_graph adds self loops with sparse's torch ops: sparse's own
IMPLEMENTATIONS = tuple(Implementation(op, "triton", _deferred(op), auto_on=auto_on, runs_on=runs_on,
                                       same_as="sparse" if op == "static_graph" else None) for op in RUNS)
