"""``torch.compile`` of the whole model gives the eager model's outputs and gradients on every CPU
backend: compiled by inductor (as ``--compile`` runs it; about a minute on 2 cores) for ``auto``, and
traced by dynamo and AOT autograd (``aot_eager``: graph capture and the custom ops' fake kernels,
without inductor's code generation) for the others; and on CUDA, where there is a GPU, by inductor."""

from __future__ import annotations

import pytest
import torch
from backend_cases import needs_cuda, runnable

from sthfast import STHSepNet
from sthfast.testing import weighted_sum


@pytest.mark.slow
@pytest.mark.parametrize("backend,compiler,device", [
    ("auto", "inductor", "cpu"), ("reference", "aot_eager", "cpu"),
    *((b, "aot_eager", "cpu") for b in runnable("hypergraph_mixprop", exclude=("triton",))),
    pytest.param("auto", "inductor", "cuda", marks=[pytest.mark.gpu, needs_cuda])])
def test_compiled_model_equals_the_eager_model(small_config, backend, compiler, device):
    torch.manual_seed(0)
    model = STHSepNet(small_config(num_nodes=207 if device == "cuda" else 11, backend=backend)).to(device)
    x = torch.randn(3, 12, model.config.num_nodes, 1, device=device)
    compiled = torch.compile(model, backend=compiler)
    outputs = {}
    for name, run in (("eager", model), ("compiled", compiled)):
        model.zero_grad()
        y = run(x)
        weighted_sum(y).backward()
        outputs[name] = (y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (y_eager, g_eager), (y_compiled, g_compiled) = outputs["eager"], outputs["compiled"]
    atol = 1e-4 if device == "cuda" else 1e-5                # CUDA: other summation orders
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-4, atol=atol)
    assert g_compiled.keys() == g_eager.keys()
    for name in g_eager:
        torch.testing.assert_close(g_compiled[name], g_eager[name], rtol=1e-3, atol=atol, msg=name)
