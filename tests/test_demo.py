"""The README's main job runs end to end on the embedded data, offline."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sthfast.data import embedded_path, load_embedded

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_dataset_is_los_loop():
    arrays = load_embedded()
    assert arrays["data"].shape == (2016, 207) and arrays["adj"].shape == (207, 207)
    assert np.isfinite(arrays["data"]).all() and arrays["timestamps"][0] == "2012-03-01T00:00:00"
    assert embedded_path().stat().st_size < 1_000_000
    assert (embedded_path().parent / "PROVENANCE.md").is_file()


@pytest.mark.slow
def test_demo_runs_offline():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, str(ROOT / "python" / "demo_forward_backward.py"),
                             "--steps", "2", "--batch-size", "2"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "median forward+backward+step time" in result.stdout
    assert "last-value baseline" in result.stdout


@pytest.mark.slow
def test_step_profiler_lists_the_top_ops():
    result = subprocess.run([sys.executable, str(ROOT / "python" / "profile_step.py"), "--nodes", "16",
                             "--batch", "2", "--repeats", "1", "--rows", "5"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "median step" in result.stdout and "Self CPU time total" in result.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "python" / "profile_step.py"), "--nodes", "0"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr
