"""The plots' time axis and the hypergraph plot of each hypergraph kind (the plots of a whole run:
tests/test_training.py::test_plots_read_in_units_and_time)."""

import pytest
import torch

from sthfast import STHSepNet, STHSepNetConfig, plots


@pytest.mark.parametrize("step_seconds, steps, expected", [
    (300, 12, (5.0, "minutes")), (300, 48, (5 / 60, "hours")), (3600, 12, (1.0, "hours")),
    (3600, 168, (1 / 24, "days")), (7 * 86400, 4, (7.0, "days"))])
def test_horizon_time_picks_a_readable_unit(step_seconds, steps, expected):
    scale, unit = plots.horizon_time(step_seconds, steps)
    assert unit == expected[1] and scale == pytest.approx(expected[0])


def test_window_errors_skip_missing_targets():
    pred = torch.zeros(2, 3, 2)
    truth = torch.tensor([[[1.0, float("nan")], [3.0, float("nan")], [float("nan"), float("nan")]],
                          [[-2.0, 4.0], [2.0, 4.0], [2.0, 1.0]]])
    errors = plots.window_errors(pred, truth)
    assert errors[0, 0] == 2.0 and torch.isnan(torch.tensor(errors[0, 1]))
    assert errors[1].tolist() == [2.0, 3.0]


@pytest.mark.parametrize("hypergraph, order, panels", [("binary", "fixed", 1), ("adaptive", "fixed", 3),
                                                        ("adaptive", "adaptive", 3), ("dynamic", "fixed", 0)])
def test_hypergraph_plot_of_each_kind(tmp_path, monkeypatch, hypergraph, order, panels):
    """Memberships per node always; the weights and effective orders where weights vary (not
    binary); nothing to draw for a per-window (dynamic) hypergraph."""
    torch.manual_seed(0)
    model = STHSepNet(STHSepNetConfig(num_nodes=12, fusion="spatial_only", hypergraph=hypergraph,
                                      hyper_order=order, seq_len=12, pred_len=12, patch_len=4, stride=2))
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.extend(
        (ax.get_xlabel(), ax.get_title(), [t.get_text() for t in ax.texts]) for ax in fig.axes))
    plots._hypergraph(tmp_path / "hypergraph.png", model)
    shown = [d for d in drawn if d[0]]
    assert len(shown) == panels
    if panels:
        assert shown[0][0] == "hyperedges a node belongs to" and "over 12 nodes (k=3)" in shown[0][1]
    if panels == 3:
        assert f"{order} order" in shown[2][1]
    texts = " ".join(t for d in drawn for t in d[2])
    assert ("every membership weight is 1" in texts) == (hypergraph == "binary")
    assert ("no static hypergraph" in texts) == (hypergraph == "dynamic")
