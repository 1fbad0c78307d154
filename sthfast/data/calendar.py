"""Calendar positions of a series' steps (time-of-day slot, weekday), shared by the seasonal
baseline and the optional time-feature input channels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .formats import DataError, SensorSeries

DEFAULT_STEPS_PER_DAY = 288          # 5-minute data
TIME_FEATURES = ("time_of_day", "day_of_week")


@dataclass
class Calendar:
    """``day_slot [T]`` (0 .. per_day - 1) and ``weekday [T]`` (0 = Monday) of every step."""

    day_slot: np.ndarray
    weekday: np.ndarray
    per_day: int

    def features(self, names: tuple[str, ...]) -> np.ndarray:
        """``[T, len(names)]`` float32 channels in [0, 1): the fraction of the day elapsed and/or
        the weekday / 7 (the encoding MTGNN and Graph WaveNet feed their models)."""
        columns = {"time_of_day": self.day_slot / self.per_day, "day_of_week": self.weekday / 7.0}
        unknown = sorted(set(names) - set(columns))
        if unknown:
            raise ValueError(f"unknown time features {unknown}: choose from {list(TIME_FEATURES)}")
        return np.stack([columns[n] for n in names], -1).astype(np.float32).reshape(len(self.day_slot), len(names))


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
        day_slot, weekday = steps % per_day, (steps // per_day) % 7
    return Calendar(day_slot.astype(np.int64), weekday.astype(np.int64), int(per_day))
