"""The benchmark suites run in a quick mode (tiny sizes, one call each) and their results render,
so that they cannot rot between the full runs that produce benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _run(args, **env):
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env})
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done


@pytest.mark.slow
def test_quick_suites_run_and_render(tmp_path):
    pytest.importorskip("pytest_benchmark")
    pytest.importorskip("sklearn")
    for cases, out in (("test_op", "throughput.json"), ("test_model", "model_step.json")):
        _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/test_throughput.py", "-k", cases,
              f"--benchmark-json={tmp_path / out}", "--benchmark-min-rounds=1"], STHFAST_BENCH_QUICK="1")
    _run(["benchmarks/large_n.py", "--quick", "--out", str(tmp_path / "large_n.json")])
    _run(["benchmarks/render_results.py", "--from", str(tmp_path), "--out", str(tmp_path / "RESULTS.md")])
    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## Throughput", "### hypergraph_construction (float32)", "## The whole model",
                    "## Large N", "### Hypergraph stage with `auto`"):
        assert heading in text, heading
    assert "| 64 |" in text and "authors / sparse" in text
    assert "| train | 2 | 48 -> 48 | 64 |" in text and "reference / auto+bf16" in text
