"""``static_graph``: a fixed adjacency (dense or sparse COO, nodes that read nobody) in every fast
path's form gives the reference's MixProp, both directions (CPU and CUDA); bad shapes are errors."""

from __future__ import annotations

import pytest
import torch
from backend_cases import fast_paths, runnable, tolerance

from sthfast import ops
from sthfast.testing import features


def adjacency(n: int = 9) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    adj = torch.rand(n, n, generator=g, dtype=torch.float64) * (torch.rand(n, n, generator=g) < 0.3)
    adj[4] = 0                                                       # a node that reads nobody
    return adj


@pytest.mark.parametrize("backend,device", fast_paths("static_graph"))
@pytest.mark.parametrize("layout", ["dense", "coo"])
def test_mixprop_over_it_equals_reference(backend, device, layout):
    adj, x = adjacency(), features(2, 3, 9, 5)
    given = adj if layout == "dense" else adj.to_sparse()
    for transpose in (False, True):
        got = ops.graph_mixprop(x.to(device), ops.static_graph(given.to(device), backend=backend), 3, 0.2,
                                transpose, backend=backend)
        want = ops.graph_mixprop(x, ops.static_graph(adj, backend="reference"), 3, 0.2, transpose,
                                 backend="reference")
        torch.testing.assert_close(got.cpu(), want, **tolerance(torch.float64, device))


@pytest.mark.parametrize("backend", ["reference"] + runnable("static_graph"))
def test_a_matrix_that_is_not_square_is_a_clear_error(backend):
    with pytest.raises(ValueError, match=r"adjacency must be \[N, N\], got \[3, 4\]"):
        ops.static_graph(torch.ones(3, 4), backend=backend)
