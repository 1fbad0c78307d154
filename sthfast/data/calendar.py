"""Calendar positions of a series' steps (time-of-day slot, weekday), shared by the seasonal
baseline, the model's seasonal profile and the optional time-feature input channels."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .formats import DataError, SensorSeries

DEFAULT_STEPS_PER_DAY = 288          # 5-minute data
TIME_FEATURES = ("time_of_day", "day_of_week")


@dataclass
class Calendar:
    """``day_slot [T]`` (0 .. per_day - 1) and ``weekday [T]`` (0 = Monday) of every step, and the
    length of a step in seconds."""

    day_slot: np.ndarray
    weekday: np.ndarray
    per_day: int
    step_seconds: int

    def features(self, names: tuple[str, ...]) -> np.ndarray:
        """``[T, len(names)]`` float32 channels in [0, 1): the fraction of the day elapsed and/or
        the weekday / 7 (the encoding MTGNN and Graph WaveNet feed their models)."""
        columns = {"time_of_day": self.day_slot / self.per_day, "day_of_week": self.weekday / 7.0}
        unknown = sorted(set(names) - set(columns))
        if unknown:
            raise ValueError(f"unknown time features {unknown}: choose from {list(TIME_FEATURES)}")
        return np.stack([columns[n] for n in names], -1).astype(np.float32).reshape(len(self.day_slot), len(names))

    def slots(self, weekly: bool) -> np.ndarray:
        """``[T]`` the row of a seasonal profile for every step: the week slot (``weekday *
        per_day + day_slot``), or the time-of-day slot when not ``weekly``."""
        return self.weekday * self.per_day + self.day_slot if weekly else self.day_slot


def calendar(series: SensorSeries, steps_per_day: int | None = None) -> Calendar:
    """Slots from the series' timestamps (their median interval sets the slot length), else from
    the step index: step 0 is taken as Monday midnight and a day as ``steps_per_day`` steps
    (default 288)."""
    steps = np.arange(series.num_steps)
    if series.timestamps is not None and series.num_steps > 1:
        seconds = series.timestamps.astype("datetime64[s]").astype(np.int64)
        interval = int(np.median(np.diff(seconds)))
        if interval <= 0:
            raise DataError(f"{series.source}: timestamps are not increasing")
        per_day = -(-86400 // interval)
        day_slot = (seconds % 86400) // interval
        weekday = ((seconds // 86400) + 3) % 7                          # 1970-01-01 was a Thursday
    else:
        per_day = steps_per_day or DEFAULT_STEPS_PER_DAY
        interval = round(86400 / per_day)
        day_slot, weekday = steps % per_day, (steps // per_day) % 7
    return Calendar(day_slot.astype(np.int64), weekday.astype(np.int64), int(per_day), int(interval))


def seasonal_profile(values: np.ndarray, cal: Calendar, weekly: bool = True) -> np.ndarray:
    """Per-node means of ``values [T', N]`` (the first ``T'`` steps of the series ``cal`` describes,
    NaN = missing) by week slot (``weekday * per_day + time-of-day slot``; ``weekly=False``: by
    time-of-day slot): ``[7 per_day or per_day, N]`` float64. A week slot never observed takes its
    time of day's mean, a time of day never observed the node's mean, and a node never observed
    the other nodes' mean at that time of day."""
    n = len(values)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                     # all-NaN nodes
        node_mean = np.nanmean(values, axis=0)
        day = _slot_means(values, cal.day_slot[:n], cal.per_day, node_mean)
        day = np.where(np.isnan(day), np.nanmean(day, axis=1, keepdims=True), day)
    if not weekly:
        return day
    week = _slot_means(values, cal.slots(weekly=True)[:n], 7 * cal.per_day, None)
    return np.where(np.isnan(week), np.tile(day, (7, 1)), week)


# a profile is by week slot only when the training split holds at least this many weeks (with n,
# every training target is 1 / n of its own slot's mean, so its residual shrinks by sqrt((n - 1) / n)
# against unseen data; with one week it would be zero)
PROFILE_MIN_WEEKS = 4


def training_profile(train_values: np.ndarray, cal: Calendar, has_weekday: bool) -> np.ndarray:
    """The seasonal profile of a training split ``train_values [T', N]`` (original units, NaN =
    missing), the one rule the seasonal residual, its ``auto`` choice and the seasonal-average
    baseline share: with a weekday, ``[7 per_day, N]`` per-node means by week slot, or by time of
    day repeated for every weekday when the split holds fewer than :data:`PROFILE_MIN_WEEKS` weeks;
    else ``[per_day, N]`` (rows: :meth:`Calendar.slots`)."""
    weekly = has_weekday and len(train_values) >= PROFILE_MIN_WEEKS * 7 * cal.per_day
    table = seasonal_profile(train_values, cal, weekly=weekly)
    return np.tile(table, (7, 1)) if has_weekday and not weekly else table


def _slot_means(values: np.ndarray, slots: np.ndarray, num_slots: int, fallback) -> np.ndarray:
    sums = np.zeros((num_slots, values.shape[1]))
    counts = np.zeros((num_slots, values.shape[1]))
    observed = np.isfinite(values)
    np.add.at(sums, slots, np.where(observed, values, 0.0))
    np.add.at(counts, slots, observed)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return means if fallback is None else np.where(counts > 0, means, fallback)
