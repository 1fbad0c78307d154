"""The main job: train STH-SepNet on a sensor network, evaluate it beside the naive baselines, and
forecast; the CLI is a thin layer over :func:`train`, :func:`evaluate` and :func:`predict`."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed, optional_deps
from .baselines import fit_baselines
from .config import STHSepNetConfig, help_field
from .data import load_adjacency, load_series, prepare, unseen_nodes
from .data.adjacency import WEIGHTINGS
from .data.calendar import TIME_FEATURES, Calendar, calendar, seasonal_profile
from .data.formats import EMBEDDED, SensorSeries
from .data.windows import Scaler, SplitData, WindowDataset, model_inputs, split_boundaries
from .metrics import ForecastMetrics, valid_mask
from .model import STHSepNet
from .nn.backbone import EMBEDDED as EMBEDDED_BACKBONE
from .nn.backbone import backbone_fingerprint

PROTOCOLS = {
    # the paper: 48 -> 48, metrics on the original scale over the whole test set
    "paper": dict(model=dict(seq_len=48, pred_len=48), zeros_missing=False, horizons=(12, 24, 48)),
    # BasicTS / LargeST: 12 -> 12, zeros masked, horizons 3 / 6 / 12 and the average; patches of
    # 4 with stride 2 (the paper's 16 / 8 do not fit a 12-step window)
    "standard": dict(model=dict(seq_len=12, pred_len=12, patch_len=4, stride=2), zeros_missing=True,
                     horizons=(3, 6, 12)),
}
# where sthfast train departs from STHSepNetConfig's defaults (the model API's are the paper's),
# each chosen on the validation splits of the accuracy campaign (ACCURACY.md): the seasonal residual
# where the data are seasonal (seasonal_residual_helps), and a gate that starts with 10 % of the
# temporal stream, so that the LLM's global trend earns its share
LOSSES = ("auto", "mae", "mse", "huber")
TRAIN_MODEL_DEFAULTS = dict(seasonal_residual="auto", gate_init=0.1)
# taken from the data (and --time-features), never from flags
DATA_FIELDS = ("num_nodes", "in_features", "time_of_day_channel", "day_of_week_channel", "slots_per_day")
# bfloat16 autocast is on by default on CPUs with bfloat16 matrix instructions (AMX-BF16 or
# AVX512-BF16) from this input length: per training step at 48 -> 48 measured 1.4x to 1.7x faster on
# an AMX Xeon and 2.5x on an AVX512-BF16 EPYC; the standard 12 -> 12 main job was no faster (README)
BF16_MIN_SEQ_LEN = 48


@dataclass
class TrainConfig:
    """How to train: data, protocol, optimisation, run folder. The model's own hyper-parameters are
    an :class:`STHSepNetConfig` (``num_nodes`` and ``in_features`` come from the data)."""

    data: str = help_field("embedded", "Series file (.npz, .h5, .csv) or 'embedded' (LOS-LOOP, shipped with the package).")
    adjacency: str | None = help_field(None, "Adjacency file (.npy, .npz, .csv matrix or from,to,cost edge list) for graph='static'; default: the data file's own 'adj' if it has one.")
    adjacency_weighting: str = help_field("binary", "Edge-list weights: 'binary', 'cost' (the third column as is) or 'gaussian' (exp(-(cost/std)^2)).", choices=WEIGHTINGS)
    adjacency_ids: str | None = help_field(None, "Text file of sensor ids in node order, for edge lists that name ids (default: a .txt beside the .csv, if any).")
    csv_header: bool | None = help_field(None, "Whether a .csv series starts with a header row (default: guessed).")
    steps_per_day: int | None = help_field(None, "Steps per day of the calendar when the data has no timestamps (step 0 is Monday midnight; default 288, 5-minute data).")
    data_key: str | None = help_field(None, "Array (npz) or group (h5) holding the series, if not the default.")
    drop_dead_nodes: bool = help_field(False, "Leave out the nodes with no valid reading in the training split (default: keep them, with a warning naming them; they are forecast from the others).")
    features: str | None = help_field(None, "Comma-separated feature channels to use (default all; PEMS0x.npz: flow only).")
    time_features: str | None = help_field(None, "Calendar channels appended to the inputs, comma-separated: time_of_day, day_of_week; added anyway when the seasonal residual or time embeddings read them.")
    protocol: str = help_field("paper", "'paper' (48 -> 48, original scale, whole test set) or 'standard' (12 -> 12, zeros masked, horizons 3/6/12). --seq-len / --pred-len override the lengths.", choices=tuple(PROTOCOLS))
    zeros_missing: bool | None = help_field(None, "Treat exact zeros as missing readings (masked in loss and metrics); default: the protocol's (standard: yes, paper: no).")
    split: str = help_field("0.7,0.1,0.2", "Chronological train,val,test fractions.")
    epochs: int = help_field(30, "Maximum training epochs.")
    batch_size: int = help_field(32, "Training batch size: the global batch; under torchrun each of the P processes takes batch_size / P of it (P must divide it).")
    eval_batch_size: int = help_field(64, "Evaluation batch size (per process under torchrun).")
    max_batches: int | None = help_field(None, "Stop each training epoch after this many (global) batches (quick runs); default: the whole training split.")
    loss: str = help_field("auto", "Training loss over the valid targets: 'mae' (masked MAE, as BasicTS), 'mse' (the authors'), 'huber' (between the two) or 'auto': Huber where over half of the varying nodes read 0 more than half the time, else MAE (README).", choices=LOSSES)
    huber_delta: float = help_field(1.0, "Where the Huber loss turns from squared to absolute, in scaled units (standard deviations of the training split).")
    lr: float = help_field(1e-3, "Adam learning rate (the authors use 3e-4 with 30 epochs on a GPU).")
    weight_decay: float = help_field(0.0, "Adam weight decay.")
    milestones: str = help_field("5,20,40,70", "Epochs at which the learning rate is multiplied by lr_gamma (the authors' MultiStepLR).")
    lr_gamma: float = help_field(0.3, "Learning-rate decay factor at each milestone.")
    clip: float = help_field(5.0, "Gradient-norm clipping threshold (0 disables).")
    patience: int = help_field(10, "Early stopping: epochs without a better validation MAE before stopping.")
    seed: int = help_field(2021, "Random seed (weights, data order, dropout).")
    device: str = help_field("auto", "'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'; under torchrun each process takes cuda:LOCAL_RANK.")
    dist_backend: str = help_field("auto", "Under torchrun: the process group's backend, 'auto' (NCCL between CUDA devices, gloo between CPUs), 'gloo' or 'nccl'.", choices=distributed.BACKENDS)
    dist_timeout: float = help_field(600.0, "Under torchrun: seconds a process waits for the others in a collective before it fails (a stuck process stops the job instead of hanging it).")
    bf16: bool | None = help_field(None, "bfloat16 autocast of the training forward; default on for CPUs with bfloat16 matrix instructions from seq_len 48 (README, Speed).")
    compile: bool = help_field(False, "torch.compile the model for the training steps (inductor: the first step compiles, about a minute on 2 CPU cores; evaluation runs eagerly).")
    threads: int | None = help_field(None, "CPU threads for torch (default: torch's choice).")
    out: str = help_field("runs/sthfast", "Run folder: checkpoints, metrics.json, log.jsonl, plots.")
    resume: bool = help_field(False, "Continue the run in --out from its last checkpoint (same data and config).")
    plots: bool = help_field(True, "Write PNG plots into the run folder.")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches={self.max_batches} must be >= 1")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not one of {list(LOSSES)}")
        if not self.huber_delta > 0:
            raise ValueError(f"huber_delta={self.huber_delta} must be > 0")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol={self.protocol!r} is not one of {list(PROTOCOLS)}")
        if not self.lr > 0 or self.clip < 0 or self.patience < 1:
            raise ValueError(f"lr={self.lr}, clip={self.clip}, patience={self.patience} out of range")
        if self.dist_backend not in distributed.BACKENDS:
            raise ValueError(f"dist_backend={self.dist_backend!r} is not one of {list(distributed.BACKENDS)}")
        if not self.dist_timeout > 0:
            raise ValueError(f"dist_timeout={self.dist_timeout} must be > 0")
        if self.adjacency_weighting not in WEIGHTINGS:
            raise ValueError(f"adjacency_weighting={self.adjacency_weighting!r} is not one of {list(WEIGHTINGS)}")
        if self.steps_per_day is not None and self.steps_per_day < 1:
            raise ValueError(f"steps_per_day={self.steps_per_day} must be >= 1")
        self.split_fractions()
        self.milestone_epochs()
        names = self.time_feature_list()
        if set(names) - set(TIME_FEATURES) or len(set(names)) != len(names):
            raise ValueError(f"time_features={self.time_features!r}: a comma-separated subset of "
                             f"{list(TIME_FEATURES)}, each at most once")

    def split_fractions(self) -> tuple[float, float, float]:
        parts = _numbers(self.split, float, "split")
        if len(parts) != 3:
            raise ValueError(f"split={self.split!r} must be three fractions train,val,test")
        return tuple(parts)

    def milestone_epochs(self) -> list[int]:
        return _numbers(self.milestones, int, "milestones") if self.milestones else []

    def feature_list(self) -> list[int] | None:
        return _numbers(self.features, int, "features") if self.features else None

    def time_feature_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.time_features.split(",") if p.strip()) if self.time_features else ()

    def missing_zeros(self) -> bool:
        return PROTOCOLS[self.protocol]["zeros_missing"] if self.zeros_missing is None else self.zeros_missing

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_absolute_paths(self) -> "TrainConfig":
        """The same config with file paths made absolute, so a checkpoint works from any folder."""
        paths = {name: str(Path(value).expanduser().resolve())
                 for name in ("data", "adjacency", "adjacency_ids", "out")
                 if (value := getattr(self, name)) and value != EMBEDDED}
        return dataclasses.replace(self, **paths)


# TrainConfig fields that may change between a run and its --resume (they do not change the result).
RESUMABLE = ("epochs", "out", "resume", "device", "threads", "plots", "eval_batch_size", "compile", "dist_backend",
             "dist_timeout")


def _numbers(text: str, kind, name: str) -> list:
    try:
        return [kind(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a comma-separated list of {kind.__name__}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but no CUDA device is available")
    return device


def use_bf16(tc: TrainConfig, config: STHSepNetConfig, device: torch.device) -> bool:
    """Whether the training forward runs under bfloat16 autocast: ``tc.bf16`` when given, else on
    for CPUs with bfloat16 matrix instructions and inputs of at least :data:`BF16_MIN_SEQ_LEN` steps."""
    if tc.bf16 is not None:
        return tc.bf16
    return device.type == "cpu" and config.seq_len >= BF16_MIN_SEQ_LEN and optional_deps.probe("cpu_bf16").ok


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


def read_series(tc: TrainConfig, data: str | None = None) -> SensorSeries:
    """The series named by ``tc`` (or the series file ``data``), read as ``tc`` says."""
    return load_series(data or tc.data, key=tc.data_key, features=tc.feature_list(),
                       zeros_missing=tc.missing_zeros(), header=tc.csv_header)


def model_config(series: SensorSeries, tc: TrainConfig,
                 overrides: dict[str, Any]) -> tuple[STHSepNetConfig, TrainConfig]:
    """The model config for ``series`` (protocol lengths, then the user's overrides; sizes and
    calendar channels from the data) and ``tc`` with the calendar channels that the model's
    ``seasonal_residual`` / ``time_embedding_dim`` read added to its time features."""
    given = sorted(set(overrides) & set(DATA_FIELDS))
    if given:
        raise ValueError(f"{given} are read from the data, not set by hand")
    values = {**TRAIN_MODEL_DEFAULTS, **PROTOCOLS[tc.protocol]["model"], **overrides}
    if values.get("backbone", EMBEDDED_BACKBONE) != EMBEDDED_BACKBONE:
        values["backbone"] = str(Path(values["backbone"]).expanduser().resolve())
    names = tc.time_feature_list()
    if values["seasonal_residual"] == "auto":
        weekday = "day_of_week" in names or "time_of_day" not in names        # both are added if absent
        values["seasonal_residual"], errors = seasonal_residual_helps(
            series, tc, values.get("target_feature", 0), weekday, values["pred_len"])
        tqdm.write(f"seasonal residual {'on' if values['seasonal_residual'] else 'off'}: validation MAE "
                   + ", ".join(f"{name} {mae:.4g}" for name, mae in errors.items())
                   + " (on where the profile's is the lowest; --seasonal-residual / --no-seasonal-residual choose)")
    defaults = STHSepNetConfig()
    needs_calendar = values["seasonal_residual"] or values.get("time_embedding_dim", defaults.time_embedding_dim)
    if needs_calendar and "time_of_day" not in names:
        names += tuple(n for n in TIME_FEATURES if n not in names)
        tc = dataclasses.replace(tc, time_features=",".join(names))
    data_features = series.values.shape[2]
    channels = {f"{name}_channel": data_features + names.index(name) if name in names else None
                for name in TIME_FEATURES}
    config = STHSepNetConfig(num_nodes=series.num_nodes, in_features=data_features + len(names),
                             slots_per_day=calendar(series, tc.steps_per_day).per_day, **channels, **values)
    return config, tc


# the seasonal profile is by week slot only when the training split holds at least this many weeks
# (with n, every training target is 1 / n of its own slot's mean, so its residual shrinks by
# sqrt((n - 1) / n) against unseen data; with one week it would be zero)
PROFILE_MIN_WEEKS = 4


def training_profile(train_values: np.ndarray, cal: Calendar, has_weekday: bool) -> np.ndarray:
    """The seasonal profile of the training split ``train_values [T', N]`` (original units): with a
    weekday, ``[7 per_day, N]`` per-node means by week slot, or by time of day repeated for every
    weekday when the split holds fewer than :data:`PROFILE_MIN_WEEKS` weeks; else ``[per_day, N]``."""
    weekly = has_weekday and len(train_values) >= PROFILE_MIN_WEEKS * 7 * cal.per_day
    table = seasonal_profile(train_values, cal, weekly=weekly)
    return np.tile(table, (7, 1)) if has_weekday and not weekly else table


def seasonal_residual_helps(series: SensorSeries, tc: TrainConfig, target_feature: int,
                            has_weekday: bool, pred_len: int) -> tuple[bool, dict[str, float]]:
    """Whether the data are seasonal enough for the seasonal residual (the default of ``sthfast
    train``): on the validation split the training split's profile forecasts the readings with a
    lower MAE than both each node's training mean and the last reading 1 to ``pred_len`` steps
    before (averaged over those horizons). The last reading is what a model without the residual
    starts from: where it beats the profile over the horizon (traffic speeds one hour ahead), the
    residual lost validation in ACCURACY.md. Returns ``(helps, {forecast: validation MAE})`` for
    the forecasts ``'profile'``, ``'node means'`` and ``'last reading'``."""
    first_val, first_test = split_boundaries(series.num_steps, tc.split_fractions())
    target = series.values[:, :, target_feature].astype(np.float64)             # [T, N], NaN = missing
    val = target[first_val:first_test]
    cal = calendar(series, tc.steps_per_day)
    table = training_profile(target[:first_val], cal, has_weekday)
    slots = cal.weekday * cal.per_day + cal.day_slot if has_weekday else cal.day_slot
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


def mostly_zero_nodes(series: SensorSeries, tc: TrainConfig, target_feature: int) -> float:
    """The share of the nodes that vary in the training split whose valid training readings are 0
    more than half of the time (counts that are mostly zero, such as bus boardings per stop and
    hour). Nodes without a reading or with one constant reading (an empty grid cell) are left out:
    either loss forecasts them alike."""
    first_val, _ = split_boundaries(series.num_steps, tc.split_fractions())
    train = series.values[:first_val, :, target_feature].astype(np.float64)          # [T', N]
    valid = np.isfinite(train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                              # all-NaN nodes
        varies = np.nanmax(train, axis=0) > np.nanmin(train, axis=0)
    zeros = (train == 0).sum(0)
    mostly_zero = 2 * zeros[varies] > valid.sum(0)[varies]
    return float(mostly_zero.mean()) if varies.any() else 0.0


def chosen_loss(series: SensorSeries, tc: TrainConfig, target_feature: int) -> str:
    """``tc.loss``, with ``'auto'`` resolved: the Huber loss where more than half of the varying
    nodes are mostly zero (:func:`mostly_zero_nodes`: the MAE's optimum, the conditional median,
    then sits at 0 for most of them and the forecast loses its RMSE to the seasonal average; on
    MONTEVIDEO-BUS Huber won validation), else the MAE (it won validation on the other datasets
    of ACCURACY.md)."""
    if tc.loss != "auto":
        return tc.loss
    share = mostly_zero_nodes(series, tc, target_feature)
    loss = "huber" if share > 0.5 else "mae"
    tqdm.write(f"loss {loss}: {100 * share:.1f} % of the varying nodes read 0 more than half of the "
               "training steps (Huber where over 50 %, else MAE; --loss chooses)")
    return loss


def fit_seasonal_profile(model: STHSepNet, data: SplitData, steps_per_day: int | None) -> None:
    """Set the model's seasonal profile (:func:`training_profile`) in its scaled units."""
    values = data.series.values[:data.boundaries[0], :, data.target_feature].astype(np.float64)
    table = training_profile(values, calendar(data.series, steps_per_day),
                             has_weekday=model.config.day_of_week_channel is not None)
    mean, std = (t.numpy().astype(np.float64) for t in data.target_scale())
    model.set_seasonal_profile(((table - mean) / std).astype(np.float32))


def fill_gaps_with_profile(scaled: torch.Tensor, series: SensorSeries, model: STHSepNet,
                           steps_per_day: int | None) -> None:
    """Under the seasonal residual, put the profile at the missing target readings of the model
    inputs ``scaled [T, N, F']`` (in place; they are 0, the node's mean, otherwise), so that the
    model reads a gap as no deviation from the season rather than as minus the profile."""
    if model.seasonal is None:
        return
    f = model.config.target_feature
    missing = torch.from_numpy(np.isnan(series.values[:, :, f]))                 # [T, N]
    if not missing.any():
        return
    cal = calendar(series, steps_per_day)
    weekly = model.config.day_of_week_channel is not None
    slots = torch.from_numpy(cal.weekday * cal.per_day + cal.day_slot if weekly else cal.day_slot)
    target = scaled[..., f]
    target[missing] = model.seasonal.profile[slots].to(scaled.dtype)[missing]


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


def report(metrics: dict[str, ForecastMetrics], horizons: tuple[int, ...]) -> dict[str, Any]:
    """Metrics as plain data, with a verdict per baseline: does the model beat it (MAE, all steps)?"""
    out = {name: m.result(tuple(h for h in horizons if h <= len(m.abs))) for name, m in metrics.items()}
    model_mae = out["model"]["all"]["mae"]
    out["model_beats"] = {name: bool(model_mae < out[name]["all"]["mae"]) for name in out if name != "model"}
    return out


def format_table(result: dict[str, Any]) -> str:
    """The metrics table the CLI prints: one row per method and horizon."""
    lines = [f"{'method':18s} {'horizon':>8s} {'MAE':>9s} {'RMSE':>9s} {'MAPE %':>9s}"]
    for name, per in result.items():
        if name == "model_beats":
            continue
        for horizon, m in per.items():
            lines.append(f"{name:18s} {horizon:>8s} {m['mae']:9.3f} {m['rmse']:9.3f} {m['mape']:9.2f}")
    losses = [name for name, beats in result["model_beats"].items() if not beats]
    lines.append("the model beats every baseline (MAE, all steps)" if not losses
                 else f"WARNING: the model does NOT beat {losses} (MAE, all steps)")
    return "\n".join(lines)


def _run_meta(data: SplitData, tc: TrainConfig, config: STHSepNetConfig, kept: np.ndarray | None,
              data_nodes: int, world_size: int) -> dict[str, Any]:
    """What every checkpoint of a run records besides its epoch (computed once per run); ``nodes``:
    the nodes of the data's ``data_nodes`` that the model forecasts (None: all; else those
    --drop-dead-nodes kept); whether the calendar channels came from timestamps; the number of
    processes that trained it (its checkpoints load in any number)."""
    return {"scaler": data.scaler.to_dict(), "data_fingerprint": data.series.fingerprint(),
            "nodes": None if kept is None else kept.tolist(), "data_nodes": data_nodes,
            "calendar_from_timestamps": data.series.timestamps is not None,
            "data_source": data.series.source, "target_feature": data.target_feature,
            "train_config": tc.to_dict(), "world_size": world_size,
            "backbone_fingerprint": backbone_fingerprint(config.backbone) if config.uses_llm else None}


@dataclass
class TrainingRun:
    """One run of :func:`train` between its steps: the settings, the data, the model and its
    optimiser, where checkpoints go, ``progress`` (epochs done, best validation MAE, history), and
    this process among the ranks of a DDP run (``ranks.device`` is ``device``)."""

    tc: TrainConfig
    config: STHSepNetConfig
    data: SplitData
    run_meta: dict[str, Any]
    model: STHSepNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    progress: dict[str, Any]
    device: torch.device
    bf16: bool
    ranks: distributed.Ranks

    @property
    def out(self) -> Path:
        return Path(self.tc.out)

    @property
    def last_dir(self) -> Path:
        return self.out / "checkpoint" / "last"

    @property
    def best_dir(self) -> Path:
        return self.out / "checkpoint" / "best"


def train(tc: TrainConfig, **model_overrides: Any) -> dict[str, Any] | None:
    """Train, keep the best model by validation MAE, evaluate it on the test split beside the
    baselines, and write the run folder. Returns the test report (as in ``metrics.json``).

    Started by torchrun with P > 1 processes (:mod:`sthfast.distributed`), each process trains on
    its shard of every global batch under DDP and validates its part of the validation split;
    rank 0 alone writes the run folder and, once every rank has left the process group, evaluates
    the test split on its own; the other ranks return None."""
    ranks = distributed.start(resolve_device(tc.device), tc.dist_backend, tc.dist_timeout, tc.batch_size)
    try:
        with ranks.quiet():
            run = set_up(tc, model_overrides, ranks)
            fit(run)
    finally:
        ranks.close()
    return final_test(run) if ranks.is_main else None


def fit(run: TrainingRun) -> None:
    """The epochs of ``run`` from its first undone one to early stopping or ``tc.epochs``, on the
    model under DDP (one process: the model itself) and, with ``compile``, compiled."""
    forward = run.ranks.wrap(run.model)                                          # the same parameters
    forward = torch.compile(forward) if run.tc.compile else forward
    try:
        for epoch in range(run.progress["epoch"], run.tc.epochs):
            if run.progress["bad_epochs"] >= run.tc.patience:
                break
            end_epoch(run, epoch, train_epoch(run, forward, epoch))
    finally:
        del forward               # DDP's reducer goes before the process group: Ranks.close


def set_up(tc: TrainConfig, model_overrides: dict[str, Any], ranks: distributed.Ranks) -> TrainingRun:
    """The run of ``tc`` in this process of ``ranks``: its data read and split, the model built
    (seeded: the same on every rank) with its seasonal profile and clamp range, the optimiser, and,
    with ``--resume``, the state of the last checkpoint."""
    tc = tc.with_absolute_paths()
    out = Path(tc.out)
    last_dir = out / "checkpoint" / "last"
    resuming = tc.resume and (last_dir / ckpt.META).exists()
    if not tc.resume and (last_dir / ckpt.META).exists():
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, or another --out")
    if tc.resume and not resuming:
        tqdm.write(f"{out} has no checkpoint yet (stopped during epoch 1?): starting from epoch 1")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    series, kept, data_nodes = _training_series(tc)
    if resuming:
        tc, model_overrides = _choices_of_run(last_dir, tc, model_overrides)
    config, tc = model_config(series, tc, model_overrides)
    tc = dataclasses.replace(tc, loss=chosen_loss(series, tc, config.target_feature))
    data = prepare(series, config.seq_len, config.pred_len, tc.split_fractions(), config.target_feature,
                   time_features=tc.time_feature_list(), steps_per_day=tc.steps_per_day)
    run_meta = _run_meta(data, tc, config, kept, data_nodes, ranks.world_size)
    device = ranks.device

    torch.manual_seed(tc.seed)
    model = _new_model(config, data, tc)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, tc.milestone_epochs(), tc.lr_gamma)
    ranks.seed_own_stream(tc.seed)
    progress = {"epoch": 0, "best_val_mae": math.inf, "bad_epochs": 0, "history": []}
    if resuming:
        progress = _resume(last_dir, model, optimizer, scheduler, run_meta, config, ranks)
    ranks.check_same("the data and the epoch to start from", (run_meta["data_fingerprint"], progress["epoch"]))
    model.to(device)
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)
    bf16 = use_bf16(tc, config, device)
    if bf16 and tc.bf16 is None:
        tqdm.write("training under bfloat16 autocast (a CPU with bfloat16 matrix instructions, seq_len >= "
                   f"{BF16_MIN_SEQ_LEN}); --no-bf16 trains in float32")
    return TrainingRun(tc, config, data, run_meta, model, optimizer, scheduler, progress, device, bf16, ranks)


def _training_series(tc: TrainConfig) -> tuple[SensorSeries, np.ndarray | None, int]:
    """The series of ``tc`` with its adjacency, and with ``--drop-dead-nodes`` without the nodes that
    have no training reading: ``(series, kept node indices or None, nodes in the data)``."""
    series = read_series(tc)
    if tc.adjacency:
        series.adjacency = load_adjacency(tc.adjacency, series.num_nodes, ids=tc.adjacency_ids,
                                          weighting=tc.adjacency_weighting)
    kept, data_nodes = None, series.num_nodes
    if tc.drop_dead_nodes and (dead := unseen_nodes(series, tc.split_fractions())).size:
        kept = np.setdiff1d(np.arange(series.num_nodes), dead)
        if not kept.size:
            raise ValueError(f"{series.source}: no node has a valid reading in the training split")
        series = series.select_nodes(kept)
        tqdm.write(f"left out {dead.size} node(s) with no valid reading in the training split: "
                   f"{dead[:10].tolist()}{' ...' if dead.size > 10 else ''} (--drop-dead-nodes)")
    return series, kept, data_nodes


def _new_model(config: STHSepNetConfig, data: SplitData, tc: TrainConfig) -> STHSepNet:
    """The model of ``config`` with what it takes from the training split: the seasonal profile
    (and the inputs' gaps filled with it) and the clamp range."""
    model = STHSepNet(config, adjacency=data.series.adjacency if config.graph == "static" else None)
    if config.seasonal_residual:
        fit_seasonal_profile(model, data, tc.steps_per_day)
        fill_gaps_with_profile(data.train.scaled, data.series, model, tc.steps_per_day)  # splits share it
    if config.clamp:
        mean, std = data.target_scale()
        train_part = torch.from_numpy(data.series.values[: data.boundaries[0], :, config.target_feature])
        scaled = (train_part - mean) / std
        low, high = torch.nan_to_num(scaled, nan=math.inf).amin(0), torch.nan_to_num(scaled, nan=-math.inf).amax(0)
        unseen = low > high                                    # no training reading: no bounds
        model.set_clamp_range(low.masked_fill(unseen, -math.inf), high.masked_fill(unseen, math.inf))
    return model


def train_epoch(run: TrainingRun, forward, epoch: int) -> dict[str, Any]:
    """One pass over the training windows in the seeded order of ``epoch`` (``forward``: the model,
    under DDP and / or compiled); returns the epoch's record without the validation figures.

    Under DDP the batches are those of one process, each rank taking its shard of every one (its
    padding windows have their targets masked). The loss and samples/s are the global batch's."""
    tc, data, device, ranks = run.tc, run.data, run.device, run.ranks
    mean, std = (t.to(device) for t in data.target_scale())
    params = [p for p in run.model.parameters() if p.requires_grad]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.bf16)
    run.model.train()
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(tc.seed * 100_003 + epoch))
    batches = order.split(tc.batch_size)[: tc.max_batches]
    start, seen, loss_sum = time.perf_counter(), 0, 0.0
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="batch", dynamic_ncols=True,
               disable=not ranks.is_main)
    for batch in bar:
        idx, padding = ranks.shard_batch(batch)
        x, y, _ = data.train.batch(idx)
        y[padding] = math.nan                                  # padding windows count nowhere
        x, y = x.to(device), y.to(device)
        with autocast:
            pred = forward(x)
        valid = valid_mask(y, tc.missing_zeros())
        loss = masked_loss(pred.float(), (y - mean) / std, valid, tc.loss, tc.huber_delta,
                           ranks.loss_denominator(valid))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.clip)
        run.optimizer.step()
        seen += len(batch)
        loss_sum += loss.item() * len(batch)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{seen / (time.perf_counter() - start):.1f}")
    train_seconds = time.perf_counter() - start
    run.scheduler.step()
    loss_sum = ranks.sum(torch.tensor(loss_sum, dtype=torch.float64)).item() / ranks.world_size  # the shards'
    return {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
            "lr": run.optimizer.param_groups[0]["lr"], "train_seconds": train_seconds,
            "samples_per_s": seen / train_seconds}


def end_epoch(run: TrainingRun, epoch: int, record: dict[str, Any]) -> None:
    """Validate (under DDP each rank its part, every rank getting the whole split's figures), then,
    on rank 0, write the epoch's checkpoints (best when validation MAE improved; last, with the
    optimiser, scheduler and RNG state of every rank, for ``--resume``) and the log."""
    tc, progress, ranks = run.tc, run.progress, run.ranks
    val = evaluate_windows(run.model, run.data.val, run.data, tc.missing_zeros(), tc.eval_batch_size, run.device,
                           ranks=ranks)
    val_result = val["metrics"]["model"].result()["all"]
    if not math.isfinite(val_result["mae"]):
        raise ValueError(f"validation MAE is {val_result['mae']} after epoch {epoch + 1}: training "
                         "diverged (lower --lr, keep --clip) or the validation split has no valid target")
    record = {"epoch": record["epoch"], "train_loss": record["train_loss"], "val_mae": val_result["mae"],
              "val_rmse": val_result["rmse"], "val_mape": val_result["mape"],
              **{k: record[k] for k in ("lr", "train_seconds", "samples_per_s")}}
    progress["history"].append(record)
    progress["epoch"] = epoch + 1
    improved = val_result["mae"] < progress["best_val_mae"]
    if improved:
        progress["best_val_mae"], progress["bad_epochs"] = val_result["mae"], 0
    else:
        progress["bad_epochs"] += 1
    rank_rngs = ranks.gather(_rng_state(run.device)) if ranks.active else None
    if not ranks.is_main:
        return
    if improved:
        ckpt.save(run.best_dir, run.model, dict(run.run_meta, epoch=epoch + 1))
    trainer_state = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                     "torch_rng": torch.get_rng_state(), "progress": progress}
    if torch.cuda.is_available():
        trainer_state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if rank_rngs is not None:
        trainer_state["rank_rngs"] = rank_rngs
    ckpt.save(run.last_dir, run.model, dict(run.run_meta, epoch=epoch + 1), trainer_state)
    ckpt.atomic_write_text(run.out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in progress["history"]))
    tqdm.write(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, val MAE {record['val_mae']:.3f}, "
               f"{record['samples_per_s']:.1f} samples/s")


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process' random state: the CPU generator's and, on CUDA, its device's."""
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def final_test(run: TrainingRun) -> dict[str, Any]:
    """The best checkpoint on the test split beside the baselines: ``metrics.json``,
    ``config.json`` and the plots written; returns the summary."""
    tc, config, data, model = run.tc, run.config, run.data, run.model
    ckpt.load_weights(model, run.best_dir)   # checks meta.json's SHA-256 first
    baselines = fit_baselines(data, tc.steps_per_day)
    test = evaluate_windows(model, data.test, data, tc.missing_zeros(), tc.eval_batch_size, run.device, baselines,
                            keep_predictions=tc.plots)
    result = report(test["metrics"], PROTOCOLS[tc.protocol]["horizons"])
    summary = {"protocol": tc.protocol, "data": data.series.source, "num_nodes": config.num_nodes,
               "seq_len": config.seq_len, "pred_len": config.pred_len, "zeros_missing": tc.missing_zeros(),
               "bf16": run.bf16, "loss": tc.loss, "world_size": run.ranks.world_size,
               "best_epoch": _best_epoch(run.progress), "epochs_run": run.progress["epoch"],
               "test": result, "history": run.progress["history"], "parameters": model.parameter_counts()}
    ckpt.atomic_write_text(run.out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    ckpt.atomic_write_text(run.out / "config.json", config.to_json() + "\n")
    if tc.plots:
        from .plots import write_plots  # noqa: PLC0415 (matplotlib is imported only for plots)

        write_plots(run.out, model, data, test, run.progress["history"])
    return summary


def _best_epoch(progress: dict) -> int:
    history = progress["history"]
    return min(history, key=lambda r: r["val_mae"])["epoch"] if history else 0


def _resume(last_dir: Path, model, optimizer, scheduler, run_meta: dict, config: STHSepNetConfig,
            ranks: distributed.Ranks) -> dict:
    meta = ckpt.read_meta(last_dir)
    saved_config = {**STHSepNetConfig().to_dict(), **meta["config"]}    # fields newer than the run: defaults
    if saved_config != config.to_dict():
        changed = sorted(k for k in saved_config if saved_config[k] != config.to_dict().get(k))
        raise ckpt.CheckpointError(f"{last_dir}: the checkpoint was trained with a different model config "
                                   f"(fields {changed}); resume with the same flags")
    saved, now = _saved_train_config(last_dir, meta), run_meta["train_config"]
    defaults = TrainConfig().to_dict()                  # fields newer than the run: their defaults
    changed = sorted(k for k in now if k not in RESUMABLE and saved.get(k, defaults[k]) != now[k])
    if changed:
        raise ckpt.CheckpointError(f"{last_dir}: the run was started with other training settings "
                                   f"(fields {changed}); only {list(RESUMABLE)} may change on --resume")
    if meta["data_fingerprint"] != run_meta["data_fingerprint"]:
        raise ckpt.CheckpointError(f"{last_dir}: the checkpoint was trained on different data "
                                   f"({meta['data_source']}); resume on the same data")
    ckpt.load_weights(model, last_dir, meta)
    state = ckpt.load_trainer_state(last_dir, meta)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _restore_rng(state, ranks, saved["seed"])
    return state["progress"]


def _choices_of_run(last_dir: Path, tc: TrainConfig,
                    model_overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """``tc`` and ``model_overrides`` with what ``'auto'`` chose when the checkpoint's run started,
    the loss and the seasonal residual, so that a resume goes on as it began even where the rules
    (:func:`chosen_loss`, :func:`seasonal_residual_helps`) have changed since."""
    meta = ckpt.read_meta(last_dir)
    if tc.loss == "auto":
        tc = dataclasses.replace(tc, loss=_saved_train_config(last_dir, meta)["loss"])
    if model_overrides.get("seasonal_residual", "auto") == "auto":
        started = {**STHSepNetConfig().to_dict(), **meta["config"]}["seasonal_residual"]
        model_overrides = {**model_overrides, "seasonal_residual": started}
    return tc, model_overrides


def _saved_train_config(last_dir: Path, meta: dict | None = None) -> dict[str, Any]:
    """The training settings a checkpoint's run started with; a run from before the ``loss``
    field trained with MSE."""
    saved = (meta or ckpt.read_meta(last_dir))["train_config"]
    return {"loss": "mse", **saved}


def _restore_rng(state: dict, ranks: distributed.Ranks, seed: int) -> None:
    """This process' random state from a checkpoint's trainer state: its rank's when as many ranks
    wrote it (an exact resume); else rank 0's, ranks > 0 then drawing from streams of their own."""
    saved = state.get("rank_rngs") or []
    if ranks.active and len(saved) == ranks.world_size:
        own = saved[ranks.rank]
        torch.set_rng_state(own["torch_rng"])
        if "cuda_rng" in own and ranks.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda_rng"], ranks.device)
        return
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    ranks.seed_own_stream(seed, state["progress"]["epoch"])


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _series_for_checkpoint(meta: dict, data: str | None) -> tuple[SensorSeries, TrainConfig]:
    """The checkpoint's own data (unchanged: its fingerprint is checked) or the series ``data``,
    read as in training and of the checkpoint's N and F."""
    tc = TrainConfig(**meta["train_config"])
    series = read_series(tc, data)
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
    if tc.time_feature_list():
        _check_calendar(series, tc, config, meta)
    if data is None and series.fingerprint() != meta["data_fingerprint"]:
        raise ckpt.CheckpointError(f"{series.source} changed since the checkpoint was trained on it; "
                                   "pass --data to evaluate on it anyway")
    return series, tc


def _check_calendar(series: SensorSeries, tc: TrainConfig, config: STHSepNetConfig, meta: dict) -> None:
    """The calendar channels of ``series`` mean what they meant in training: the same slots per day,
    and read from timestamps if training read them from timestamps."""
    if meta.get("calendar_from_timestamps") and series.timestamps is None:
        raise ckpt.CheckpointError(f"the model reads its calendar channels from timestamps; {series.source} "
                                   "has none (their week slots would be guesses)")
    per_day = calendar(series, tc.steps_per_day).per_day
    if per_day != config.slots_per_day:
        raise ckpt.CheckpointError(f"the model's calendar has {config.slots_per_day} steps per day; "
                                   f"{series.source} has {per_day}")


def evaluate(checkpoint: str | Path, data: str | None = None, device: str = "auto",
             batch_size: int = 64) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split of its data (or of ``data``) beside the baselines."""
    model, meta = ckpt.load_checkpoint(checkpoint, STHSepNet)
    series, tc = _series_for_checkpoint(meta, data)
    config = model.config
    split = prepare(series, config.seq_len, config.pred_len, tc.split_fractions(), meta["target_feature"],
                    scaler=Scaler.from_dict(meta["scaler"]), time_features=tc.time_feature_list(),
                    steps_per_day=tc.steps_per_day)
    fill_gaps_with_profile(split.test.scaled, split.series, model, tc.steps_per_day)
    dev = resolve_device(device)
    model.to(dev)
    zeros_missing = tc.missing_zeros()
    result = evaluate_windows(model, split.test, split, zeros_missing, batch_size, dev,
                              fit_baselines(split, tc.steps_per_day))
    return report(result["metrics"], PROTOCOLS[tc.protocol]["horizons"])


def predict(checkpoint: str | Path, data: str, out: str | Path, device: str = "auto",
            all_windows: bool = False, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Forecast the ``pred_len`` steps after the end of ``data`` (and, with ``all_windows``, from
    every window of it); written to ``out`` (``.npz``) and returned."""
    model, meta = ckpt.load_checkpoint(checkpoint, STHSepNet)
    config = model.config
    series, tc = _series_for_checkpoint(meta, data)
    if series.num_steps < config.seq_len:
        raise ValueError(f"{data}: {series.num_steps} steps, fewer than seq_len={config.seq_len}")
    scaler = Scaler.from_dict(meta["scaler"])
    scaled = model_inputs(series, scaler, tc.time_feature_list(), tc.steps_per_day)
    fill_gaps_with_profile(scaled, series, model, tc.steps_per_day)
    f = meta["target_feature"]
    mean, std = torch.from_numpy(scaler.mean[:, f]), torch.from_numpy(scaler.std[:, f])
    dev = resolve_device(device)
    model.to(dev).eval()
    starts = torch.arange(series.num_steps - config.seq_len + 1) if all_windows else \
        torch.tensor([series.num_steps - config.seq_len])
    preds = []
    with torch.no_grad():
        for chunk in starts.split(batch_size):
            x = scaled[chunk[:, None] + torch.arange(config.seq_len)]
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
