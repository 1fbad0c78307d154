"""Metrics against hand-computed values; baselines against direct computations."""

import math

import numpy as np
import pytest
import torch

from sthfast.baselines import LastValue, LinearBaseline, SeasonalAverage
from sthfast.data import SensorSeries, prepare
from sthfast.data.calendar import calendar
from sthfast.metrics import ForecastMetrics, loss_weights, masked_loss


def test_metrics_by_hand_with_missing_and_zero_masks():
    truth = torch.tensor([[[1.0, 2.0], [float("nan"), 4.0]], [[0.0, 5.0], [2.0, 10.0]]])  # [B=2, H=2, N=2]
    pred = torch.tensor([[[2.0, 2.0], [9.0, 1.0]], [[1.0, 3.0], [2.0, 14.0]]])
    m = ForecastMetrics(pred_len=2)
    m.update(pred[:1], truth[:1])          # accumulated over batches, not averaged per batch
    m.update(pred[1:], truth[1:])
    # valid entries: h1: (1,2),(2,2),(0,1),(5,3) ; h2: (4,1),(2,2),(10,14)   (NaN dropped)
    errs = [1, 0, 1, 2, 3, 0, 4]
    result = m.result(horizons=(1, 2))
    assert result["all"]["mae"] == pytest.approx(sum(errs) / 7)
    assert result["all"]["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errs) / 7))
    ape = [1 / 1, 0 / 2, 2 / 5, 3 / 4, 0 / 2, 4 / 10]           # truth 0 is left out of MAPE
    assert result["all"]["mape"] == pytest.approx(100 * sum(ape) / 6)
    assert result["h1"]["mae"] == pytest.approx(4 / 4) and result["h2"]["mae"] == pytest.approx(7 / 3)
    masked = ForecastMetrics(pred_len=2, zeros_missing=True)
    masked.update(pred, truth)
    assert masked.result()["all"]["mae"] == pytest.approx((sum(errs) - 1) / 6)  # the 0 truth is gone


def test_metrics_with_nothing_valid_are_nan():
    m = ForecastMetrics(pred_len=1)
    m.update(torch.zeros(1, 1, 2), torch.full((1, 1, 2), float("nan")))
    assert all(math.isnan(v) for v in m.result()["all"].values())


def _series(steps=200, nodes=3, seed=0, with_times=True):
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    values = (10 + np.sin(2 * np.pi * t / 24)[:, None] * np.arange(1, nodes + 1) + rng.normal(0, 0.1, (steps, nodes)))
    hours = np.datetime64("2024-01-01T00:00") + t * np.timedelta64(1, "h")
    times = hours.astype("datetime64[s]") if with_times else None
    return SensorSeries(values[:, :, None].astype(np.float32), "synthetic", times)


def test_last_value_is_the_last_input_on_the_original_scale():
    data = prepare(_series(), seq_len=6, pred_len=3)
    x, y, starts = data.test.batch(torch.arange(4))
    pred = LastValue(data)(x, starts, 3)
    raw = data.series.values[:, :, 0]
    for b, s in enumerate(starts.tolist()):
        np.testing.assert_allclose(pred[b].numpy(), np.repeat(raw[s + 5][None], 3, 0), rtol=1e-5)


@pytest.mark.parametrize("weeks, period", [(6, 24 * 7), (3, 24)])
def test_seasonal_average_by_hand(weeks, period):
    """By week slot from PROFILE_MIN_WEEKS (4) training weeks on, by hour of the day below."""
    series = _series(steps=24 * 7 * weeks)          # hourly data; the training split is 70 %
    data = prepare(series, seq_len=6, pred_len=3)
    n_train = data.boundaries[0]
    raw = series.values[:, :, 0].astype(np.float64)
    x, y, starts = data.test.batch(torch.arange(5))
    pred = SeasonalAverage(data)(x, starts, 3)
    for b, s in enumerate(starts.tolist()):
        for h in range(3):
            step = s + 6 + h
            same = [t for t in range(n_train) if t % period == step % period]
            np.testing.assert_allclose(pred[b, h].numpy(), raw[same].mean(0), rtol=1e-5)


def test_seasonal_average_falls_back_to_time_of_day_then_node_mean():
    series = _series(steps=24 * 4)                   # four days: the test days' weekdays are unseen
    data = prepare(series, seq_len=6, pred_len=3)
    n_train = data.boundaries[0]
    raw = series.values[:, :, 0].astype(np.float64)
    x, y, starts = data.test.batch(torch.arange(2))
    pred = SeasonalAverage(data)(x, starts, 3)
    step = int(starts[0]) + 6
    same_hour = [t for t in range(n_train) if t % 24 == step % 24]
    np.testing.assert_allclose(pred[0, 0].numpy(), raw[same_hour].mean(0), rtol=1e-5)
    no_times = _series(steps=24 * 4, with_times=False)
    pred = SeasonalAverage(prepare(no_times, seq_len=6, pred_len=3, cal=calendar(no_times, 24)))(x, starts, 3)
    np.testing.assert_allclose(pred[0, 0].numpy(), raw[same_hour].mean(0), rtol=1e-5)


def test_seasonal_average_node_mean_where_the_hour_never_occurs_in_training():
    series = _series(steps=30)                       # 21 training hours: hours 21..23 never occur
    data = prepare(series, seq_len=2, pred_len=2, split=(0.7, 0.1, 0.2))
    raw = series.values[:, :, 0].astype(np.float64)
    table = SeasonalAverage(data).forecast_by_step.numpy()
    np.testing.assert_allclose(table[22], raw[:21].mean(0), rtol=1e-5)
    np.testing.assert_allclose(table[25], raw[[1]].mean(0), rtol=1e-5)   # hour 1 of day 2: seen once


def test_linear_baseline_equals_least_squares():
    data = prepare(_series(), seq_len=6, pred_len=3)
    model = LinearBaseline(data, ridge=0.0)
    x, y, _ = data.train.batch(torch.arange(len(data.train)))
    mean, std = data.target_scale()
    inputs = torch.cat([x[..., 0].permute(0, 2, 1), torch.ones(len(x), 3, 1)], -1).reshape(-1, 7).double()
    targets = ((y - mean) / std).permute(0, 2, 1).reshape(-1, 3).double()
    direct = torch.linalg.lstsq(inputs, targets).solution.float()
    torch.testing.assert_close(model.weight, direct, atol=1e-4, rtol=1e-3)
    xt, yt, st = data.test.batch(torch.arange(3))
    pred = model(xt, st, 3)
    design = torch.cat([xt[..., 0].permute(0, 2, 1), torch.ones(3, 3, 1)], -1)
    expected = (design @ direct).permute(0, 2, 1) * std + mean
    torch.testing.assert_close(pred, expected, atol=1e-4, rtol=1e-4)


def test_report_margins_and_where_a_baseline_wins():
    """Margins in percent of the baseline's error over all steps and per horizon; the table names
    every horizon and metric where a baseline is better, and warns when it is better overall."""
    from sthfast.evaluation import format_table, report

    def metrics(errors):                                  # one node, one window, errors per step
        m = ForecastMetrics(len(errors))
        m.update(torch.tensor(errors, dtype=torch.float64).view(1, -1, 1) + 10.0,
                 torch.full((1, len(errors), 1), 10.0, dtype=torch.float64))
        return m

    result = report({"model": metrics([1.0, 2.0, 3.0]), "close": metrics([2.0, 1.0, 4.0]),
                     "far": metrics([4.0, 4.0, 6.0])}, horizons=(2,))
    assert result["model_beats"] == {"close": True, "far": True}
    assert result["margins"]["far"]["all"]["mae"] == pytest.approx(100 * (14 / 3 - 2) / (14 / 3))
    assert result["margins"]["close"]["h2"]["mae"] == pytest.approx(-100.0)        # 2 against 1
    table = format_table(result)
    assert "close is better at: MAE h2, RMSE h2, MAPE h2" in table
    assert "far is better" not in table and "beats every baseline" in table
    assert "MAE  +57.1 %" in table                                                   # far, all steps
    worse = report({"model": metrics([3.0, 3.0, 3.0]), "close": metrics([2.0, 1.0, 4.0])}, horizons=())
    assert "WARNING: the model does NOT beat ['close']" in format_table(worse)
    assert "close is better at: MAE all steps" in format_table(worse)


def test_the_loss_in_original_units_is_the_metric_mae_over_the_mean_std():
    """Weighted by ``loss_weights(std, 'original')``, the masked MAE of scaled errors is the MAE in
    the data's units (what the metrics report) over the nodes' mean std; 'scaled' weighs every node
    the same."""
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([10.0, 0.0, 3.0]), torch.tensor([5.0, 0.5, 1.5])
    truth = torch.randn(4, 2, 3, generator=g) * std + mean
    truth[0, 0, 1] = math.nan                                   # a missing target counts nowhere
    forecast = truth + torch.randn(4, 2, 3, generator=g)
    valid = ~torch.isnan(truth)
    scaled = lambda v: (v - mean) / std
    w = loss_weights(std, "original")
    loss = masked_loss(scaled(forecast) * w, scaled(truth) * w, valid, "mae")
    original_mae = (forecast - truth)[valid].abs().mean()
    torch.testing.assert_close(loss, original_mae / std.mean())
    same = masked_loss(scaled(forecast) * loss_weights(std, "scaled"), scaled(truth), valid, "mae")
    torch.testing.assert_close(same, ((scaled(forecast) - scaled(truth))[valid]).abs().mean())
    with pytest.raises(ValueError, match="'scaled' or 'original'"):
        loss_weights(std, "metres")
