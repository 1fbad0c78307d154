"""The training job, ``sthfast train``: set up a run (data, ``auto`` choices, model, optimiser,
``--resume``), train it epoch by epoch with validation and checkpoints, then test the best model
beside the naive baselines. The CLI is a thin layer over :func:`train`; the pieces it calls live
by concern: :mod:`~sthfast.train_config` (settings), :mod:`~sthfast.auto_rules` (data-driven
choices), :mod:`~sthfast.evaluation` (metrics over a split, ``evaluate`` / ``predict``),
:mod:`~sthfast.resume` (the last checkpoint's state)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed, optional_deps, resume
from .auto_rules import chosen_loss, mostly_zero_nodes, seasonal_residual_helps
from .baselines import fit_baselines
from .config import STHSepNetConfig
from .data import SensorSeries, SplitData, load_adjacency, prepare, unseen_nodes
from .data.calendar import TIME_FEATURES, Calendar, calendar
from .data.windows import split_boundaries
from .distributed import resolve_device
from .evaluation import evaluate_windows, report, with_seasonal_gaps
from .metrics import loss_weights, masked_loss, valid_mask
from .model import STHSepNet
from .nn.backbone import EMBEDDED as EMBEDDED_BACKBONE
from .nn.backbone import backbone_fingerprint
from .train_config import DATA_FIELDS, PROTOCOLS, TRAIN_MODEL_DEFAULTS, TrainConfig


def use_bf16(tc: TrainConfig, config: STHSepNetConfig, device: torch.device) -> bool:
    """Whether the training forward runs under bfloat16 autocast: ``tc.bf16`` when given, else on
    for CPUs with bfloat16 matrix instructions (AMX-BF16 or AVX512-BF16). Measured per training step
    1.4x faster at 48 -> 48 on an AMX Xeon (RESULTS.md) and 1.5x on an AVX512-BF16 EPYC (PROFILE.md);
    at 12 -> 12 on that EPYC, epochs 1.28x faster at the same test MAE on LOS-LOOP and NYCBIKE1-TAIL
    (benchmarks/bf16_accuracy.json)."""
    if tc.bf16 is not None:
        return tc.bf16
    return device.type == "cpu" and optional_deps.probe("cpu_bf16").ok


def model_config(series: SensorSeries, cal: Calendar, boundaries: tuple[int, int], tc: TrainConfig,
                 overrides: dict[str, Any]) -> tuple[STHSepNetConfig, TrainConfig]:
    """The model config for ``series`` (protocol lengths, then the user's overrides; sizes and
    calendar channels from the data; ``seasonal_residual='auto'`` decided on its splits at
    ``boundaries``) and ``tc`` with the calendar channels that the model's ``seasonal_residual`` /
    ``time_embedding_dim`` and ``identity_head_dim`` read added to its time features."""
    given = sorted(set(overrides) & set(DATA_FIELDS))
    if given:
        raise ValueError(f"{given} are read from the data, not set by hand")
    values = {**TRAIN_MODEL_DEFAULTS, **PROTOCOLS[tc.protocol]["model"], **overrides}
    if values.get("backbone", EMBEDDED_BACKBONE) != EMBEDDED_BACKBONE:
        values["backbone"] = str(Path(values["backbone"]).expanduser().resolve())
    names = tc.time_feature_list()
    if values["seasonal_residual"] == "auto":
        weekday = "day_of_week" in names or "time_of_day" not in names        # both are added if absent
        target = series.values[:, :, values.get("target_feature", 0)].astype(np.float64)   # [T, N]
        values["seasonal_residual"], errors = seasonal_residual_helps(target, boundaries, cal, weekday,
                                                                      values["pred_len"])
        tqdm.write(f"seasonal residual {'on' if values['seasonal_residual'] else 'off'}: validation MAE "
                   + ", ".join(f"{name} {mae:.4g}" for name, mae in errors.items())
                   + " (on where the profile's is the lowest; --seasonal-residual / --no-seasonal-residual choose)")
    defaults = STHSepNetConfig()
    needs_calendar = values["seasonal_residual"] or any(values.get(name, getattr(defaults, name))
                                                        for name in ("time_embedding_dim", "identity_head_dim"))
    if needs_calendar and "time_of_day" not in names:
        names += tuple(n for n in TIME_FEATURES if n not in names)
        tc = dataclasses.replace(tc, time_features=",".join(names))
    data_features = series.values.shape[2]
    channels = {f"{name}_channel": data_features + names.index(name) if name in names else None
                for name in TIME_FEATURES}
    config = STHSepNetConfig(num_nodes=series.num_nodes, in_features=data_features + len(names),
                             slots_per_day=cal.per_day, **channels, **values)
    return config, tc


def resolved_loss(tc: TrainConfig, train_target: np.ndarray) -> str:
    """``tc.loss``, with ``'auto'`` resolved on the training split ``train_target [T', N]``
    (:func:`~sthfast.auto_rules.chosen_loss`)."""
    if tc.loss != "auto":
        return tc.loss
    share = mostly_zero_nodes(train_target)
    loss = chosen_loss(share)
    tqdm.write(f"loss {loss}: {100 * share:.1f} % of the varying nodes read 0 in more than half of their "
               "valid training readings (Huber where over 50 %, else MAE; --loss chooses)")
    return loss


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
        tc, model_overrides = resume.choices_of_run(last_dir, tc, model_overrides)
    cal = calendar(series, tc.steps_per_day)
    config, tc = model_config(series, cal, split_boundaries(series.num_steps, tc.split_fractions()), tc,
                              model_overrides)
    data = prepare(series, config.seq_len, config.pred_len, tc.split_fractions(), config.target_feature,
                   time_features=tc.time_feature_list(), cal=cal)
    tc = dataclasses.replace(tc, loss=resolved_loss(tc, data.train_target()))
    run_meta = _run_meta(data, tc, config, kept, data_nodes, ranks.world_size)
    device = ranks.device

    torch.manual_seed(tc.seed)
    model = _new_model(config, data)
    data = data.with_inputs(with_seasonal_gaps(data.inputs, data.series, data.calendar, model))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, tc.milestone_epochs(), tc.lr_gamma)
    ranks.seed_own_stream(tc.seed)
    progress = {"epoch": 0, "best_val_mae": math.inf, "bad_epochs": 0, "history": []}
    if resuming:
        progress = resume.restore(last_dir, model, optimizer, scheduler, run_meta, config, ranks)
    ranks.check_same("the data and the epoch to start from", (run_meta["data_fingerprint"], progress["epoch"]))
    model.to(device)
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)
    bf16 = use_bf16(tc, config, device)
    if bf16 and tc.bf16 is None:
        tqdm.write("training under bfloat16 autocast (a CPU with bfloat16 matrix instructions); --no-bf16 trains "
                   "in float32")
    return TrainingRun(tc, config, data, run_meta, model, optimizer, scheduler, progress, device, bf16, ranks)


def _training_series(tc: TrainConfig) -> tuple[SensorSeries, np.ndarray | None, int]:
    """The series of ``tc`` with its adjacency, and with ``--drop-dead-nodes`` without the nodes that
    have no training reading: ``(series, kept node indices or None, nodes in the data)``."""
    series = tc.read_series()
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


def _new_model(config: STHSepNetConfig, data: SplitData) -> STHSepNet:
    """The model of ``config`` with what it takes from the training split: the seasonal profile
    (:meth:`SplitData.seasonal_profile` in scaled units) and the clamp range."""
    model = STHSepNet(config, adjacency=data.series.adjacency if config.graph == "static" else None)
    mean, std = data.target_scale()
    if config.seasonal_residual:
        table = data.seasonal_profile(has_weekday=config.day_of_week_channel is not None)
        model.set_seasonal_profile(((torch.from_numpy(table) - mean.double()) / std.double()).float())
    if config.clamp:
        scaled = (torch.from_numpy(data.train_target()).float() - mean) / std
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
    weight = loss_weights(std, tc.loss_units)                  # [N]
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
        loss = masked_loss(pred.float() * weight, (y - mean) / std * weight, valid, tc.loss, tc.huber_delta,
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
    rank_rngs = ranks.gather(resume.rng_state(run.device)) if ranks.active else None
    if not ranks.is_main:
        return
    if improved:
        ckpt.save(run.best_dir, run.model, dict(run.run_meta, epoch=epoch + 1))
    ckpt.save(run.last_dir, run.model, dict(run.run_meta, epoch=epoch + 1),
              resume.trainer_state(run.optimizer, run.scheduler, progress, rank_rngs))
    ckpt.atomic_write_text(run.out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in progress["history"]))
    tqdm.write(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, val MAE {record['val_mae']:.3f}, "
               f"{record['samples_per_s']:.1f} samples/s")


def final_test(run: TrainingRun) -> dict[str, Any]:
    """The best checkpoint on the test split beside the baselines: ``metrics.json``,
    ``config.json`` and the plots written; returns the summary."""
    tc, config, data, model = run.tc, run.config, run.data, run.model
    ckpt.load_weights(model, run.best_dir)   # checks meta.json's SHA-256 first
    baselines = fit_baselines(data)
    test = evaluate_windows(model, data.test, data, tc.missing_zeros(), tc.eval_batch_size, run.device, baselines,
                            keep_predictions=tc.plots)
    result = report(test["metrics"], PROTOCOLS[tc.protocol]["horizons"])
    summary = {"protocol": tc.protocol, "data": data.series.source, "num_nodes": config.num_nodes,
               "seq_len": config.seq_len, "pred_len": config.pred_len, "zeros_missing": tc.missing_zeros(),
               "bf16": run.bf16, "loss": tc.loss, "loss_units": tc.loss_units,
               "world_size": run.ranks.world_size,
               "best_epoch": _best_epoch(run.progress), "epochs_run": run.progress["epoch"],
               "test": result, "history": run.progress["history"], "parameters": model.parameter_counts()}
    ckpt.atomic_write_text(run.out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    ckpt.atomic_write_text(run.out / "config.json", config.to_json() + "\n")
    if tc.plots:
        from .plots import write_plots  # noqa: PLC0415 (matplotlib is imported only for plots)

        write_plots(run.out, model, data, test, run.progress["history"], baselines, tc.loss)
    return summary


def _best_epoch(progress: dict) -> int:
    history = progress["history"]
    return min(history, key=lambda r: r["val_mae"])["epoch"] if history else 0
