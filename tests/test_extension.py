"""The C++ extension's fused pool + patch against the reference: forward and backward, masks,
awkward shapes; its registration as an op (opcheck, torch.compile); the fallback when it is absent
(the fused MixProp's own tests: ``test_fused_mixprop.py``)."""

import shutil
import subprocess

import pytest
import torch

from sthfast import optional_deps, ops
from sthfast.backends import extension

pytestmark = pytest.mark.skipif(not extension.available(),
                                reason=f"the C++ extension is not built: {extension.load()}")

SHAPES = [  # B, T, N, F, patch_len, stride
    (3, 12, 7, 1, 4, 2), (2, 11, 5, 3, 4, 3), (1, 9, 13, 2, 2, 4), (2, 5, 1, 1, 6, 1), (1, 1, 3, 1, 1, 1),
]


def both(x, *args, **kwargs):
    return (ops.pool_patch(x, *args, **kwargs, backend="cpp"),
            ops.pool_patch(x, *args, **kwargs, backend="reference"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_equal_the_reference(shape, masked, normalize, dtype):
    b, t, n, f, p, s = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(b, t, n, f, generator=g, dtype=torch.float64).to(dtype)
    mask = (torch.rand(b, n, generator=g) < 0.6) if masked else None
    if masked:
        mask[0] = False                                              # a sample with no sensor
    grads = []
    for backend in ("cpp", "reference"):
        xx = x.clone().requires_grad_()
        out = ops.pool_patch(xx, p, s, normalize, 1e-5, mask, backend=backend)
        weights = [torch.linspace(-1, 2, o.numel(), dtype=dtype).view_as(o) for o in out]
        sum((o * w).sum() for o, w in zip(out, weights)).backward()  # gradients through mean / std too
        grads.append((out, xx.grad))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    (out_cpp, g_cpp), (out_ref, g_ref) = grads
    for got, want in zip(out_cpp, out_ref):
        torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(g_cpp, g_ref, **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_non_contiguous_input(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 9, 4, generator=g)[..., 1:2]             # a feature slice: not contiguous
    assert not x.is_contiguous()
    mask = torch.rand(3, 9, generator=g) < 0.7
    for got, want in zip(*both(x.to(dtype), 4, 2, True, 1e-5, mask)):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    for got, want in zip(*both(x, 4, 2, True, 1e-5, mask)):
        torch.testing.assert_close(got, want)


def test_a_big_half_mask_does_not_overflow():
    x = torch.ones(1, 2, 70_000, 1, dtype=torch.float16)            # 70,000 > float16's max 65,504
    patches, _, _ = ops.pool_patch(x, 2, 1, False, node_mask=torch.ones(70_000), backend="cpp")
    torch.testing.assert_close(patches.float(), torch.ones_like(patches, dtype=torch.float32),
                               rtol=0, atol=2e-3)  # not 0: the mask sum is taken in float32


def test_gradcheck_and_opcheck():
    x = torch.randn(2, 10, 4, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: extension.pool_patch(v, 4, 3, True, 1e-5, mask), (x,))
    one = torch.randn(3, 7, 1, 1, dtype=torch.float64, requires_grad=True)  # N = 1, F = 1
    assert torch.autograd.gradcheck(lambda v: extension.pool_patch(v, 3, 2, False)[0], (one,))
    torch.library.opcheck(torch.ops.sthfast.pool_patch_forward.default, (x, 4, 3, True, 1e-5, mask))
    torch.library.opcheck(torch.ops.sthfast.pool_patch_forward.default, (x, 3, 2, False, 1e-5, None))


def test_second_derivatives_equal_the_reference():
    """create_graph: the backward is the reference twin's, so higher derivatives exist."""
    x = torch.randn(2, 12, 5, 1, dtype=torch.float64, requires_grad=True)
    hessians = []
    for backend in ("cpp", "reference"):
        patches, mean, std = ops.pool_patch(x, 4, 2, backend=backend)
        (g,) = torch.autograd.grad(patches.pow(2).sum() + (mean * std).sum(), x, create_graph=True)
        hessians.append(torch.autograd.grad(g.pow(2).sum(), x)[0])
    torch.testing.assert_close(*hessians)


def test_compiles_into_one_graph_forward_and_backward():
    def loss(v):
        patches, mean, std = extension.pool_patch(v, 4, 2)
        return patches.pow(2).sum() + (mean * std).sum()

    x = torch.randn(2, 12, 5, 1)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.compile(loss, backend="aot_eager", fullgraph=True)(xc).backward()
    loss(xe).backward()
    torch.testing.assert_close(xc.grad, xe.grad)


def test_empty_batch_and_bad_input():
    out = ops.pool_patch(torch.randn(0, 12, 5, 1), 4, 2, backend="cpp")
    assert [o.shape for o in out] == [(0, 1, 6, 4), (0, 1), (0, 1)]
    with pytest.raises(ValueError, match=r"must be \[B, T, N, F\]"):
        ops.pool_patch(torch.randn(12, 5, 1), 4, 2, backend="cpp")
    with pytest.raises(ValueError, match=r"with T, N >= 1"):
        ops.pool_patch(torch.randn(2, 0, 3, 1), 1, 1, backend="cpp")
    for bad in ((0, 2), (4, 0), (4, -1), (9, 2)):                   # the op itself checks too
        with pytest.raises(RuntimeError, match="pool_patch: "):
            torch.ops.sthfast.pool_patch_forward(torch.randn(2, 5, 3, 1), *bad, True, 1e-5, None)
    with pytest.raises(RuntimeError, match="at least one step"):
        torch.ops.sthfast.pool_patch_forward(torch.randn(2, 0, 3, 1), 1, 1, True, 1e-5, None)
    with pytest.raises(ValueError, match=r"patch_len=7 is longer than the 5 steps padded by stride 1"):
        ops.pool_patch(torch.randn(2, 5, 3, 1), 7, 1, backend="cpp")
    with pytest.raises(ValueError, match=r"node_mask \[4\] must be \[N\] or \[B, N\]"):
        ops.pool_patch(torch.randn(2, 12, 5, 1), 4, 2, node_mask=torch.ones(4), backend="cpp")


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


def test_without_the_extension_auto_falls_back(monkeypatch):
    monkeypatch.setattr(extension, "available", lambda: False)
    assert ops.resolve("pool_patch", "auto", "cpu") == "reference"
    assert ops.resolve("hypergraph_mixprop", "auto", "cpu") == "sparse"
    assert ops.resolve("graph_mixprop", "auto", "cpu") == "sparse"
    for op in ("pool_patch", "hypergraph_mixprop"):
        with pytest.raises(ValueError, match=f"backend 'cpp' cannot run {op} on cpu"):
            ops.resolve(op, "cpp", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_equal_the_reference():
    assert extension.has_cuda_kernels(), "the extension was built without its CUDA kernels"
    x = torch.randn(4, 24, 300, 2, dtype=torch.float64)
    mask = torch.rand(4, 300) < 0.7
    for normalize in (True, False):
        xx = x.cuda().requires_grad_()
        out = ops.pool_patch(xx, 6, 4, normalize, 1e-5, mask.cuda(), backend="cuda")
        sum(o.sum() * (i + 1) for i, o in enumerate(out)).backward()
        xr = x.clone().requires_grad_()
        ref = ops.pool_patch(xr, 6, 4, normalize, 1e-5, mask, backend="reference")
        sum(o.sum() * (i + 1) for i, o in enumerate(ref)).backward()
        for got, want in zip(out, ref):
            torch.testing.assert_close(got.cpu(), want)
        torch.testing.assert_close(xx.grad.cpu(), xr.grad)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    """Compile-only check of csrc/pool_patch/pool_patch_cuda.cu with nvcc against this torch's
    headers (about a minute). A CPU build of torch lacks one generated CUDA header; a stub stands
    in for it. Running the kernels
    needs a GPU: test_cuda_kernels_equal_the_reference."""
    import sysconfig
    from pathlib import Path

    include = Path(torch.__file__).parent / "include"
    stub = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["nvcc", "-c", str(root / "csrc/pool_patch/pool_patch_cuda.cu"), "-o", str(tmp_path / "k.o"),
         "-std=c++20", "-O2", "--expt-relaxed-constexpr", f"-I{include}",
         f"-I{include / 'torch/csrc/api/include'}", f"-I{sysconfig.get_paths()['include']}",
         f"-I{tmp_path}", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_configures_without_a_compiler_or_without_torch(tmp_path):
    """The fallbacks the README promises: no C++ compiler, or a Python that cannot import torch (an
    isolated build), configure without error and build nothing."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    no_torch = tmp_path / "python-without-torch"
    no_torch.write_text(f"#!/bin/sh\nexec {sys.executable} -S -c 'raise SystemExit(1)' \"$@\"\n")
    no_torch.chmod(0o755)
    cases = {"no compiler": ({"CXX": "/nonexistent/c++"}, []),
             "no torch": ({}, [f"-DPython_EXECUTABLE={no_torch}"])}
    for name, (env, args) in cases.items():
        done = subprocess.run(["cmake", "-S", str(root), "-B", str(tmp_path / name.replace(" ", "_")),
                               *args], capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, **env})
        assert done.returncode == 0, (name, done.stdout[-2000:], done.stderr[-2000:])
        assert "building without the C++ extension" in done.stderr, (name, done.stderr[-2000:])
