"""The ``triton`` and ``sparse`` backends compiled for real on a CUDA device, against the reference on
the CPU. Skipped with a reason where there is no GPU (the CPU tests cover the kernels through
Triton's interpreter)."""

import pytest
import torch

from sthfast import optional_deps, ops

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.skipif(not optional_deps.probe("triton").ok, reason="needs Triton")]


@pytest.mark.parametrize("backend", ["triton", "sparse"])
@pytest.mark.parametrize("n,k", [(1, 1), (37, 3), (1000, 3), (513, 20)])
def test_topk_on_cuda_equals_reference(backend, n, k):
    g = torch.Generator().manual_seed(n)
    z = torch.randn(n, 24, generator=g)
    z[n // 2:] = z[: n - n // 2]                                     # duplicates: real ties
    for metric in ("l2", "ip"):
        got = ops.topk_neighbors(z.cuda(), z.cuda(), k, metric, backend=backend).cpu()
        assert torch.equal(got, ops.topk_neighbors(z, z, k, metric, backend="reference"))


@pytest.mark.parametrize("backend", ["triton", "sparse"])
@pytest.mark.parametrize("batch", [None, 3])
def test_hypergraph_mixprop_on_cuda_equals_reference(backend, batch):
    g = torch.Generator().manual_seed(0)
    shape = (300, 16) if batch is None else (batch, 300, 16)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    x = torch.randn(batch or 2, 8, 300, 5, generator=g, dtype=torch.float64)
    results = {}
    for name, device in ((backend, "cuda"), ("reference", "cpu")):
        zz = z.to(device).requires_grad_()
        xx = x.to(device).requires_grad_()
        y = ops.hypergraph_mixprop(xx, ops.knn_hypergraph(zz, 3, backend=name), 2, 0.05, backend=name)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=device).view_as(y)).sum().backward()
        results[name] = [t.cpu() for t in (y, xx.grad, zz.grad)]
    for got, want in zip(results[backend], results["reference"]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["triton", "sparse"])
def test_model_on_cuda_equals_reference(small_config, backend):
    from sthfast import STHSepNet

    x = torch.randn(4, 12, 207, 1, generator=torch.Generator().manual_seed(0))
    outs = {}
    for name, device in ((backend, "cuda"), ("reference", "cpu")):
        torch.manual_seed(0)
        model = STHSepNet(small_config(num_nodes=207, backend=name)).to(device)
        y = model(x.to(device))
        y.pow(2).mean().backward()
        outs[name] = (y.cpu(), {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[backend][0], outs["reference"][0], rtol=1e-4, atol=1e-4)
    for name, grad in outs["reference"][1].items():
        torch.testing.assert_close(outs[backend][1][name], grad, rtol=1e-3, atol=1e-4, msg=name)


def test_compiled_model_on_cuda_equals_the_eager_model(small_config):
    """``--compile`` on CUDA: inductor's Triton code for the model, with the custom ops inside."""
    from sthfast import STHSepNet

    torch.manual_seed(0)
    model = STHSepNet(small_config(num_nodes=207)).cuda()
    x = torch.randn(4, 12, 207, 1, device="cuda")
    outs = {}
    for name, run in (("eager", model), ("compiled", torch.compile(model))):
        model.zero_grad()
        y = run(x)
        y.pow(2).mean().backward()
        outs[name] = (y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs["compiled"][0], outs["eager"][0], rtol=1e-4, atol=1e-4)
    for name, grad in outs["eager"][1].items():
        torch.testing.assert_close(outs["compiled"][1][name], grad, rtol=1e-3, atol=1e-4, msg=name)
