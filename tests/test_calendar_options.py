"""The calendar options: week slots decoded from the input's calendar channels, the seasonal
residual (profile off the inputs, back onto the forecast), learned time embeddings, the identity
head, and how `sthfast train` wires them (channels, profile fitted on the training split,
checkpoints)."""

import numpy as np
import pytest
import torch

from sthfast import STHSepNet
from sthfast.baselines import SeasonalAverage
from sthfast.data import load_series, prepare
from sthfast.data.calendar import calendar, seasonal_profile
from sthfast.nn.calendar import CalendarSlots

PER_DAY = 6


def calendar_config(small_config, **overrides):
    values = dict(in_features=3, time_of_day_channel=1, day_of_week_channel=2, slots_per_day=PER_DAY)
    values.update(overrides)
    return small_config(**values)


def calendar_batch(config, first_steps, seed=0):
    """``[B, T, N, 3]``: a random target, then the time of day and weekday / 7 of windows whose
    first step is ``first_steps[b]`` (step 0 = Monday, slot 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(first_steps), config.seq_len, config.num_nodes, 3, generator=g)
    steps = torch.as_tensor(first_steps)[:, None] + torch.arange(config.seq_len)
    x[..., 1] = ((steps % PER_DAY) / PER_DAY)[..., None]
    x[..., 2] = (((steps // PER_DAY) % 7) / 7)[..., None]
    return x, steps


@pytest.mark.parametrize("weekly", [True, False])
def test_slots_are_decoded_from_the_calendar_channels(small_config, weekly):
    c = calendar_config(small_config, seasonal_residual=True,
                        **({} if weekly else dict(day_of_week_channel=None)))
    x, steps = calendar_batch(c, [0, 5, 41, 7 * PER_DAY - 3, 200])
    slots = CalendarSlots(c)
    period = 7 * PER_DAY if weekly else PER_DAY
    assert slots.num_slots == period
    last = slots.last(x)
    assert torch.equal(last, steps[:, -1] % period)
    ahead = torch.arange(1, c.pred_len + 1)
    assert torch.equal(slots.around(last, ahead), (steps[:, -1:] + ahead) % period)   # wraps the week


def test_a_zero_profile_changes_nothing_and_a_profile_is_removed_then_restored(small_config):
    torch.manual_seed(0)
    plain = STHSepNet(calendar_config(small_config))
    torch.manual_seed(0)
    seasonal = STHSepNet(calendar_config(small_config, seasonal_residual=True))
    seasonal.eval(), plain.eval()
    c = seasonal.config
    x, steps = calendar_batch(c, [3, 17, 60])
    with torch.no_grad():
        assert torch.allclose(seasonal(x), plain(x), atol=1e-6)            # same weights, zero profile
        profile = torch.randn(7 * PER_DAY, c.num_nodes, generator=torch.Generator().manual_seed(1))
        seasonal.set_seasonal_profile(profile)
        week = 7 * PER_DAY
        deseasonalised = x.clone()
        deseasonalised[..., 0] -= profile[steps % week]
        horizon = steps[:, -1:] + torch.arange(1, c.pred_len + 1)
        expected = plain(deseasonalised) + profile[horizon % week]
        assert torch.allclose(seasonal(x), expected, atol=1e-5)


def test_the_seasonal_model_trains_and_the_profile_is_not_a_parameter(small_config):
    model = STHSepNet(calendar_config(small_config, seasonal_residual=True))
    assert "seasonal.profile" in model.state_dict()
    assert not any("profile" in name for name, _ in model.named_parameters())
    x, _ = calendar_batch(model.config, [0, 9])
    model(x).pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_time_embeddings_widen_the_spatial_input_and_get_gradients(small_config):
    c = calendar_config(small_config, time_embedding_dim=4)
    assert c.spatial_in_features == 3 + 8
    model = STHSepNet(c)
    x, _ = calendar_batch(c, [0, 30, 77])
    model(x).pow(2).mean().backward()
    for table in (model.time_embedding.time_of_day, model.time_embedding.day_of_week):
        assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    # rows of slots that occur in the batch get gradient, others none
    used = set((torch.arange(c.seq_len) + torch.tensor([0, 30, 77])[:, None]).remainder(PER_DAY).flatten().tolist())
    unused = sorted(set(range(PER_DAY)) - used)
    assert all(model.time_embedding.time_of_day.weight.grad[s].abs().sum() == 0 for s in unused)
    no_weekday = calendar_config(small_config, time_embedding_dim=4, day_of_week_channel=None)
    assert no_weekday.spatial_in_features == 3 + 4 and STHSepNet(no_weekday).time_embedding.day_of_week is None


def test_the_identity_head_adds_its_forecast_to_the_spatial_streams(small_config):
    """With the head's read-out zeroed the model is the one without the head (same other weights);
    otherwise the difference is the head's forecast from the window, the node and the last slot."""
    torch.manual_seed(0)
    plain = STHSepNet(calendar_config(small_config, fusion="spatial_only"))
    torch.manual_seed(0)
    headed = STHSepNet(calendar_config(small_config, fusion="spatial_only", identity_head_dim=4))
    plain.eval(), headed.eval()
    headed.load_state_dict(plain.state_dict(), strict=False)
    c = headed.config
    x, steps = calendar_batch(c, [0, 30, 77])
    with torch.no_grad():
        head = headed.identity_head
        want = head(x[..., 0], headed.slots.last(x))
        assert want.shape == (3, c.pred_len, c.num_nodes)
        torch.testing.assert_close(headed(x) - plain(x), want, rtol=1e-4, atol=1e-5)
        # one node's forecast reads that node's window only
        moved = x.clone()
        moved[:, :, 3, 0] += 1.0
        changed = (head(moved[..., 0], headed.slots.last(x)) - want).abs().sum((0, 1))
        assert changed[3] > 0 and changed[torch.arange(c.num_nodes) != 3].abs().max() == 0
    headed.train()
    headed(x).pow(2).mean().backward()
    for p in (head.node, head.window.weight, head.time_of_day.weight, head.day_of_week.weight, head.out.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    no_weekday = STHSepNet(calendar_config(small_config, identity_head_dim=4, day_of_week_channel=None))
    assert no_weekday.identity_head.day_of_week is None and no_weekday.identity_head.out.in_features == 12


@pytest.mark.parametrize("overrides, message", [
    (dict(seasonal_residual=True, time_of_day_channel=None), "set time_of_day_channel"),
    (dict(time_embedding_dim=2, time_of_day_channel=None), "set time_of_day_channel"),
    (dict(time_of_day_channel=3), r"must be an input feature \(< in_features=3\)"),
    (dict(time_of_day_channel=0), "other than target_feature=0"),
    (dict(day_of_week_channel=1), "must differ"),
    (dict(time_embedding_dim=-1), "time_embedding_dim=-1 must be >= 0"),
    (dict(slots_per_day=0), "slots_per_day=0 must be >= 1"),
    (dict(time_embedding_dim=2, fusion="temporal_only"), "fusion='temporal_only' has none"),
    (dict(identity_head_dim=2, time_of_day_channel=None), "set time_of_day_channel"),
    (dict(identity_head_dim=-1), "identity_head_dim=-1 must be >= 0"),
    (dict(identity_head_dim=2, fusion="temporal_only"), "identity_head_dim feeds the spatial stream"),
])
def test_bad_calendar_configs_say_what_is_wrong(small_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        calendar_config(small_config, **overrides)


def test_set_seasonal_profile_checks_its_input(small_config):
    with pytest.raises(ValueError, match="seasonal_residual=True"):
        STHSepNet(calendar_config(small_config)).set_seasonal_profile(torch.zeros(7 * PER_DAY, 11))
    model = STHSepNet(calendar_config(small_config, seasonal_residual=True))
    with pytest.raises(ValueError, match=r"shape \[42, 11\]"):
        model.set_seasonal_profile(torch.zeros(PER_DAY, 11))
    with pytest.raises(ValueError, match="finite"):
        model.set_seasonal_profile(torch.full((7 * PER_DAY, 11), float("nan")))


def test_seasonal_profile_falls_back_to_the_time_of_day_then_the_node_mean(tmp_path):
    per_day, days = 4, 3                                    # Monday .. Wednesday
    values = np.arange(per_day * days * 2, dtype=np.float64).reshape(-1, 2)
    values[1::per_day, 1] = np.nan                          # node 1 never seen at time-of-day slot 1
    path = tmp_path / "s.npz"
    np.savez(path, data=values.astype(np.float32))
    cal = calendar(load_series(path), steps_per_day=per_day)
    table = seasonal_profile(values, cal)
    assert table.shape == (7 * per_day, 2)
    assert table[per_day + 2, 0] == values[per_day + 2, 0]                       # Tuesday, slot 2
    day_mean = values[2::per_day, 0].mean()
    assert table[5 * per_day + 2, 0] == pytest.approx(day_mean)                  # Saturday: by time of day
    assert table[1, 1] == pytest.approx(np.nanmean(values[:, 1]))                # never seen: node mean
    assert np.allclose(seasonal_profile(values, cal, weekly=False)[2, 0], day_mean)


def test_train_adds_the_calendar_channels_and_fits_the_profile_as_the_baseline(tiny_backbones, tmp_path):
    from sthfast import TrainConfig, train
    from sthfast.checkpoint import load_checkpoint

    tc = TrainConfig(data="embedded", protocol="standard", epochs=1, max_batches=1, batch_size=4,
                     out=str(tmp_path / "run"), plots=False, threads=1)
    summary = train(tc, backbone=tiny_backbones["bert"], layers=1, conv_channels=8, residual_channels=8,
                    skip_channels=8, end_channels=8, node_emb_dim=8, d_ff=16, fusion="spatial_only",
                    seasonal_residual=True, time_embedding_dim=2, identity_head_dim=2)
    model, meta = load_checkpoint(tmp_path / "run", STHSepNet)
    c = model.config
    assert c.identity_head_dim == 2 and model.identity_head is not None
    assert meta["train_config"]["time_features"] == "time_of_day,day_of_week"
    assert (c.in_features, c.time_of_day_channel, c.day_of_week_channel, c.slots_per_day) == (3, 1, 2, 288)
    # five training days: the saved profile is the time-of-day table for every weekday, which is
    # what the seasonal-average baseline forecasts for the test days (weekdays unseen in training)
    series = load_series("embedded")
    data = prepare(series, c.seq_len, c.pred_len)
    mean, std = data.target_scale()
    cal = calendar(series)
    week_slot = torch.as_tensor(cal.weekday * cal.per_day + cal.day_slot)
    restored = model.seasonal.profile[week_slot] * std + mean                    # [T, N]
    day = seasonal_profile(series.values[:data.boundaries[0], :, 0].astype(np.float64), cal, weekly=False)
    assert torch.allclose(restored, torch.from_numpy(day[cal.day_slot]).float(), rtol=1e-5, atol=1e-3)
    test_steps = slice(data.boundaries[1], None)
    baseline = SeasonalAverage(data).forecast_by_step
    assert torch.allclose(restored[test_steps], baseline[test_steps], rtol=1e-5, atol=1e-3)
    assert np.isfinite(summary["test"]["model"]["all"]["mae"])


@pytest.mark.parametrize("weekly", [True, False])
def test_the_profile_is_weekly_only_from_enough_training_weeks(small_config, tmp_path, weekly):
    """The one rule (:func:`training_profile`) that the model's residual and the baseline read."""
    from sthfast.data.calendar import PROFILE_MIN_WEEKS

    weeks = PROFILE_MIN_WEEKS / 0.7 + (0.5 if weekly else -0.5)       # the training split is 70 %
    steps = int(weeks * 7 * PER_DAY)
    rng = np.random.default_rng(0)
    values = rng.random((steps, 11)).astype(np.float32) + (np.arange(steps) // PER_DAY % 7 == 5)[:, None]
    path = tmp_path / "weeks.npz"
    np.savez(path, data=values)
    series = load_series(path)
    cal = calendar(series, PER_DAY)
    data = prepare(series, 12, 12, cal=cal)
    profile = data.seasonal_profile(has_weekday=True)
    train = series.values[:data.boundaries[0], :, 0].astype(np.float64)
    table = seasonal_profile(train, cal) if weekly else np.tile(seasonal_profile(train, cal, weekly=False), (7, 1))
    assert np.allclose(profile, table, atol=1e-5)
    assert profile is data.seasonal_profile(has_weekday=True)                  # computed once
    assert np.allclose(SeasonalAverage(data).forecast_by_step.numpy(), table[cal.slots(weekly=True)], atol=1e-5)
    saturday_ahead = profile[5 * PER_DAY].mean() > profile[0].mean() + 0.5
    assert bool(saturday_ahead) is weekly


# (the data, whether the profile beats the node means, whether it beats the last reading)
@pytest.mark.parametrize("kind, beats_means, beats_last", [
    ("noise", False, True), ("cycle", True, True), ("cycle on a wandering level", True, False)])
def test_train_turns_the_seasonal_residual_on_where_the_profile_beats_node_means_and_last_reading(
        tmp_path, kind, beats_means, beats_last):
    from sthfast import TrainConfig
    from sthfast.auto_rules import seasonal_residual_helps
    from sthfast.data.windows import split_boundaries
    from sthfast.training import model_config

    steps = 10 * 7 * PER_DAY
    rng = np.random.default_rng(0)
    values = rng.normal(size=(steps, 11))
    if kind != "noise":                                   # a daily cycle far above the noise
        values += 5 * np.sin(2 * np.pi * np.arange(steps) / PER_DAY)[:, None]
    if kind == "cycle on a wandering level":              # a random walk: the last reading is closer
        values += np.cumsum(rng.normal(size=(steps, 11)), axis=0)
    path = tmp_path / "series.npz"
    np.savez(path, data=values.astype(np.float32))
    tc = TrainConfig(data=str(path), protocol="standard", steps_per_day=PER_DAY)
    series = load_series(path)
    cal, boundaries = calendar(series, PER_DAY), split_boundaries(steps, tc.split_fractions())
    config, tc_used = model_config(series, cal, boundaries, tc, {})
    seasonal = beats_means and beats_last
    assert config.seasonal_residual is seasonal
    assert (config.time_of_day_channel is not None) is seasonal            # the calendar only when needed
    assert tc_used.time_features == ("time_of_day,day_of_week" if seasonal else tc.time_features)
    for given in (True, False):                                             # a flag overrides the rule
        assert model_config(series, cal, boundaries, tc, {"seasonal_residual": given})[0].seasonal_residual is given
    _, errors = seasonal_residual_helps(series.values[:, :, 0].astype(np.float64), boundaries, cal, True,
                                        config.pred_len)
    assert (errors["profile"] < errors["node means"], errors["profile"] < errors["last reading"]) == (
        beats_means, beats_last)


def test_last_readings_carry_the_latest_valid_reading_over_gaps():
    from sthfast.auto_rules import last_readings

    nan = np.nan
    values = np.array([[nan, 1.0], [2.0, nan], [nan, nan], [3.0, 4.0], [nan, 5.0]])
    expected = np.array([[nan, 1.0], [2.0, 1.0], [2.0, 1.0], [3.0, 4.0], [3.0, 5.0]])
    np.testing.assert_array_equal(last_readings(values), expected)


def test_gaps_in_the_inputs_read_as_the_profile_under_the_seasonal_residual(small_config, tmp_path):
    from sthfast.data import model_inputs
    from sthfast.evaluation import with_seasonal_gaps

    steps = 3 * 7 * PER_DAY
    values = np.random.default_rng(0).random((steps, 11)).astype(np.float32)
    values[5:9, 2] = values[40, 7] = np.nan
    np.savez(tmp_path / "gaps.npz", data=values)
    series = load_series(tmp_path / "gaps.npz")
    model = STHSepNet(calendar_config(small_config, seasonal_residual=True))
    cal = calendar(series, PER_DAY)
    data = prepare(series, model.config.seq_len, model.config.pred_len, time_features=("time_of_day", "day_of_week"),
                   cal=cal)
    mean, std = (t.numpy() for t in data.target_scale())
    model.set_seasonal_profile((data.seasonal_profile(has_weekday=True) - mean) / std)
    before = data.inputs.clone()
    scaled = with_seasonal_gaps(data.inputs, series, cal, model)
    assert torch.equal(data.inputs, before)                                      # a new tensor, the splits' unchanged
    filled = data.with_inputs(scaled)
    assert filled.train.scaled is filled.val.scaled is filled.test.scaled is scaled
    week_slot = cal.slots(weekly=True)
    gaps = np.isnan(values)
    assert torch.equal(scaled[..., 0][torch.from_numpy(~gaps)], before[..., 0][torch.from_numpy(~gaps)])
    expected = model.seasonal.profile[torch.from_numpy(week_slot)][torch.from_numpy(gaps)]
    assert torch.equal(scaled[..., 0][torch.from_numpy(gaps)], expected) and expected.abs().min() > 0
    assert torch.equal(scaled[..., 1:], before[..., 1:])                          # calendar channels untouched
    plain = model_inputs(series, data.scaler)
    assert with_seasonal_gaps(plain, series, cal, STHSepNet(small_config())) is plain   # no residual: gaps stay 0
    assert (plain[..., 0][torch.from_numpy(gaps)] == 0).all()
