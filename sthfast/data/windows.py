"""The protocol's data preparation: chronological split, a per-node scaler fitted on the training
split only, and lazy sliding windows (one shared tensor, no copy of every window)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .calendar import calendar
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
    inputs (:func:`model_inputs`: scaled, missing inputs at 0, then any calendar channels); ``y`` the target feature on the original scale
    with NaN where missing (masked in the loss and the metrics, never filled)."""

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


@dataclass
class SplitData:
    """A series prepared for one protocol: the scaler and the train / val / test windows."""

    series: SensorSeries
    scaler: Scaler
    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    target_feature: int
    boundaries: tuple[int, int]  # first val step, first test step

    def target_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean, std [N]`` of the target feature, to move forecasts between scales."""
        f = self.target_feature
        return torch.from_numpy(self.scaler.mean[:, f]), torch.from_numpy(self.scaler.std[:, f])


def split_boundaries(steps: int, split: tuple[float, float, float]) -> tuple[int, int]:
    """The first validation and the first test step of a series of ``steps`` steps."""
    return (math.floor(steps * split[0] + 1e-9),           # 0.7 * 40 is 27.999... in floating point
            math.floor(steps * (split[0] + split[1]) + 1e-9))


def unseen_nodes(series: SensorSeries, split: tuple[float, float, float]) -> np.ndarray:
    """Nodes without a single valid reading (any feature) in the training split."""
    first_val = split_boundaries(series.num_steps, split)[0]
    return np.flatnonzero(np.isnan(series.values[:first_val]).all(axis=(0, 2)))


def model_inputs(series: SensorSeries, scaler: Scaler, time_features: tuple[str, ...] = (),
                 steps_per_day: int | None = None) -> torch.Tensor:
    """``[T, N, F + len(time_features)]`` float32: the scaled series with missing inputs at 0 (the
    node's training mean), then the calendar channels (same for every node), e.g.
    ``("time_of_day", "day_of_week")``."""
    scaled = np.nan_to_num(scaler.transform(series.values), nan=0.0).astype(np.float32)
    if time_features:
        channels = calendar(series, steps_per_day).features(tuple(time_features))   # [T, c]
        shape = (*scaled.shape[:2], channels.shape[1])
        scaled = np.concatenate([scaled, np.broadcast_to(channels[:, None, :], shape)], axis=2)
    return torch.from_numpy(np.ascontiguousarray(scaled))


def prepare(series: SensorSeries, seq_len: int, pred_len: int,
            split: tuple[float, float, float] = (0.7, 0.1, 0.2), target_feature: int = 0,
            scaler: Scaler | None = None, time_features: tuple[str, ...] = (),
            steps_per_day: int | None = None) -> SplitData:
    """Split chronologically, fit the scaler on the training steps (or use ``scaler``, e.g. a
    checkpoint's), build the windows; the inputs get the calendar channels ``time_features``
    (:func:`model_inputs`).

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
    scaled_t = model_inputs(series, scaler, time_features, steps_per_day)
    target = torch.from_numpy(np.ascontiguousarray(series.values[:, :, target_feature]))
    sets = {name: WindowDataset(scaled_t, target, np.arange(max(lo, 0), hi + 1), seq_len, pred_len)
            for name, (lo, hi) in ranges.items()}
    return SplitData(series, scaler, sets["train"], sets["val"], sets["test"], target_feature,
                     (first_val, first_test))
