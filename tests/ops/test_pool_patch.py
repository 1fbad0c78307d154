"""``pool_patch``: the reference against a direct computation; the extension's fused kernels
(``cpp`` on the CPU, ``cuda`` on GPUs) against the reference, forward and backward through patches,
mean and std, with node masks, awkward shapes, half precision, non-contiguous input; their
registration as ops (opcheck, gradcheck, second derivatives, torch.compile); bad input; the fallback
where the extension is not built. The build itself: test_extension_build.py."""

from __future__ import annotations

import pytest
import torch
from backend_cases import fast_paths, needs_cpp, runnable
from torch.autograd import gradcheck

from sthfast import ops, optional_deps, reference
from sthfast.backends import extension
from sthfast.testing import series

D = torch.float64


# --------------------------------------------------------------------------- the reference


def test_reference_matches_a_direct_computation():
    x = series(2, 10, 5, 3)
    patches, mean, std = reference.pool_patch(x, patch_len=4, stride=3, normalize=True, eps=1e-5)
    pooled = x.mean(2)                                   # [B, T, F]
    mu, sd = pooled.mean(1), (pooled.var(1, unbiased=False) + 1e-5).sqrt()
    normalised = ((pooled - mu[:, None]) / sd[:, None]).permute(0, 2, 1)  # [B, F, T]
    padded = torch.cat([normalised, normalised[..., -1:].repeat(1, 1, 3)], -1)  # T + S = 13
    starts = range(0, 13 - 4 + 1, 3)                      # 0, 3, 6, 9
    expected = torch.stack([padded[..., s:s + 4] for s in starts], dim=2)
    assert patches.shape == (2, 3, 4, 4)
    torch.testing.assert_close(patches, expected)
    torch.testing.assert_close(mean, mu)
    torch.testing.assert_close(std, sd)


def test_reference_without_normalisation_at_the_paper_shape():
    x = series(3, 48, 7, 1, seed=1)
    patches, mean, std = reference.pool_patch(x, 16, 8, normalize=False)
    assert patches.shape == (3, 1, 6, 16)                  # (48 - 16) / 8 + 2 patches
    assert torch.equal(mean, torch.zeros(3, 1, dtype=D)) and torch.equal(std, torch.ones(3, 1, dtype=D))
    torch.testing.assert_close(patches[:, 0, 0], x.mean(2)[:, :16, 0])
    assert torch.all(patches[:, 0, -1, -8:] == x.mean(2)[:, -1:, 0])   # replicate padding


def test_reference_gradcheck():
    x = series(2, 9, 4, 2, seed=12, grad=True)
    assert gradcheck(lambda t: reference.pool_patch(t, 4, 2, True), (x,))
    assert gradcheck(lambda t: reference.pool_patch(t, 3, 3, False)[0], (x,))


# --------------------------------------------------------------------------- the fused kernels


SHAPES = [  # B, T, N, F, patch_len, stride
    (3, 12, 7, 1, 4, 2), (2, 11, 5, 3, 4, 3), (1, 9, 13, 2, 2, 4), (2, 5, 1, 1, 6, 1), (1, 1, 3, 1, 1, 1),
    (4, 24, 300, 2, 6, 4),
]


@pytest.mark.parametrize("backend,device", fast_paths("pool_patch"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_equal_the_reference(backend, device, shape, masked, normalize, dtype):
    b, t, n, f, p, s = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = series(b, t, n, f, seed=sum(shape), dtype=dtype)
    mask = (torch.rand(b, n, generator=g) < 0.6) if masked else None
    if masked:
        mask[0] = False                                              # a sample with no sensor
    results = []
    for name, dev in ((backend, device), ("reference", "cpu")):
        xx = x.detach().to(dev).requires_grad_()                     # a leaf of its own, also on the CPU
        out = ops.pool_patch(xx, p, s, normalize, 1e-5, None if mask is None else mask.to(dev), backend=name)
        weights = [torch.linspace(-1, 2, o.numel(), dtype=dtype, device=dev).view_as(o) for o in out]
        sum((o * w).sum() for o, w in zip(out, weights)).backward()  # gradients through mean / std too
        results.append([o.detach().cpu() for o in out] + [xx.grad.cpu()])
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == D else dict(rtol=1e-5, atol=1e-6)
    if device == "cuda":                                             # other summation orders
        tol = dict(rtol=1e-7, atol=1e-7) if dtype == D else dict(rtol=1e-4, atol=1e-5)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("backend,device", fast_paths("pool_patch"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_non_contiguous_input(backend, device, dtype):
    whole = series(3, 20, 9, 4, torch.float32)
    mask = torch.rand(3, 9, generator=torch.Generator().manual_seed(0)) < 0.7
    for v, tol in ((whole.to(dtype), dict(rtol=2e-2, atol=2e-2)), (whole, {})):
        sliced = v.to(device)[..., 1:2]                              # a feature slice: not contiguous
        assert not sliced.is_contiguous()
        got = ops.pool_patch(sliced, 4, 2, True, 1e-5, mask.to(device), backend=backend)
        want = ops.pool_patch(v[..., 1:2], 4, 2, True, 1e-5, mask, backend="reference")
        for a, b in zip(got, want):
            torch.testing.assert_close(a.cpu().float(), b.float(), **tol)


@pytest.mark.parametrize("backend,device", fast_paths("pool_patch"))
def test_a_big_half_mask_does_not_overflow(backend, device):
    x = torch.ones(1, 2, 70_000, 1, dtype=torch.float16, device=device)   # 70,000 > float16's max 65,504
    patches, _, _ = ops.pool_patch(x, 2, 1, False, node_mask=torch.ones(70_000, device=device), backend=backend)
    # the mask sum: float32
    torch.testing.assert_close(patches.cpu().float(), torch.ones(patches.shape), rtol=0, atol=2e-3)


@pytest.mark.parametrize("backend,device", fast_paths("pool_patch"))
def test_gradcheck_and_opcheck(backend, device):
    x = series(2, 10, 4, 2).to(device).requires_grad_()
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=D, device=device)
    assert gradcheck(lambda v: ops.pool_patch(v, 4, 3, True, 1e-5, mask, backend=backend), (x,))
    one = series(3, 7, 1, 1, seed=1).to(device).requires_grad_()         # N = 1, F = 1
    assert gradcheck(lambda v: ops.pool_patch(v, 3, 2, False, backend=backend)[0], (one,))
    torch.library.opcheck(torch.ops.sthfast.pool_patch_forward.default, (x, 4, 3, True, 1e-5, mask))
    torch.library.opcheck(torch.ops.sthfast.pool_patch_forward.default, (x, 3, 2, False, 1e-5, None))


@pytest.mark.parametrize("backend,device", fast_paths("pool_patch"))
def test_second_derivatives_equal_the_reference(backend, device):
    """create_graph: the backward is the reference twin's, so higher derivatives exist."""
    x = series(2, 12, 5, 1, grad=True)
    hessians = []
    for name, dev in ((backend, device), ("reference", "cpu")):
        xx = x.to(dev)
        patches, mean, std = ops.pool_patch(xx, 4, 2, backend=name)
        (g,) = torch.autograd.grad(patches.pow(2).sum() + (mean * std).sum(), x, create_graph=True)
        hessians.append(torch.autograd.grad(g.pow(2).sum(), x)[0])
    torch.testing.assert_close(*hessians)


@needs_cpp
def test_compiles_into_one_graph_forward_and_backward():
    def loss(v):
        patches, mean, std = extension.pool_patch(v, 4, 2)
        return patches.pow(2).sum() + (mean * std).sum()

    x = torch.randn(2, 12, 5, 1)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.compile(loss, backend="aot_eager", fullgraph=True)(xc).backward()
    loss(xe).backward()
    torch.testing.assert_close(xc.grad, xe.grad)


@pytest.mark.parametrize("backend", ["reference"] + runnable("pool_patch"))
@pytest.mark.filterwarnings(r"ignore:var\(\)")   # the reference's std of an empty batch
def test_empty_batch_and_bad_input(backend):
    out = ops.pool_patch(torch.randn(0, 12, 5, 1), 4, 2, backend=backend)
    assert [o.shape for o in out] == [(0, 1, 6, 4), (0, 1), (0, 1)]
    with pytest.raises(ValueError, match=r"must be \[B, T, N, F\]"):
        ops.pool_patch(torch.randn(12, 5, 1), 4, 2, backend=backend)
    with pytest.raises(ValueError, match=r"with T, N >= 1"):
        ops.pool_patch(torch.randn(2, 0, 3, 1), 1, 1, backend=backend)
    with pytest.raises(ValueError, match=r"patch_len=7 is longer than the 5 steps padded by stride 1"):
        ops.pool_patch(torch.randn(2, 5, 3, 1), 7, 1, backend=backend)
    with pytest.raises(ValueError, match=r"node_mask \[4\] must be \[N\] or \[B, N\]"):
        ops.pool_patch(torch.randn(2, 12, 5, 1), 4, 2, node_mask=torch.ones(4), backend=backend)


@needs_cpp
def test_the_compiled_op_checks_its_arguments_too():
    for bad in ((0, 2), (4, 0), (4, -1), (9, 2)):
        with pytest.raises(RuntimeError, match="pool_patch: "):
            torch.ops.sthfast.pool_patch_forward(torch.randn(2, 5, 3, 1), *bad, True, 1e-5, None)
    with pytest.raises(RuntimeError, match="at least one step"):
        torch.ops.sthfast.pool_patch_forward(torch.randn(2, 0, 3, 1), 1, 1, True, 1e-5, None)


@needs_cpp
def test_auto_picks_the_extension_on_cpu_and_the_model_agrees_with_the_reference(small_config):
    from sthfast import STHSepNet

    assert ops.resolve("pool_patch", "auto", "cpu") == "cpp"
    assert optional_deps.probe("extension").ok
    x = torch.randn(3, 12, 11, 1, generator=torch.Generator().manual_seed(0))
    outs = []
    for backend in ("cpp", "reference"):
        torch.manual_seed(0)
        model = STHSepNet(small_config(backend=backend, fusion="temporal_only"))
        y = model(x)
        y.pow(2).mean().backward()
        outs.append((y, [p.grad for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for got, want in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(got, want)


def test_without_the_extension_auto_falls_back_to_the_reference(monkeypatch):
    monkeypatch.setattr(extension, "available", lambda: False)
    assert ops.resolve("pool_patch", "auto", "cpu") == "reference"
    with pytest.raises(ValueError, match="backend 'cpp' cannot run pool_patch on cpu"):
        ops.resolve("pool_patch", "cpp", "cpu")
