"""The benchmark suites run in a quick mode (tiny sizes, one call each) and their results render,
so that they cannot rot between the full runs that produce benchmarks/RESULTS.md."""

from __future__ import annotations

import json
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
    for heading in ("## Throughput", "### knn_hypergraph (float32)", "## The whole model",
                    "## Large N", "### Hypergraph stage with `auto`"):
        assert heading in text, heading
    assert "| 64 |" in text and "authors / sparse" in text
    assert "| train | 2 | 48 -> 48 | 64 |" in text and "reference / auto+bf16" in text


def _metrics(mae: float, val: float, horizons=("h3",)) -> dict:
    scores = {h: {"mae": mae, "rmse": 2 * mae, "mape": 10.0} for h in ("all", *horizons)}
    baseline = {h: {"mae": 1.0, "rmse": 2.0, "mape": 10.0} for h in ("all", *horizons)}
    return {"num_nodes": 5, "seq_len": 4, "pred_len": 3, "zeros_missing": False, "epochs_run": 2, "best_epoch": 1,
            "history": [{"val_mae": val, "train_seconds": 1.0}, {"val_mae": val + 1, "train_seconds": 3.0}],
            "test": {"model": scores, "last_value": baseline, "seasonal_average": baseline, "linear": baseline}}


def test_accuracy_campaign_lists_its_runs_and_the_table_renders_them(tmp_path):
    listed = _run(["benchmarks/accuracy_campaign.py", "--list", "--only", "chickenpox/*"]).stdout.splitlines()
    assert len(listed) == 3 + 3 + 2 + 8 + 4 + 16 + 3   # defaults, spatial / MSE / flip, Huber x 2, the rest,
    #                                                    seeds 2-3 of spatial / flip, then of the rest, the peer
    assert all(line.startswith("sthfast train --data ") for line in listed[:-3])
    assert all(line.startswith("python benchmarks/stid_peer.py --data ") for line in listed[-3:])
    assert listed[-1].endswith("--seed 3 --out runs/accuracy/chickenpox/stid-seed3 --no-plots")
    assert "--seasonal-residual --seed 1 --out runs/accuracy/chickenpox/with_seasonal-seed1" in listed[5]
    los_loop = _run(["benchmarks/accuracy_campaign.py", "--list", "--only", "los-loop-standard/*"]).stdout.splitlines()
    assert len(los_loop) == len(set(los_loop)) == 3 + 3 + 1 + 3 + 8 + 16 + 3 + 3 + 3 + 3   # its flip planned
    #                        twice, listed once; the peer, the identity head, the loss in data units, 30 epochs
    assert "--hypergraph none --seed 2 " in los_loop[18] and "--gate-init 0.5 --seed 3 " in los_loop[-13]
    assert "--identity-head-dim 32 --seed 3 " in los_loop[-7] and "--loss-units original --seed 3 " in los_loop[-4]
    assert "--epochs 5 --patience 3 --epochs 30 --patience 5 --seed 3 " in los_loop[-1]     # the last flag wins
    results = tmp_path / "results" / "chickenpox"
    results.mkdir(parents=True)
    for name, mae, val in (("full-seed1", 0.5, 0.4), ("full-seed2", 0.7, 0.6), ("with_seasonal-seed1", 1.5, 0.9),
                           ("mse_loss-seed1", 0.6, 0.45), ("huber_loss-seed1", 0.6, 0.55),
                           ("spatial_only-seed1", 0.4, 0.5), ("stid-seed1", 0.55, 0.45)):
        metrics = {**_metrics(mae, val), "campaign": {"commit": "abc1234", "date": "2026-12-03", "machine": "CPU"}}
        (results / f"{name}.json").write_text(json.dumps(metrics))
    text = _run(["benchmarks/accuracy_table.py", str(tmp_path / "results")]).stdout
    assert "runs at commit(s) abc1234, on 2026-12-03" in text
    assert "## CHICKENPOX-HU, 4 weeks -> 1" in text and "LOS-LOOP, paper protocol (48 -> 48) | not run" in text
    assert "| STH-SepNet (defaults) | 2 | 0.600 ± 0.141 | 1.200 ± 0.283 |" in text
    assert "| with the seasonal residual | 1 | 1.500 | 3.000 |" in text
    assert "| peer: BasicTS STID (its own recipe) | 1 | 0.550 | 1.100 |" in text
    assert "python benchmarks/stid_peer.py --data " in text         # its command, beside ours
    assert ("| CHICKENPOX-HU, 4 weeks -> 1 | 0.550 / 1.100 (best epochs 1) | 0.600 / 1.200 (best epochs 1/1) | - | - "
            "| - | 0.600 (STH-SepNet (defaults)) > 0.550: -9.1 % |") in text      # the peer table
    assert ("| CHICKENPOX-HU, 4 weeks -> 1 | 2 of 2 seeds | 0.600 vs 0.550 (worse, within the seeds' spread) | "
            "1.200 vs 1.100 (worse, within the seeds' spread) | 0.600 vs 0.400 (worse) | 0.500 vs 0.450 (mse_loss), "
            "0.550 (huber_loss) (worse, within the seeds' spread) | 0.500 vs 0.900 (better or equal) |") in text
    assert "| STH-SepNet (defaults) | 0.500 ± 0.141 | 2/2 | 1/1 | 2.0 | 2 of 2 |" in text


def test_the_peer_trains_on_our_windows_and_writes_a_campaign_result(tmp_path):
    """benchmarks/stid_peer.py on a small series, with sthfast train's flags: a metrics.json that the
    campaign's table reads (test metrics beside the baselines, the history, the best epoch)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import peers

    if not peers.have_basicts():
        pytest.skip(f"needs BasicTS: {peers.INSTALL}")
    steps = _periodic_series(tmp_path / "small.npz")
    done = _run(["benchmarks/stid_peer.py", "--data", str(steps), "--protocol", "standard", "--no-zeros-missing",
                 "--steps-per-day", "24", "--epochs", "2", "--seed", "1", "--out", str(tmp_path / "run")])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert done.stdout.splitlines()[-1].startswith("STID test MAE ")
    assert (metrics["seq_len"], metrics["pred_len"], metrics["num_nodes"]) == (12, 12, 4)
    assert set(metrics["test"]) >= {"model", "last_value", "seasonal_average", "linear", "model_beats"}
    history = metrics["history"]
    assert len(history) == metrics["epochs_run"] > 2                   # its own recipe, not --epochs 2
    best = min(range(len(history)), key=lambda i: history[i]["val_mae"]) + 1
    assert metrics["best_epoch"] == best and metrics["epochs_run"] <= best + 10


def _periodic_series(path: Path) -> Path:
    """A daily-periodic series of 4 nodes over 30 days of hourly steps, with noise."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(24 * 30)
    data = 10 + 5 * np.sin(2 * np.pi * t / 24)[:, None] * rng.uniform(0.5, 1.5, 4) + rng.normal(0, 1, (t.size, 4))
    np.savez(path, data=data.astype(np.float32))
    return path
