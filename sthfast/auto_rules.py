"""The data-driven choices of ``sthfast train``'s ``auto`` settings, in numpy on the raw series:
whether the seasonal residual helps (:func:`seasonal_residual_helps`) and which loss to train with
(:func:`chosen_loss`). Each rule looks at the training and validation splits only."""

from __future__ import annotations

import math
import warnings

import numpy as np

from .data.calendar import Calendar, training_profile


def seasonal_residual_helps(target: np.ndarray, boundaries: tuple[int, int], cal: Calendar,
                            has_weekday: bool, pred_len: int) -> tuple[bool, dict[str, float]]:
    """Whether the data are seasonal enough for the seasonal residual (the default of ``sthfast
    train``): on the validation split of ``target [T, N]`` (NaN = missing; ``boundaries``: the
    first validation and test steps) the training split's profile (:func:`training_profile`)
    forecasts the readings with a lower MAE than both each node's training mean and the last
    reading 1 to ``pred_len`` steps before (averaged over those horizons). The last reading is what
    a model without the residual starts from: where it beats the profile over the horizon (traffic
    speeds one hour ahead), the residual lost validation in ACCURACY.md. Returns ``(helps,
    {forecast: validation MAE})`` for the forecasts ``'profile'``, ``'node means'`` and
    ``'last reading'``."""
    first_val, first_test = boundaries
    val = target[first_val:first_test]
    table = training_profile(target[:first_val], cal, has_weekday)
    slots = cal.slots(weekly=has_weekday)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                            # all-NaN nodes
        node_mean = np.nanmean(target[:first_val], axis=0)
    last = last_readings(target)                                                 # [T, N]
    # validation readings that every forecast covers (the last reading pred_len steps before, too)
    seen = np.isfinite(val) & np.isfinite(node_mean) & np.isfinite(last[first_val - pred_len:first_test - pred_len])
    if not seen.any():
        return False, dict.fromkeys(("profile", "node means", "last reading"), math.nan)

    def mae(forecast: np.ndarray) -> float:                                     # [T_val, N] -> MAE
        return float(np.abs(forecast - val)[seen].mean())

    errors = {"profile": mae(table[slots[first_val:first_test]]), "node means": mae(node_mean),
              "last reading": float(np.mean([mae(last[first_val - h:first_test - h])
                                             for h in range(1, pred_len + 1)]))}
    return errors["profile"] < min(errors["node means"], errors["last reading"]), errors


def last_readings(values: np.ndarray) -> np.ndarray:
    """``values [T, N]`` with every missing reading (NaN) replaced by the node's last valid one
    before it (NaN where there is none yet)."""
    steps = np.where(np.isfinite(values), np.arange(len(values))[:, None], 0)
    latest = np.maximum.accumulate(steps, axis=0)                                # [T, N]
    return np.take_along_axis(values, latest, axis=0)


def mostly_zero_nodes(train_target: np.ndarray) -> float:
    """The share of the nodes that vary in the training split ``train_target [T', N]`` (NaN =
    missing) whose valid readings are 0 more than half of the time (counts that are mostly zero,
    such as bus boardings per stop and hour). Nodes without a reading or with one constant reading
    (an empty grid cell) are left out: either loss forecasts them alike."""
    valid = np.isfinite(train_target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                              # all-NaN nodes
        varies = np.nanmax(train_target, axis=0) > np.nanmin(train_target, axis=0)
    zeros = (train_target == 0).sum(0)
    mostly_zero = 2 * zeros[varies] > valid.sum(0)[varies]
    return float(mostly_zero.mean()) if varies.any() else 0.0


def chosen_loss(share_mostly_zero: float) -> str:
    """The loss ``'auto'`` trains with, given :func:`mostly_zero_nodes`: the Huber loss where more
    than half of the varying nodes are mostly zero (the MAE's optimum, the conditional median, then
    sits at 0 for most of them and the forecast loses its RMSE to the seasonal average; on
    MONTEVIDEO-BUS Huber won validation), else the MAE (it won validation on the other datasets of
    ACCURACY.md)."""
    return "huber" if share_mostly_zero > 0.5 else "mae"
