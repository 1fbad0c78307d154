"""The temporal stream's first op, pool + patch: the C++ extension (`cpp`) vs the reference
(`mean` + normalisation + `unfold`), forward and forward + backward, on this machine's CPU, at the
paper's window (B = 32, T = 48, patch 16 / stride 8) for N = 207, 883 and 8,600 (F = 1). Reproduce:

    python -m pytest benchmarks/test_pool_patch.py --benchmark-json=benchmarks/pool_patch.json
    python benchmarks/render_results.py
"""

import pytest
import torch
from conftest import call_peak_mib

from sthfast import extension, ops

pytestmark = pytest.mark.skipif(not extension.available(), reason="the C++ extension is not built")

B, T, F, PATCH, STRIDE = 32, 48, 1, 16, 8


def pass_fn(pass_, backend, n):
    x = torch.randn(B, T, n, F, generator=torch.Generator().manual_seed(n))
    if pass_ == "forward":
        def forward():
            with torch.no_grad():
                return ops.pool_patch(x, PATCH, STRIDE, backend=backend)
        return forward
    xx = x.requires_grad_()

    def forward_backward():
        patches, mean, std = ops.pool_patch(xx, PATCH, STRIDE, backend=backend)
        (patches.sum() + mean.sum() + std.sum()).backward()
        xx.grad = None
    return forward_backward


@pytest.mark.parametrize("n", [207, 883, 8600])
@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("pass_", ["forward", "forward_backward"])
def test_pool_patch(benchmark, pass_, backend, n):
    fn = pass_fn(pass_, backend, n)
    fn()
    peak = call_peak_mib("test_pool_patch", "pass_fn", pass_, backend, n)
    benchmark.pedantic(fn, rounds=20, warmup_rounds=2)
    benchmark.extra_info.update(op="pool_patch", stage=pass_, backend=backend, n=n,
                                call_peak_mib=round(peak, 2), torch_threads=torch.get_num_threads())
