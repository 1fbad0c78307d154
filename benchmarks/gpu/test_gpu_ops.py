"""The ops on a CUDA device: the hypergraph ops, ``triton`` vs ``sparse`` (torch CUDA ops) vs
``reference`` (dense, where it fits), at N = 8,600, 100,000 and 1,000,000 (d = 40, k = 3, F = 32 x
12, B = 1) (:func:`test_gpu_stage`); the extension's CUDA pool + patch vs the reference
(:func:`test_gpu_pool_patch`).
One call on a lent GPU runs all of it; skipped with a reason elsewhere:

    python -m pytest benchmarks/gpu --benchmark-json=benchmarks/gpu/triton_ops.json
    python benchmarks/render_results.py
"""

import pytest
import torch

from sthfast import ops, optional_deps
from sthfast.testing import embeddings

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and optional_deps.probe("triton").ok),
                                reason="needs a CUDA device and Triton")

D, K, C, T, DEPTH, BETA = 40, 3, 32, 12, 2, 0.05
LIMITS = {"reference": 8_600, "sparse": 100_000, "triton": 1_000_000}  # largest N each runs at
BOTH = "knn_hypergraph + hypergraph_mixprop, backward"


def stage_fn(op, backend, n):
    z = embeddings(n, D, seed=n).cuda()
    # 384 million numbers at N = 1,000,000: drawn on the device
    x = torch.randn(1, C, n, T, generator=torch.Generator(device="cuda").manual_seed(n + 1), device="cuda")
    if op == "knn_hypergraph":
        return lambda: ops.knn_hypergraph(z, K, backend=backend)
    h = ops.knn_hypergraph(z, K, backend=backend)
    if op == "hypergraph_mixprop":
        return lambda: ops.hypergraph_mixprop(x, h, DEPTH, BETA, backend=backend)
    zz, xx = z.clone().requires_grad_(), x.clone().requires_grad_()

    def train():
        hh = ops.knn_hypergraph(zz, K, backend=backend)
        ops.hypergraph_mixprop(xx, hh, DEPTH, BETA, backend=backend).sum().backward()
    return train


def time_on_gpu(benchmark, fn, rounds: int, **info) -> None:
    """Median of ``rounds`` synchronised calls of ``fn`` after a warm-up, with the peak GPU memory
    of one call and ``info`` in ``extra_info``."""
    def synced():
        fn()
        torch.cuda.synchronize()

    synced()
    torch.cuda.reset_peak_memory_stats()
    synced()
    peak = torch.cuda.max_memory_allocated() / 2**20
    benchmark.pedantic(synced, rounds=rounds, warmup_rounds=1)
    benchmark.extra_info.update(**info, peak_gpu_mib=round(peak, 1), device=torch.cuda.get_device_name(0))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8_600, 100_000, 1_000_000])
@pytest.mark.parametrize("backend", ["reference", "sparse", "triton"])
@pytest.mark.parametrize("op", ["knn_hypergraph", "hypergraph_mixprop", BOTH])
def test_gpu_stage(benchmark, op, backend, n):
    if n > LIMITS[backend] or (backend == "reference" and op != "hypergraph_mixprop"):
        pytest.skip(f"{backend} is not timed at N = {n:,} for {op}")
    time_on_gpu(benchmark, stage_fn(op, backend, n), 5, op=op, backend=backend, n=n)


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

    time_on_gpu(benchmark, step, 10, op="pool_patch fwd+bwd (B=32, T=48)", backend=backend, n=n)
