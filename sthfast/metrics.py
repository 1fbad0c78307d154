"""Masked forecast metrics accumulated over a whole split (sums, not means of batch means), and the
masked training loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MAPE_THRESHOLD = 1e-4
"""Truth values with ``|y| <= MAPE_THRESHOLD`` are left out of MAPE (it is undefined at 0), as in
BasicTS' and LargeST's masked MAPE; they still count in MAE and RMSE unless masked as missing."""


def valid_mask(truth: Tensor, zeros_missing: bool) -> Tensor:
    """Where ``truth`` is a real reading: finite, and non-zero when zeros mark missing readings."""
    valid = torch.isfinite(truth)
    return valid & (truth != 0) if zeros_missing else valid


class ForecastMetrics:
    """MAE, RMSE and MAPE (%) of forecasts ``[B, H, N]`` on the original scale, per horizon step and
    over all steps, over every valid entry seen by :meth:`update`."""

    SUMS = ("abs", "sq", "ape", "count", "ape_count")

    def __init__(self, pred_len: int, zeros_missing: bool = False):
        self.zeros_missing = zeros_missing
        shape = (pred_len,)
        self.abs, self.sq, self.ape = (torch.zeros(shape, dtype=torch.float64) for _ in range(3))
        self.count, self.ape_count = (torch.zeros(shape, dtype=torch.float64) for _ in range(2))

    def update(self, pred: Tensor, truth: Tensor) -> None:
        pred, truth = pred.detach().double().cpu(), truth.detach().double().cpu()
        valid = valid_mask(truth, self.zeros_missing)
        err = torch.where(valid, pred - truth, torch.zeros_like(pred))
        self.abs += err.abs().sum(dim=(0, 2))
        self.sq += err.square().sum(dim=(0, 2))
        self.count += valid.sum(dim=(0, 2))
        ape_valid = valid & (truth.abs() > MAPE_THRESHOLD)
        safe = torch.where(ape_valid, truth, torch.ones_like(truth))
        self.ape += torch.where(ape_valid, (err / safe).abs(), torch.zeros_like(err)).sum(dim=(0, 2))
        self.ape_count += ape_valid.sum(dim=(0, 2))

    def sums(self) -> Tensor:
        """What :meth:`update` accumulated, ``[5, H]`` float64 (absolute, squared and percentage
        errors, and the two counts): the parts of a split evaluated apart add up to the whole's."""
        return torch.stack([getattr(self, name) for name in self.SUMS])

    def set_sums(self, sums: Tensor) -> None:
        """Replace the accumulated sums by ``sums [5, H]`` (e.g. those of every part of a split)."""
        for name, row in zip(self.SUMS, sums.double().cpu()):
            setattr(self, name, row.clone())

    @staticmethod
    def _summary(abs_, sq, ape, count, ape_count) -> dict[str, float]:
        nan = math.nan
        return {"mae": float(abs_ / count) if count else nan,
                "rmse": math.sqrt(float(sq / count)) if count else nan,
                "mape": 100.0 * float(ape / ape_count) if ape_count else nan}

    def result(self, horizons: tuple[int, ...] = ()) -> dict[str, dict[str, float]]:
        """``{"all": {...}, "h3": {...}, ...}`` for the 1-based horizon steps in ``horizons``."""
        out = {"all": self._summary(self.abs.sum(), self.sq.sum(), self.ape.sum(), self.count.sum(),
                                    self.ape_count.sum())}
        for h in horizons:
            i = h - 1
            out[f"h{h}"] = self._summary(self.abs[i], self.sq[i], self.ape[i], self.count[i], self.ape_count[i])
        return out

    def mae_by_step(self) -> list[float]:
        return [float(a / c) if c else math.nan for a, c in zip(self.abs, self.count)]


def loss_weights(std: torch.Tensor, units: str) -> torch.Tensor:
    """Per-node weights ``[N]`` of the training loss's errors in scaled units: 1 for ``'scaled'``
    (every node weighs the same), ``std_n / mean(std)`` for ``'original'`` (each error in the data's
    units, as the metrics weigh it, over the nodes' mean standard deviation so that the loss keeps
    the scale that the learning rate and the Huber delta were chosen for)."""
    if units == "original":
        return std / std.mean()
    if units == "scaled":
        return torch.ones_like(std)
    raise ValueError(f"units={units!r} is not 'scaled' or 'original'")


def masked_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, kind: str = "mse",
                delta: float = 1.0, denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared (``kind='mse'``), absolute (``'mae'``) or Huber (``'huber'``: squared / 2 below
    ``delta``, absolute above) error over the valid entries only (missing targets carry no loss):
    the error sum over ``denominator``, by default the number of valid entries (under DDP
    :meth:`~sthfast.distributed.Ranks.loss_denominator`)."""
    diff = torch.where(valid, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    if kind == "huber":
        error = F.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=delta)
    elif kind in ("mse", "mae"):
        error = diff.square() if kind == "mse" else diff.abs()
    else:
        raise ValueError(f"kind={kind!r} is not 'mae', 'mse' or 'huber'")
    return error.sum() / (valid.sum().clamp_min(1) if denominator is None else denominator)
