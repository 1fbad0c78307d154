"""Every Triton kernel compiles for real GPU targets (sm_80 and sm_90) with Triton's own compiler and
ptxas, for every argument type and constexpr combination that the op tests launched under the
interpreter (``sthfast.backends.triton.aot``; the interpreter alone accepts kernels that a GPU
compiler refuses): no register spills, shared memory within the target's limit. Runs after every
other test (``conftest.py`` records their launches); run alone, it records them by running the
Triton op tests first. The table of registers and shared memory per kernel is printed (``-s``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sthfast import optional_deps
from sthfast.backends.triton import aot

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not optional_deps.probe("triton").ok,
                                reason=f"needs Triton: {optional_deps.probe('triton').detail}")


def _recorded_launches(tmp_path: Path) -> list[aot.Launch]:
    """The launches this session recorded if they cover every kernel, else those of a run of the
    Triton op tests under the interpreter."""
    launches = list(aot.RECORDED)
    if optional_deps.triton_interpreter() and set(aot.kernels()) <= {launch.kernel for launch in launches}:
        return launches
    path = tmp_path / "launches.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "STHFAST_TRITON_LAUNCHES": str(path)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/ops",
                           "-k", "triton and cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    return [aot.Launch.from_json(item) for item in json.loads(path.read_text())]


@pytest.mark.slow
@pytest.mark.triton_aot
def test_every_triton_kernel_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    if aot.unsupported():
        pytest.skip(aot.unsupported())
    launches = _recorded_launches(tmp_path)
    (tmp_path / "launches.json").write_text(json.dumps([launch.to_json() for launch in launches]))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}    # the real compiler
    done = subprocess.run([sys.executable, "-m", "sthfast.backends.triton.aot", str(tmp_path / "launches.json"),
                           str(tmp_path / "report.json")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    print(done.stdout)
    result = json.loads((tmp_path / "report.json").read_text())
    reports = [aot.Report(**r) for r in result["reports"]]
    launched = {launch.kernel for launch in launches}
    assert result["kernels"] and set(result["kernels"]) <= launched, \
        f"kernels no test launches (so none is compiled here): {sorted(set(result['kernels']) - launched)}"
    assert {r.target for r in reports} == {f"sm_{arch}" for arch in aot.TARGETS}
    problems = [f"{r.kernel} {r.target} [{r.constexprs}; {r.types}]: {p}" for r in reports for p in r.problems()]
    assert not problems, "\n".join(problems)


def test_a_launch_is_described_by_its_types_and_constexprs():
    import torch
    import triton.language as tl

    def kernel(x, n, flag, BLOCK: "tl.constexpr", ACC: "tl.constexpr"):
        pass

    launch = aot.describe(kernel, (torch.zeros(2, dtype=torch.bfloat16), 3, True), dict(BLOCK=16, ACC=tl.float32,
                                                                                       num_warps=8, maxnreg=255))
    assert launch.signature == (("x", "*bf16"), ("n", "i32"), ("flag", "u1"), ("BLOCK", "constexpr"),
                                ("ACC", "constexpr"))
    assert launch.divisible == ("x",)                 # a fresh tensor is 16-byte aligned; 3 is no multiple of 16
    assert launch.num_warps == 8 and launch.maxnreg == 255
    assert aot.Launch.from_json(json.loads(json.dumps(launch.to_json()))) == launch
    wide = aot.describe(kernel, (torch.zeros(4)[1:], 2**40, False), dict(BLOCK=1, ACC=tl.float64))
    assert wide.signature[1] == ("n", "i64") and wide.divisible == ("n",)   # x 4 bytes off alignment
