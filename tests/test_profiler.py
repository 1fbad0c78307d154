"""The latency profiler (``sthfast profile``, :mod:`sthfast.profiler`) on the embedded dataset: every
scenario runs, its stage times add up to the measured forward pass, reuse skips construction, and the
chart is written."""

from __future__ import annotations

import pytest

from sthfast import profiler

CONSTRUCTION = ("graph_construction", "node_features", "neighbour_search", "hyperedge_structure")
# The stages leave only Python glue between them untimed: at most 2% of the forward for the default
# model (benchmarks/RESULTS.md), up to ~11% for this tiny model's few-millisecond forward.
TOLERANCE = 0.15


@pytest.mark.slow
def test_profiler_stages_add_up_on_the_embedded_data(tmp_path, capsys):
    chart, trace = tmp_path / "chart.png", tmp_path / "trace.json"
    results = profiler.main(["--tiny", "--repeats", "3", "--batch", "4", "--chart", str(chart),
                                       "--trace", str(trace)])
    assert set(results) == set(profiler.SCENARIOS)
    for name, stages in results.items():
        summed = sum(stages.get(s, 0.0) for s in profiler.STAGES)
        assert abs(summed - stages["forward"]) <= TOLERANCE * stages["forward"], (name, summed, stages)
        assert ("backward" in stages) == ("training" in name)
    assert all(results["streaming, rebuilt"].get(s, 0) > 0 for s in CONSTRUCTION)
    assert not any(s in results["streaming, reused"] for s in CONSTRUCTION)     # built once, reused
    assert "hypergraph_mixprop" in results["training batch"]
    assert "hypergraph_mixprop" not in results["static graph, streaming"]
    assert chart.stat().st_size > 10_000 and trace.stat().st_size > 0
    assert "sum of stages" in capsys.readouterr().out


@pytest.mark.slow
def test_profiler_splits_the_step_by_step_propagation(tmp_path):
    """The sparse backend's MixProp runs its products one by one: the profile shows node ->
    hyperedge (v2e) and hyperedge -> node (e2v) inside it (the fused ``cpp`` kernel has no parts)."""
    results = profiler.main(["--tiny", "--repeats", "1", "--batch", "2", "--backend", "sparse",
                                       "--chart", str(tmp_path / "chart.png")])
    batch = results["training batch"]
    assert 0 < batch["v2e"] and 0 < batch["e2v"] and batch["v2e"] + batch["e2v"] <= batch["hypergraph_mixprop"]
