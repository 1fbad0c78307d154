"""Evaluation and forecasting: a model over every window of a split beside the naive baselines
(:func:`evaluate_windows`, the validation of every epoch and the final test), the report and its
table, and the ``evaluate`` / ``predict`` commands on a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from . import distributed
from .baselines import fit_baselines
from .config import STHSepNetConfig
from .data import SensorSeries, SplitData, WindowDataset, fill_target_gaps, model_inputs, prepare
from .data.calendar import Calendar, calendar
from .data.windows import Scaler
from .distributed import resolve_device
from .metrics import ForecastMetrics
from .model import STHSepNet
from .train_config import PROTOCOLS, TrainConfig


def with_seasonal_gaps(inputs: torch.Tensor, series: SensorSeries, cal: Calendar, model: STHSepNet) -> torch.Tensor:
    """Under the seasonal residual, the model inputs ``inputs [T, N, F']`` of ``series`` with the
    model's profile at the missing target readings (they are 0, the node's mean, otherwise), so
    that the model reads a gap as no deviation from the season rather than as minus the profile.
    A new tensor; without the residual, ``inputs`` itself."""
    if model.seasonal is None:
        return inputs
    slots = torch.from_numpy(cal.slots(weekly=model.config.day_of_week_channel is not None))
    return fill_target_gaps(inputs, series, model.config.target_feature, model.seasonal.profile[slots])


@torch.no_grad()
def evaluate_windows(model: STHSepNet, dataset: WindowDataset, data: SplitData, zeros_missing: bool,
                     batch_size: int, device: torch.device, baselines: dict | None = None,
                     keep_predictions: bool = False,
                     ranks: distributed.Ranks | None = None) -> dict[str, Any]:
    """Run the model (and the baselines) over every window of ``dataset``; with ``ranks`` of a DDP
    run, each rank over its part of the windows, the metrics' sums then added up over the ranks
    (every rank gets the whole split's metrics; ``predictions`` holds this rank's part only).

    Returns ``{"metrics": {name: ForecastMetrics}, "predictions": [W, H, N] or None}``.
    """
    ranks = ranks or distributed.Ranks()
    model.eval()
    mean, std = data.target_scale()
    pred_len = dataset.pred_len
    names = ["model"] + list(baselines or {})
    metrics = {name: ForecastMetrics(pred_len, zeros_missing) for name in names}
    kept = []
    for idx in ranks.part(torch.arange(len(dataset))).split(batch_size):
        x, y, starts = dataset.batch(idx)
        pred = model(x.to(device)).float().cpu() * std + mean              # [B, H, N] original scale
        metrics["model"].update(pred, y)
        for name, baseline in (baselines or {}).items():
            metrics[name].update(baseline(x, starts, pred_len), y)
        if keep_predictions:
            kept.append(pred)
    if ranks.active:
        for m in metrics.values():
            m.set_sums(ranks.sum(m.sums()))
    return {"metrics": metrics, "predictions": torch.cat(kept) if kept else None}


VERDICT_KEYS = ("model_beats", "margins")       # the keys of a report that are not methods


def report(metrics: dict[str, ForecastMetrics], horizons: tuple[int, ...]) -> dict[str, Any]:
    """Metrics as plain data (``{method: {"all" | "h3" | ...: {"mae", "rmse", "mape"}}}``) with the
    verdict on each baseline: ``model_beats`` (a lower MAE over all steps) and ``margins``, how
    much lower the model's MAE and RMSE are, in percent of the baseline's, over all steps and at
    each horizon (negative: the baseline is better there)."""
    out = {name: m.result(tuple(h for h in horizons if h <= len(m.abs))) for name, m in metrics.items()}
    model = out["model"]
    baselines = [name for name in out if name != "model"]
    out["model_beats"] = {name: bool(model["all"]["mae"] < out[name]["all"]["mae"]) for name in baselines}
    out["margins"] = {name: {horizon: {metric: _percent_lower(model[horizon][metric], out[name][horizon][metric])
                                       for metric in ("mae", "rmse", "mape")}
                             for horizon in model}
                      for name in baselines}
    return out


def _percent_lower(model: float, baseline: float) -> float:
    return 100.0 * (baseline - model) / baseline if baseline else float("nan")


def format_table(result: dict[str, Any]) -> str:
    """The metrics table the CLI prints (one row per method and horizon), then the verdict: the
    model's margin on each baseline and where a baseline wins."""
    lines = [f"{'method':18s} {'horizon':>8s} {'MAE':>9s} {'RMSE':>9s} {'MAPE %':>9s}"]
    for name, per in result.items():
        if name in VERDICT_KEYS:
            continue
        for horizon, m in per.items():
            lines.append(f"{name:18s} {horizon:>8s} {m['mae']:9.3f} {m['rmse']:9.3f} {m['mape']:9.2f}")
    lines.append("the model's error below each baseline's, all steps (negative: the baseline is better):")
    for name, margin in result["margins"].items():
        wins = [f"{metric.upper()} {'all steps' if horizon == 'all' else horizon}"
                for horizon, per in margin.items() for metric, pct in per.items() if pct < 0]
        lines.append(f"  {name:18s} MAE {margin['all']['mae']:+6.1f} %   RMSE {margin['all']['rmse']:+6.1f} %"
                     + (f"   {name} is better at: {', '.join(wins)}" if wins else ""))
    losses = [name for name, beats in result["model_beats"].items() if not beats]
    lines.append("the model beats every baseline (MAE, all steps)" if not losses
                 else f"WARNING: the model does NOT beat {losses} (MAE, all steps)")
    return "\n".join(lines)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _series_for_checkpoint(meta: dict, data: str | None) -> tuple[SensorSeries, Calendar, TrainConfig]:
    """The checkpoint's own data (unchanged: its fingerprint is checked) or the series ``data``,
    read as in training and of the checkpoint's N and F, with its calendar."""
    tc = TrainConfig(**meta["train_config"])
    series = tc.read_series(data)
    if meta.get("nodes") is not None:
        if series.num_nodes != meta["data_nodes"]:
            raise ckpt.CheckpointError(f"the checkpoint forecasts {len(meta['nodes'])} of a network of "
                                       f"N={meta['data_nodes']} nodes; {series.source} has N={series.num_nodes}")
        series = series.select_nodes(meta["nodes"])
    config = STHSepNetConfig.from_dict(meta["config"])
    features = series.values.shape[2] + len(tc.time_feature_list())
    if (series.num_nodes, features) != (config.num_nodes, config.in_features):
        raise ckpt.CheckpointError(f"the checkpoint is for N={config.num_nodes}, F={config.in_features}; "
                                   f"{series.source} gives N={series.num_nodes}, F={features}")
    cal = calendar(series, tc.steps_per_day)
    if tc.time_feature_list():
        _check_calendar(series, cal, config, meta)
    if data is None and series.fingerprint() != meta["data_fingerprint"]:
        raise ckpt.CheckpointError(f"{series.source} changed since the checkpoint was trained on it; "
                                   "pass --data to evaluate on it anyway")
    return series, cal, tc


def _check_calendar(series: SensorSeries, cal: Calendar, config: STHSepNetConfig, meta: dict) -> None:
    """The calendar channels of ``series`` mean what they meant in training: the same slots per day,
    and read from timestamps if training read them from timestamps."""
    if meta.get("calendar_from_timestamps") and series.timestamps is None:
        raise ckpt.CheckpointError(f"the model reads its calendar channels from timestamps; {series.source} "
                                   "has none (their week slots would be guesses)")
    if cal.per_day != config.slots_per_day:
        raise ckpt.CheckpointError(f"the model's calendar has {config.slots_per_day} steps per day; "
                                   f"{series.source} has {cal.per_day}")


def evaluate(checkpoint: str | Path, data: str | None = None, device: str = "auto",
             batch_size: int = 64) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split of its data (or of ``data``) beside the baselines."""
    model, meta = ckpt.load_checkpoint(checkpoint, STHSepNet)
    series, cal, tc = _series_for_checkpoint(meta, data)
    config = model.config
    split = prepare(series, config.seq_len, config.pred_len, tc.split_fractions(), meta["target_feature"],
                    scaler=Scaler.from_dict(meta["scaler"]), time_features=tc.time_feature_list(), cal=cal)
    split = split.with_inputs(with_seasonal_gaps(split.inputs, series, cal, model))
    dev = resolve_device(device)
    model.to(dev)
    result = evaluate_windows(model, split.test, split, tc.missing_zeros(), batch_size, dev, fit_baselines(split))
    return report(result["metrics"], PROTOCOLS[tc.protocol]["horizons"])


def predict(checkpoint: str | Path, data: str, out: str | Path, device: str = "auto",
            all_windows: bool = False, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Forecast the ``pred_len`` steps after the end of ``data`` (and, with ``all_windows``, from
    every window of it); written to ``out`` (``.npz``) and returned."""
    model, meta = ckpt.load_checkpoint(checkpoint, STHSepNet)
    config = model.config
    series, cal, tc = _series_for_checkpoint(meta, data)
    if series.num_steps < config.seq_len:
        raise ValueError(f"{data}: {series.num_steps} steps, fewer than seq_len={config.seq_len}")
    scaler = Scaler.from_dict(meta["scaler"])
    inputs = with_seasonal_gaps(model_inputs(series, scaler, tc.time_feature_list(), cal), series, cal, model)
    f = meta["target_feature"]
    mean, std = torch.from_numpy(scaler.mean[:, f]), torch.from_numpy(scaler.std[:, f])
    dev = resolve_device(device)
    model.to(dev).eval()
    starts = torch.arange(series.num_steps - config.seq_len + 1) if all_windows else \
        torch.tensor([series.num_steps - config.seq_len])
    preds = []
    with torch.no_grad():
        for chunk in starts.split(batch_size):
            x = inputs[chunk[:, None] + torch.arange(config.seq_len)]
            preds.append(model(x.to(dev)).float().cpu() * std + mean)
    forecasts = torch.cat(preds).numpy()
    result = {"forecast": forecasts[-1], "window_starts": starts.numpy()}
    if meta.get("nodes") is not None:
        result["nodes"] = np.asarray(meta["nodes"])              # the data's node of each column
    if all_windows:
        result["window_forecasts"] = forecasts
    if series.timestamps is not None and series.num_steps > 1:
        step = series.timestamps[-1] - series.timestamps[-2]
        result["forecast_timestamps"] = (series.timestamps[-1] + step * np.arange(1, config.pred_len + 1)).astype(str)
    out = Path(out)
    ckpt.atomic_write(out, lambda tmp: _savez(tmp, result))
    return result
