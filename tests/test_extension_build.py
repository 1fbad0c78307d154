"""The C++ / CUDA extension's build: the CUDA sources compile with nvcc, CMake falls back cleanly
where there is no compiler or no torch, and a GPU machine's build carries the CUDA kernels. The ops
it implements are tested in tests/ops/ (test_pool_patch.py, test_hypergraph_mixprop.py)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from backend_cases import needs_cpp, needs_cuda

from sthfast.backends import extension


@pytest.mark.gpu
@needs_cuda
@needs_cpp
def test_the_build_has_its_cuda_kernels_where_there_is_a_gpu():
    assert extension.has_cuda_kernels(), "the extension was built without its CUDA kernels"


CUDA_TARGETS = (80, 90)                                  # sm_80 (A100) and sm_90 (H100)
ROOT = Path(__file__).resolve().parents[1]


def ptxas_reports(log: str) -> list[dict]:
    """``nvcc -Xptxas -v``'s account per kernel and target: name, target, registers, spill bytes."""
    reports, current = [], None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'", line):
            current = dict(kernel=m.group(1), target=m.group(2), registers=0, spills=0)
            reports.append(current)
        elif current and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            current["spills"] = int(m.group(1)) + int(m.group(2))
        elif current and (m := re.search(r"Used (\d+) registers", line)):
            current["registers"] = int(m.group(1))
    return reports


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("source", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*.cu")))
def test_cuda_source_compiles_for_sm80_and_sm90_without_spills(tmp_path, source):
    """Compile-only check of every ``csrc/**/*.cu`` with nvcc against this torch's headers, for each
    target in CUDA_TARGETS (about a minute a file). A CPU build of torch lacks one generated CUDA
    header; a stub stands in for it. Registers per kernel are printed (``-s``). Running the
    kernels needs a GPU: the cuda cases of tests/ops/."""
    import sysconfig

    include = Path(torch.__file__).parent / "include"
    stub = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n")
    targets = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_TARGETS]
    done = subprocess.run(
        ["nvcc", "-c", str(ROOT / source), "-o", str(tmp_path / "k.o"), *targets, "-Xptxas", "-v",
         "-std=c++20", "-O2", "--expt-relaxed-constexpr", f"-I{include}",
         f"-I{include / 'torch/csrc/api/include'}", f"-I{sysconfig.get_paths()['include']}",
         f"-I{tmp_path}", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = ptxas_reports(done.stdout + done.stderr)
    for r in reports:
        print(f"{source} {r['target']}: {r['registers']} registers, {r['spills']} bytes spilled  {r['kernel']}")
    assert {r["target"] for r in reports} == {f"sm_{a}" for a in CUDA_TARGETS}, done.stderr[-2000:]
    spilled = [r for r in reports if r["spills"]]
    assert not spilled, spilled


def test_ptxas_reports_are_read_per_kernel_and_target():
    log = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'
ptxas info    : Function properties for _Z3fooPf
    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Used 38 registers"""
    assert ptxas_reports(log) == [dict(kernel="_Z3fooPf", target="sm_80", registers=40, spills=12),
                                  dict(kernel="_Z3fooPf", target="sm_90", registers=38, spills=0)]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_configures_without_a_compiler_or_without_torch(tmp_path):
    """The fallbacks the README promises: no C++ compiler, or a Python that cannot import torch (an
    isolated build), configure without error and build nothing."""
    import sys

    no_torch = tmp_path / "python-without-torch"
    no_torch.write_text(f"#!/bin/sh\nexec {sys.executable} -S -c 'raise SystemExit(1)' \"$@\"\n")
    no_torch.chmod(0o755)
    cases = {"no compiler": ({"CXX": "/nonexistent/c++"}, []),
             "no torch": ({}, [f"-DPython_EXECUTABLE={no_torch}"])}
    for name, (env, args) in cases.items():
        done = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / name.replace(" ", "_")),
                               *args], capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, **env})
        assert done.returncode == 0, (name, done.stdout[-2000:], done.stderr[-2000:])
        assert "building without the C++ extension" in done.stderr, (name, done.stderr[-2000:])
