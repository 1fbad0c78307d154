"""``torch.compile`` of the whole model gives the eager model's outputs and gradients on every CPU
backend: compiled by inductor (as ``--compile`` runs it; about a minute on 2 cores) for ``auto``, and
traced by dynamo and AOT autograd (``aot_eager``: graph capture and the custom ops' fake kernels,
without inductor's code generation) for the others. ``test_gpu.py`` compiles on CUDA."""

from __future__ import annotations

import pytest
import torch

from fast_backends import CPP
from sthfast import STHSepNet


@pytest.mark.slow
@pytest.mark.parametrize("backend,compiler", [("auto", "inductor"), ("reference", "aot_eager"),
                                              ("sparse", "aot_eager")] + [(b, "aot_eager") for b in CPP])
def test_compiled_model_equals_the_eager_model(small_config, backend, compiler):
    torch.manual_seed(0)
    model = STHSepNet(small_config(backend=backend))
    x = torch.randn(3, 12, 11, 1)
    compiled = torch.compile(model, backend=compiler)
    outputs = {}
    for name, run in (("eager", model), ("compiled", compiled)):
        model.zero_grad()
        y = run(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outputs[name] = (y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (y_eager, g_eager), (y_compiled, g_compiled) = outputs["eager"], outputs["compiled"]
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-4, atol=1e-5)
    assert g_compiled.keys() == g_eager.keys()
    for name in g_eager:
        torch.testing.assert_close(g_compiled[name], g_eager[name], rtol=1e-3, atol=1e-5, msg=name)
