"""Naive baselines every evaluation reports beside the model, on the same windows: last value,
seasonal historical average, and a linear model. A model that does not beat them is reported so."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .data.windows import SplitData

BASELINES = ("last_value", "seasonal_average", "linear")


class LastValue:
    """Every horizon step repeats the last input value (original scale)."""

    def __init__(self, data: SplitData):
        self.mean, self.std = data.target_scale()
        self.feature = data.target_feature

    def __call__(self, x: Tensor, starts: Tensor, pred_len: int) -> Tensor:
        last = x[:, -1, :, self.feature] * self.std + self.mean          # [B, N]
        return last.unsqueeze(1).expand(-1, pred_len, -1)


class SeasonalAverage:
    """The training split's seasonal profile at every step (:meth:`SplitData.seasonal_profile`,
    the rule the model's seasonal residual uses): the mean at the same time of day and weekday
    (at the same time of day when the split holds few weeks); where a slot never occurs in
    training, the same time of day; else the node's training mean. The slots come from the split's
    calendar (timestamps, else the step index)."""

    def __init__(self, data: SplitData):
        table = data.seasonal_profile(has_weekday=True)                        # [7 per_day, N]
        week_slot = data.calendar.slots(weekly=True)
        self.forecast_by_step = torch.from_numpy(table[week_slot].astype(np.float32))  # [T, N]
        self.seq_len = data.test.seq_len

    def __call__(self, x: Tensor, starts: Tensor, pred_len: int) -> Tensor:
        steps = starts[:, None] + self.seq_len + torch.arange(pred_len)    # [B, H]
        return self.forecast_by_step[steps]                                 # [B, H, N]


class LinearBaseline:
    """Ridge regression from a node's ``seq_len`` scaled inputs to its ``pred_len`` scaled targets,
    shared by all nodes, fitted in closed form on every training window."""

    def __init__(self, data: SplitData, ridge: float = 1e-3):
        self.mean, self.std = data.target_scale()
        self.feature = data.target_feature
        train = data.train
        t, h = train.seq_len, train.pred_len
        gram = torch.zeros(t + 1, t + 1, dtype=torch.float64)
        cross = torch.zeros(t + 1, h, dtype=torch.float64)
        for chunk in torch.arange(len(train)).split(256):
            x, y, _ = train.batch(chunk)
            inputs, targets = self._design(x), ((y - self.mean) / self.std).permute(0, 2, 1)
            rows_ok = torch.isfinite(targets).all(-1)   # missing targets (NaN) leave their row out
            a = inputs[rows_ok].double()
            gram += a.T @ a
            cross += a.T @ targets[rows_ok].double()
        gram += ridge * torch.eye(t + 1, dtype=torch.float64) * max(float(gram.diagonal().mean()), 1.0)
        self.weight = torch.linalg.solve(gram, cross).float()               # [T + 1, H]

    def _design(self, x: Tensor) -> Tensor:
        series = x[..., self.feature].permute(0, 2, 1)                      # [B, N, T]
        return torch.cat([series, torch.ones_like(series[..., :1])], -1)    # [B, N, T + 1]

    def __call__(self, x: Tensor, starts: Tensor, pred_len: int) -> Tensor:
        pred = (self._design(x) @ self.weight).permute(0, 2, 1)             # [B, H, N] scaled
        return pred * self.std + self.mean


def fit_baselines(data: SplitData) -> dict:
    """The three baselines fitted on ``data``'s training split (missing values are NaN there)."""
    return {"last_value": LastValue(data), "seasonal_average": SeasonalAverage(data),
            "linear": LinearBaseline(data)}
