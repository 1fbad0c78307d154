"""On a CUDA device: the hypergraph stages, ``triton`` vs ``sparse`` (torch CUDA ops) vs ``reference``
(dense, where it fits), at N = 8,600, 100,000 and 1,000,000 (d = 40, k = 3, F = 32 x 12, B = 1); and
the extension's CUDA pool + patch vs the reference.
One call on a lent GPU runs all of it; skipped with a reason elsewhere:

    python -m pytest benchmarks/gpu --benchmark-json=benchmarks/gpu/triton_ops.json
    python benchmarks/render_results.py
"""

import pytest
import torch

from sthfast import optional_deps, ops

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and optional_deps.probe("triton").ok),
                                reason="needs a CUDA device and Triton")

D, K, C, T, DEPTH, BETA = 40, 3, 32, 12, 2, 0.05
LIMITS = {"reference": 8_600, "sparse": 100_000, "triton": 1_000_000}  # largest N each runs at


def stage_fn(op, backend, n):
    g = torch.Generator(device="cuda").manual_seed(n)
    z = torch.tanh(torch.randn(n, D, generator=g, device="cuda"))
    x = torch.randn(1, C, n, T, generator=g, device="cuda")
    if op == "construction":
        return lambda: ops.knn_hypergraph(z, K, backend=backend)
    h = ops.knn_hypergraph(z, K, backend=backend)
    if op == "propagation":
        return lambda: ops.hypergraph_mixprop(x, h, DEPTH, BETA, backend=backend)
    zz, xx = z.clone().requires_grad_(), x.clone().requires_grad_()

    def train():
        hh = ops.knn_hypergraph(zz, K, backend=backend)
        ops.hypergraph_mixprop(xx, hh, DEPTH, BETA, backend=backend).sum().backward()
    return train


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8_600, 100_000, 1_000_000])
@pytest.mark.parametrize("backend", ["reference", "sparse", "triton"])
@pytest.mark.parametrize("op", ["construction", "propagation", "construction_propagation_backward"])
def test_gpu_stage(benchmark, op, backend, n):
    if n > LIMITS[backend] or (backend == "reference" and op != "propagation"):
        pytest.skip(f"{backend} is not timed at N = {n:,} for {op}")
    fn = stage_fn(op, backend, n)

    def synced():
        fn()
        torch.cuda.synchronize()

    synced()
    torch.cuda.reset_peak_memory_stats()
    synced()
    peak = torch.cuda.max_memory_allocated() / 2**20
    benchmark.pedantic(synced, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(op=op, backend=backend, n=n, peak_gpu_mib=round(peak, 1),
                                device=torch.cuda.get_device_name(0))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8_600, 100_000])
@pytest.mark.parametrize("backend", ["reference", "cuda"])
def test_gpu_pool_patch(benchmark, backend, n):
    from sthfast.backends import extension

    if backend == "cuda" and not extension.has_cuda_kernels():
        pytest.skip("the extension was built without its CUDA kernels")
    x = torch.randn(32, 48, n, 1, device="cuda", requires_grad=True)

    def step():
        patches, mean, std = ops.pool_patch(x, 16, 8, backend=backend)
        (patches.sum() + mean.sum() + std.sum()).backward()
        torch.cuda.synchronize()

    step()
    torch.cuda.reset_peak_memory_stats()
    step()
    peak = torch.cuda.max_memory_allocated() / 2**20
    benchmark.pedantic(step, rounds=10, warmup_rounds=1)
    benchmark.extra_info.update(op="pool_patch fwd+bwd (B=32, T=48)", backend=backend, n=n,
                                peak_gpu_mib=round(peak, 1), device=torch.cuda.get_device_name(0))
