"""``benchmarks/gpu/validate.py``, the one command that validates a GPU machine: its dry run (what CI
can run: the steps listed, exit 0) and its report. The steps themselves need a GPU (run there)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "validate.py"


def _validate():
    import importlib.util

    spec = importlib.util.spec_from_file_location("validate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_lists_every_step_and_exits_0():
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [name for name, *_ in _validate().plan("90")]
    assert steps == ["environment", "build", "gpu_tests", "auto_picks", "training", "op_benchmarks",
                     "model_benchmarks"]
    for name in steps:
        assert f"  {name}" in done.stdout
    if not torch.cuda.is_available():
        assert done.stdout.startswith("validate: no CUDA GPU on this machine: nothing validated")
        plain = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
        assert plain.returncode == 0 and plain.stdout.splitlines()[0] == done.stdout.splitlines()[0]


def test_the_report_names_the_device_and_tabulates_each_step():
    results = {
        "environment": dict(what="the GPU", status="ok", seconds=1.0, device="NVIDIA H100 80GB HBM3", capability="9.0",
                            multiprocessors=132, memory_gib=79.1, torch="2.11.0", cuda="13.0", triton="3.6.0",
                            nvcc="Build cuda_13.0", faiss=None),
        "build": dict(what="the extension", status="failed", seconds=3.0, log="error"),
        "auto_picks": dict(what="auto", status="ok", seconds=2.0, picks={"hypergraph_mixprop (N = 207)": "triton"}),
        "training": dict(what="train", status="ok", seconds=9.0,
                         runs={"auto": dict(returncode=0, seconds=8.0, test=dict(mae=4.2))}),
        "op_benchmarks": dict(what="ops", status="ok", seconds=5.0, rows=[
            dict(op="hypergraph_mixprop", backend="triton", n=207, batch=32, ms=0.5, peak_gib=0.1),
            dict(op="hypergraph_mixprop", backend="reference", n=100_000, batch=2, skipped="dense")]),
        "model_benchmarks": dict(what="steps", status="skipped", reason="10 s of the budget left"),
    }
    report = _validate().render(results)
    assert "Device: **NVIDIA H100 80GB HBM3**" in report
    assert "| build | the extension | failed | 3.0 |" in report
    assert "| hypergraph_mixprop (N = 207) | triton |" in report
    assert "| auto | 0 | 8.0 | 4.2 |  |" in report
    assert "| hypergraph_mixprop | triton | 207 | 32 | 0.5 | 0.1 |  |" in report
    assert "| hypergraph_mixprop | reference | 100000 | 2 |  |  | dense |" in report
    assert "skipped (10 s of the budget left)" in report


def test_a_step_fails_when_one_of_its_runs_or_cases_failed():
    validate = _validate()
    assert validate.failures(dict(runs={"auto": dict(returncode=0), "triton": dict(returncode=1, error="boom")}))
    assert validate.failures(dict(rows=[dict(op="x", ms=1.0), dict(op="y", error="RuntimeError: no")]))
    assert not validate.failures(dict(rows=[dict(op="x", ms=1.0), dict(op="y", skipped="dense")]))


def test_a_step_past_its_time_is_killed_with_its_children(tmp_path):
    """The step and the process it started (as ``sthfast train`` or nvcc would be) both end."""
    pid_file = tmp_path / "child.pid"
    script = (f"import subprocess, time; child = subprocess.Popen(['sleep', '60']); "
              f"open({str(pid_file)!r}, 'w').write(str(child.pid)); print('started', flush=True); time.sleep(60)")
    status, log = _validate().run_step([sys.executable, "-c", script], dict(os.environ), 3)
    assert status == "timed out" and "started" in log
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert _validate().run_step([sys.executable, "-c", "print('fine')"], dict(os.environ), 30) == ("ok", "fine\n")
