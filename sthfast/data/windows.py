"""The protocol's data preparation: chronological split, a per-node scaler fitted on the training
split only, and lazy sliding windows (one shared tensor, no copy of every window)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from .calendar import Calendar, calendar, training_profile
from .formats import DataError, DataWarning, SensorSeries


@dataclass
class Scaler:
    """Per-node, per-feature z-score: ``mean, std [N, F]``, fitted on the training split ignoring
    missing values (a constant node gets std 1; a node with no reading the other nodes' pooled
    mean and std, so that it is forecast on their scale)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> "Scaler":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)                 # all-NaN columns
            mean = np.nanmean(values, axis=0)                               # [N, F]
            std = np.nanstd(values, axis=0)
            unseen = np.isnan(mean)
            mean = np.where(unseen, np.nanmean(values, axis=(0, 1)), mean)
            std = np.where(unseen, np.nanstd(values, axis=(0, 1)), std)
        std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
        return cls(np.nan_to_num(mean).astype(np.float32), std.astype(np.float32))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, values: dict) -> "Scaler":
        return cls(np.asarray(values["mean"], np.float32), np.asarray(values["std"], np.float32))


class WindowDataset(Dataset):
    """Windows of one split. Item ``i`` is ``(x [T, N, F'], y [H, N], start)``: ``x`` the model
    inputs (:func:`model_inputs`: scaled, missing inputs at 0, then any calendar channels); ``y``
    the target feature on the original scale with NaN where missing (masked in the loss and the
    metrics, never filled)."""

    def __init__(self, scaled: torch.Tensor, target: torch.Tensor, starts: np.ndarray,
                 seq_len: int, pred_len: int):
        self.scaled, self.target, self.starts = scaled, target, starts
        self.seq_len, self.pred_len = seq_len, pred_len

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        s = int(self.starts[i])
        return (self.scaled[s:s + self.seq_len],
                self.target[s + self.seq_len:s + self.seq_len + self.pred_len], s)

    def batch(self, indices: torch.Tensor):
        """Items ``indices`` stacked, gathered in one indexing op: ``x [B, T, N, F]``,
        ``y [B, H, N]``, ``starts [B]``."""
        starts = torch.as_tensor(self.starts)[indices]                        # [B]
        steps = starts[:, None] + torch.arange(self.seq_len + self.pred_len)  # [B, T + H]
        return (self.scaled[steps[:, :self.seq_len]], self.target[steps[:, self.seq_len:]], starts)

    def reading(self, scaled: torch.Tensor) -> "WindowDataset":
        """The same windows over other model inputs ``scaled [T, N, F']``."""
        return WindowDataset(scaled, self.target, self.starts, self.seq_len, self.pred_len)


@dataclass
class SplitData:
    """A series prepared for one protocol: the scaler, the train / val / test windows (one model
    inputs tensor ``[T, N, F']`` that the three share) and what is derived from the series once and
    read by every user: its calendar, the split boundaries, the training split's seasonal profile."""

    series: SensorSeries
    scaler: Scaler
    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    target_feature: int
    boundaries: tuple[int, int]  # first val step, first test step
    calendar: Calendar
    _profiles: dict[bool, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def inputs(self) -> torch.Tensor:
        """The model inputs ``[T, N, F']`` of every split (:func:`model_inputs`)."""
        return self.train.scaled

    def with_inputs(self, inputs: torch.Tensor) -> "SplitData":
        """The same splits over other model inputs ``[T, N, F']`` (e.g. with gaps filled)."""
        return dataclasses.replace(self, train=self.train.reading(inputs), val=self.val.reading(inputs),
                                   test=self.test.reading(inputs))

    def target_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean, std [N]`` of the target feature, to move forecasts between scales."""
        f = self.target_feature
        return torch.from_numpy(self.scaler.mean[:, f]), torch.from_numpy(self.scaler.std[:, f])

    def train_target(self) -> np.ndarray:
        """``[T', N]`` float64: the target feature over the training split, original units, NaN = missing."""
        return self.series.values[:self.boundaries[0], :, self.target_feature].astype(np.float64)

    def seasonal_profile(self, has_weekday: bool) -> np.ndarray:
        """The training split's seasonal profile of the target (original units; computed once per
        ``has_weekday``): :func:`~sthfast.data.calendar.training_profile`."""
        if has_weekday not in self._profiles:
            self._profiles[has_weekday] = training_profile(self.train_target(), self.calendar, has_weekday)
        return self._profiles[has_weekday]


def split_boundaries(steps: int, split: tuple[float, float, float]) -> tuple[int, int]:
    """The first validation and the first test step of a series of ``steps`` steps."""
    return (math.floor(steps * split[0] + 1e-9),           # 0.7 * 40 is 27.999... in floating point
            math.floor(steps * (split[0] + split[1]) + 1e-9))


def unseen_nodes(series: SensorSeries, split: tuple[float, float, float]) -> np.ndarray:
    """Nodes without a single valid reading (any feature) in the training split."""
    first_val = split_boundaries(series.num_steps, split)[0]
    return np.flatnonzero(np.isnan(series.values[:first_val]).all(axis=(0, 2)))


def model_inputs(series: SensorSeries, scaler: Scaler, time_features: tuple[str, ...] = (),
                 cal: Calendar | None = None) -> torch.Tensor:
    """``[T, N, F + len(time_features)]`` float32: the scaled series with missing inputs at 0 (the
    node's training mean), then the calendar channels (same for every node) of ``cal`` (default:
    ``calendar(series)``), e.g. ``("time_of_day", "day_of_week")``."""
    scaled = np.nan_to_num(scaler.transform(series.values), nan=0.0).astype(np.float32)
    if time_features:
        channels = (cal or calendar(series)).features(tuple(time_features))   # [T, c]
        shape = (*scaled.shape[:2], channels.shape[1])
        scaled = np.concatenate([scaled, np.broadcast_to(channels[:, None, :], shape)], axis=2)
    return torch.from_numpy(np.ascontiguousarray(scaled))


def fill_target_gaps(inputs: torch.Tensor, series: SensorSeries, feature: int,
                     profile_by_step: torch.Tensor) -> torch.Tensor:
    """``inputs [T, N, F']`` (:func:`model_inputs`) with ``profile_by_step [T, N]`` at the missing
    readings of the target ``feature`` (a new tensor; the inputs are left as they are)."""
    missing = torch.from_numpy(np.isnan(series.values[:, :, feature]))                  # [T, N]
    if not missing.any():
        return inputs
    target = torch.where(missing, profile_by_step.to(inputs.dtype), inputs[..., feature])
    return torch.cat([inputs[..., :feature], target.unsqueeze(-1), inputs[..., feature + 1:]], dim=-1)


def prepare(series: SensorSeries, seq_len: int, pred_len: int,
            split: tuple[float, float, float] = (0.7, 0.1, 0.2), target_feature: int = 0,
            scaler: Scaler | None = None, time_features: tuple[str, ...] = (),
            cal: Calendar | None = None) -> SplitData:
    """Split chronologically, fit the scaler on the training steps (or use ``scaler``, e.g. a
    checkpoint's), build the windows; the inputs get the calendar channels ``time_features`` of
    ``cal``, the series' calendar (default: ``calendar(series)``, 288 steps a day when the series
    has no timestamps; :func:`model_inputs`).

    A window belongs to the split that holds all of its ``pred_len`` targets; validation and test
    inputs may reach back into the previous split (as BasicTS and the authors do). A node with no
    valid reading in the training split is kept with a :class:`DataWarning` naming it.
    """
    if len(split) != 3 or min(split) < 0 or not np.isclose(sum(split), 1.0) or split[0] <= 0:
        raise DataError(f"{series.source}: split {split} must be three non-negative fractions summing to 1")
    if not 0 <= target_feature < series.values.shape[2]:
        raise DataError(f"{series.source}: target feature {target_feature} not in 0..{series.values.shape[2] - 1}")
    steps, window = series.num_steps, seq_len + pred_len
    first_val, first_test = split_boundaries(steps, split)
    ranges = {"train": (0, first_val - window), "val": (first_val - seq_len, first_test - window),
              "test": (first_test - seq_len, steps - window)}
    for name, (lo, hi) in ranges.items():
        if hi < max(lo, 0):
            raise DataError(f"{series.source}: {steps} steps leave no {name} window of "
                            f"{seq_len} + {pred_len} steps with split {split}")
    unseen = unseen_nodes(series, split)
    if unseen.size:
        more = f" and {unseen.size - 10} more" if unseen.size > 10 else ""
        warnings.warn(DataWarning(
            f"{series.source}: {unseen.size} of {series.num_nodes} node(s) have no valid reading in the "
            f"training split (steps 0..{first_val - 1}): {unseen[:10].tolist()}{more}. They are kept, scaled "
            "by the other nodes' statistics and forecast from them; their missing targets count in no "
            "loss or metric (sthfast train --drop-dead-nodes leaves them out)"), stacklevel=2)
    if scaler is None:
        scaler = Scaler.fit(series.values[:first_val])
    elif scaler.mean.shape != series.values.shape[1:]:
        raise DataError(f"{series.source}: the scaler is for [N, F] = {list(scaler.mean.shape)}, "
                        f"the data has {list(series.values.shape[1:])}")
    cal = cal or calendar(series)
    inputs = model_inputs(series, scaler, time_features, cal)
    target = torch.from_numpy(np.ascontiguousarray(series.values[:, :, target_feature]))
    sets = {name: WindowDataset(inputs, target, np.arange(max(lo, 0), hi + 1), seq_len, pred_len)
            for name, (lo, hi) in ranges.items()}
    return SplitData(series, scaler, sets["train"], sets["val"], sets["test"], target_feature,
                     (first_val, first_test), cal)
