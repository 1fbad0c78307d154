"""The whole model on each fast path (CPU and CUDA) against the reference model: outputs and every
parameter's gradient on real LOS-LOOP windows (under Triton's interpreter, their first 11 nodes),
for the graph / hypergraph combinations that take different ops. The ops one by one: tests/ops/."""

from __future__ import annotations

import pytest
import torch
from backend_cases import fast_paths, interpreted

from sthfast import STHSepNet
from sthfast.testing import weighted_sum

MODEL_PATHS = fast_paths("hypergraph_mixprop")


@pytest.fixture(scope="module")
def los_windows():
    """``x [3, 12, 207, 1]`` from LOS-LOOP's training split and its adjacency ``[207, 207]``."""
    from sthfast.data import load_series, prepare
    from sthfast.data.embedded import embedded_path

    data = prepare(load_series(embedded_path()), 12, 6)
    x, _, _ = data.train.batch(torch.tensor([0, 500, 1000]))
    return x, torch.as_tensor(data.series.adjacency, dtype=torch.float32)


@pytest.mark.parametrize("backend,device", MODEL_PATHS)
@pytest.mark.parametrize("graph,hypergraph", [("adaptive", "adaptive"), ("static", "dynamic"),
                                              ("none", "binary")])
def test_model_equals_the_reference_model(small_config, los_windows, monkeypatch, backend, device, graph, hypergraph):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)     # CUDA convolutions in full float32
    x, adjacency = los_windows
    if interpreted(backend, device):   # all 207 nodes take minutes in Triton's interpreter: its first 11
        x, adjacency = x[:, :, :11], adjacency[:11, :11]
    results = {}
    for name, dev in ((backend, device), ("reference", "cpu")):
        torch.manual_seed(0)
        config = small_config(num_nodes=x.shape[2], graph=graph, hypergraph=hypergraph, backend=name)
        model = STHSepNet(config, adjacency=adjacency if graph == "static" else None).to(dev)
        y = model(x.to(dev))
        weighted_sum(y).backward()
        results[name] = (y.detach().cpu(), {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None})
    (y_ref, g_ref), (y_fast, g_fast) = results["reference"], results[backend]
    atol = 1e-4 if device == "cuda" else 1e-5                        # CUDA: other summation orders
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-4, atol=atol)
    assert g_fast.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-3, atol=atol, msg=name)
