"""The hypergraph's two stages, ``sparse`` vs ``reference`` on this machine's CPU, at N = 207
(LOS-LOOP), 883 (PEMS07(M)-size) and 8,600 (LargeST CA): construction (KNN over node features,
d = 40, k = 3, merged hyperedges) and propagation (MixProp depth 2 over F = C x T = 32 x 12, B = 1,
forward, and forward + backward). Each case records the call's own peak memory, measured in a
separate process (see ``conftest.call_peak_mib``). Reproduce with:

    python -m pytest benchmarks/test_hypergraph_ops.py --benchmark-json=benchmarks/hypergraph_ops.json
    python benchmarks/render_results.py
"""

import pytest
import torch
from conftest import call_peak_mib

from sthfast import ops

SIZES = (207, 883, 8600)
D, K, C, T, DEPTH, BETA = 40, 3, 32, 12, 2, 0.05


def inputs(n):
    g = torch.Generator().manual_seed(n)
    z = torch.tanh(torch.randn(n, D, generator=g))
    x = torch.randn(1, C, n, T, generator=g)
    return z, x


def structure_mib(hypergraph) -> float:
    """Memory of the structure propagation runs over: the dense incidence, or the CSR tensors."""
    tensors = [hypergraph] if isinstance(hypergraph, torch.Tensor) else \
        [t for t in hypergraph if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def stage_fn(stage, backend, n):
    z, x = inputs(n)
    if stage == "construction":
        return lambda: ops.knn_hypergraph(z, K, temperature=1.0, backend=backend)
    h = ops.knn_hypergraph(z, K, backend=backend)
    if stage == "propagation":
        def forward():
            with torch.no_grad():
                return ops.hypergraph_mixprop(x, h, DEPTH, BETA, backend=backend)
        forward.hypergraph = h
        return forward
    zz, xx = z.clone().requires_grad_(), x.clone().requires_grad_()

    def train():  # construction's differentiable part included: membership-weight gradients
        hh = ops.knn_hypergraph(zz, K, backend=backend)
        ops.hypergraph_mixprop(xx, hh, DEPTH, BETA, backend=backend).sum().backward()
    return train


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("backend", ["reference", "sparse"])
@pytest.mark.parametrize("stage", ["construction", "propagation", "construction_propagation_backward"])
def test_hypergraph_stage(benchmark, stage, backend, n):
    slow = backend == "reference" and stage != "propagation" and n > 1000  # O(N^3) dense merge
    if slow and stage != "construction":
        pytest.skip("the reference's dense construction takes ~30 s per call at N = 8,600")
    fn = stage_fn(stage, backend, n)
    fn()                                                            # warm up
    peak = call_peak_mib("test_hypergraph_ops", "stage_fn", stage, backend, n)
    benchmark.pedantic(fn, rounds=3 if slow else 5, warmup_rounds=0)
    structure = structure_mib(fn.hypergraph) if stage == "propagation" else None
    benchmark.extra_info.update(stage=stage, backend=backend, n=n, d=D, k=K, features=C * T,
                                structure_mib=None if structure is None else round(structure, 3),
                                call_peak_mib=None if peak is None else round(peak, 2),
                                torch_threads=torch.get_num_threads())
