"""``sthfast train --resume``: what the last checkpoint of a run saves besides the weights (the
optimiser, the scheduler, the progress and every rank's random state) and how a run restarts from
it, checking that the data and the settings are the ones it began with."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from . import distributed
from .config import STHSepNetConfig
from .train_config import RESUMABLE, TrainConfig


def trainer_state(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                  progress: dict[str, Any], rank_rngs: list | None) -> dict[str, Any]:
    """What the last checkpoint saves besides the weights: the optimiser, the scheduler, the
    progress (epochs done, best validation MAE, history) and the random state (of every rank
    under DDP, ``rank_rngs`` from :func:`rng_state` gathered)."""
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(), "progress": progress}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if rank_rngs is not None:
        state["rank_rngs"] = rank_rngs
    return state


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process' random state: the CPU generator's and, on CUDA, its device's."""
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore(last_dir: Path, model, optimizer, scheduler, run_meta: dict, config: STHSepNetConfig,
            ranks: distributed.Ranks) -> dict:
    """Load the last checkpoint ``last_dir`` into ``model``, ``optimizer`` and ``scheduler`` and
    restore this rank's random state, once the model config, the training settings (but
    :data:`~sthfast.train_config.RESUMABLE`) and the data are checked to be the run's; returns
    the run's progress."""
    meta = ckpt.read_meta(last_dir)
    saved_config = {**STHSepNetConfig().to_dict(), **meta["config"]}    # fields newer than the run: defaults
    if saved_config != config.to_dict():
        changed = sorted(k for k in saved_config if saved_config[k] != config.to_dict().get(k))
        raise ckpt.CheckpointError(f"{last_dir}: the checkpoint was trained with a different model config "
                                   f"(fields {changed}); resume with the same flags")
    saved, now = saved_train_config(last_dir, meta), run_meta["train_config"]
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


def choices_of_run(last_dir: Path, tc: TrainConfig,
                   model_overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """``tc`` and ``model_overrides`` with what ``'auto'`` chose when the checkpoint's run started,
    the loss and the seasonal residual, so that a resume goes on as it began even where the rules
    (:mod:`sthfast.auto_rules`) have changed since."""
    meta = ckpt.read_meta(last_dir)
    if tc.loss == "auto":
        tc = dataclasses.replace(tc, loss=saved_train_config(last_dir, meta)["loss"])
    if model_overrides.get("seasonal_residual", "auto") == "auto":
        started = {**STHSepNetConfig().to_dict(), **meta["config"]}["seasonal_residual"]
        model_overrides = {**model_overrides, "seasonal_residual": started}
    return tc, model_overrides


def saved_train_config(last_dir: Path, meta: dict | None = None) -> dict[str, Any]:
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
