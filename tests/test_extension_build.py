"""The C++ / CUDA extension's build: the CUDA sources compile with nvcc, CMake falls back cleanly
where there is no compiler or no torch, and a GPU machine's build carries the CUDA kernels. The ops
it implements are tested in tests/ops/ (test_pool_patch.py, test_hypergraph_mixprop.py)."""

import shutil
import subprocess

import pytest
import torch

from sthfast.backends import extension

from backend_cases import needs_cpp, needs_cuda


@pytest.mark.gpu
@needs_cuda
@needs_cpp
def test_the_build_has_its_cuda_kernels_where_there_is_a_gpu():
    assert extension.has_cuda_kernels(), "the extension was built without its CUDA kernels"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    """Compile-only check of csrc/pool_patch/pool_patch_cuda.cu with nvcc against this torch's
    headers (about a minute). A CPU build of torch lacks one generated CUDA header; a stub stands
    in for it. Running the kernels needs a GPU: the cuda cases of tests/ops/test_pool_patch.py."""
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
