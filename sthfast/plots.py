"""PNG plots of a run, with the data's units and the horizon in time: forecasts beside truth and
the best baseline, error by horizon, training curves, the learned hypergraph."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from . import reference
from .checkpoint import atomic_write

PLOTS = ("forecast.png", "error_by_horizon.png", "training_curves.png", "hypergraph.png")
MAX_HYPERGRAPH_NODES = 2000  # the picture uses the dense reference incidence
FORECAST_NODES = 3           # rows of forecast.png: the nodes whose test truth varies most
HARD_QUANTILE = 0.95         # the "hard" window: this quantile of a node's window errors (the worst is often a fault)
DEFAULT_UNITS = "data units"


def write_plots(out: Path, model, data, test: dict, history: list[dict], baselines: dict, loss: str) -> list[Path]:
    """Write the run's plots into ``out``: ``test`` is :func:`~sthfast.evaluation.evaluate_windows`'
    result on ``data.test`` with its predictions, ``baselines`` the fitted baselines, ``loss`` the
    training loss's name. Returns the plots' paths."""
    units = data.series.units or DEFAULT_UNITS
    scale, time_unit = horizon_time(data.calendar.step_seconds, data.test.pred_len)
    paths = [out / name for name in PLOTS]
    _forecast(paths[0], data, test, baselines, units, scale, time_unit)
    _error_by_horizon(paths[1], test["metrics"], units, scale, time_unit)
    _training_curves(paths[2], history, units, loss)
    _hypergraph(paths[3], model)
    return paths


def horizon_time(step_seconds: int, steps: int) -> tuple[float, str]:
    """``(length of a step in the unit, unit)`` to draw ``steps`` steps of ``step_seconds`` in:
    minutes up to two hours, hours up to three days, else days."""
    span = step_seconds * steps
    for unit, seconds, limit in (("minutes", 60, 2 * 3600), ("hours", 3600, 3 * 86400)):
        if span <= limit:
            return step_seconds / seconds, unit
    return step_seconds / 86400, "days"


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def best_baseline(metrics: dict) -> str:
    """The baseline with the lowest test MAE over all steps."""
    return min((name for name in metrics if name != "model"), key=lambda n: metrics[n].result()["all"]["mae"])


def window_errors(predictions: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """``[W, N]`` mean absolute error of each window and node over its valid (finite) targets,
    NaN where a window has none; ``predictions`` and ``truth`` ``[W, H, N]``."""
    err = (predictions - truth).abs().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                        # windows with no target
        return np.nanmean(err, axis=1)


def _forecast(path: Path, data, test: dict, baselines: dict, units: str, scale: float, time_unit: str) -> None:
    """For the nodes whose test truth varies most: a typical window (the node's median window
    error) and a hard one (its ``HARD_QUANTILE`` error), input, truth, the model and the best
    baseline, against the time from the forecast start."""
    dataset, predictions = data.test, test["predictions"]
    windows = torch.arange(len(dataset))
    truth = torch.cat([dataset.batch(chunk)[1] for chunk in windows.split(256)])   # [W, H, N]
    errors = window_errors(predictions, truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nan_to_num(np.nanstd(truth[:, 0].numpy(), axis=0), nan=-1.0)
    nodes = [n for n in np.argsort(-spread) if np.isfinite(errors[:, n]).any()][:FORECAST_NODES]
    baseline = best_baseline(test["metrics"])
    mean, std = data.target_scale()
    t_in = np.arange(-dataset.seq_len + 1, 1) * scale
    t_out = np.arange(1, dataset.pred_len + 1) * scale
    fig, axes = plt.subplots(max(len(nodes), 1), 2, figsize=(11, 2.6 * max(len(nodes), 1)), squeeze=False)
    for row, n in enumerate(nodes):
        finite = np.flatnonzero(np.isfinite(errors[:, n]))
        ranked = finite[np.argsort(errors[finite, n], kind="stable")]
        picks = {"typical window (median error)": ranked[(len(ranked) - 1) // 2],
                 f"hard window ({HARD_QUANTILE:.0%} quantile error)": ranked[int(HARD_QUANTILE * (len(ranked) - 1))]}
        for ax, (kind, w) in zip(axes[row], picks.items()):
            x, y, start = dataset.batch(torch.tensor([int(w)]))
            history = (x[0, :, :, data.target_feature] * std + mean)[:, n].numpy()
            base = baselines[baseline](x, start, dataset.pred_len)[0, :, n].numpy()
            ax.plot(t_in, history, color="gray", label="input")
            ax.plot(t_out, y[0, :, n].numpy(), color="black", marker=".", label="truth")
            ax.plot(t_out, predictions[w, :, n].numpy(), color="tab:red", label="STH-SepNet")
            ax.plot(t_out, base, color="tab:blue", linestyle="--", label=baseline)
            ax.axvline(0, color="lightgray", linewidth=0.8)
            ax.set_title(f"{_node_name(data.series, n)}: {kind}, MAE {errors[w, n]:.2f} {units}\n"
                         f"forecast from {_time_of(data, int(start[0]) + dataset.seq_len)}", fontsize=9)
            ax.set_ylabel(units)
    for ax in axes[-1]:
        ax.set_xlabel(f"{time_unit} from the forecast start")
    axes[0, 0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _node_name(series, n: int) -> str:
    ids = series.node_ids
    return f"node {n}" + (f" (id {ids[n]})" if ids is not None else "")


def _time_of(data, step: int) -> str:
    """The step's timestamp (to the minute), or its index when the data has none."""
    stamps = data.series.timestamps
    return str(stamps[step].astype("datetime64[m]")).replace("T", " ") if stamps is not None else f"step {step}"


def _error_by_horizon(path: Path, metrics: dict, units: str, scale: float, time_unit: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, m in metrics.items():
        mae = m.mae_by_step()
        ax.plot(np.arange(1, len(mae) + 1) * scale, mae, label="STH-SepNet" if name == "model" else name,
                marker=".", linewidth=2.5 if name == "model" else 1.2)
    ax.set_xlabel(f"forecast horizon ({time_unit} ahead)")
    ax.set_ylabel(f"test MAE ({units})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def _training_curves(path: Path, history: list[dict], units: str, loss: str) -> None:
    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [r["train_loss"] for r in history], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel(f"train loss (masked {'Huber' if loss == 'huber' else loss.upper()}, scaled units)")
    right.plot(epochs, [r["val_mae"] for r in history], marker="o", color="tab:orange")
    right.set_xlabel("epoch")
    right.set_ylabel(f"validation MAE ({units})")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    _save(fig, path)


def _hypergraph(path: Path, model) -> None:
    """The learned (static) hypergraph: how many hyperedges each node belongs to, the membership
    weights, and each hyperedge's effective order (``exp`` of its weights' entropy; one per
    centre node)."""
    spatial = getattr(model, "spatial", None)
    hyper = getattr(spatial, "hypergraph", None)
    if hyper is None or hyper.mode == "dynamic" or model.config.num_nodes > MAX_HYPERGRAPH_NODES:
        fig, ax = plt.subplots(figsize=(8, 2))
        ax.axis("off")
        ax.text(0.0, 0.5, "no static hypergraph to draw (hypergraph='none' or 'dynamic', "
                f"or N > {MAX_HYPERGRAPH_NODES})", fontsize=9)
        _save(fig, path)
        return
    with torch.no_grad():
        z = hyper.node_features(None).float().cpu()
        incidence = reference.knn_hypergraph(z, hyper.k, binary=hyper.mode == "binary",
                                             temperature=_on_cpu(hyper.temperatures())).numpy()
    edges = incidence[:, incidence.sum(0) > 0]                                   # [N, M]
    counts = (edges > 0).sum(1)
    weights = edges[edges > 0]
    order = model.config.hyper_order
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.8))
    left.hist(counts, bins=np.arange(counts.min(), counts.max() + 2) - 0.5, color="tab:blue")
    left.set_xlabel("hyperedges a node belongs to")
    left.set_ylabel("nodes")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_title(f"{edges.shape[1]} distinct hyperedges over {edges.shape[0]} nodes (k={hyper.k})", fontsize=9)
    if hyper.mode == "binary":
        for ax in (middle, right):
            ax.axis("off")
        middle.text(0.0, 0.5, "binary incidence: every membership weight is 1\nand every hyperedge has "
                    f"order {hyper.k}", fontsize=9)
    else:
        middle.hist(weights, bins=40, color="tab:green")
        middle.axvline(1 / hyper.k, color="gray", linestyle=":", label="1/k (even spread)")
        middle.set_xlabel("membership weight (a hyperedge's weights sum to 1)")
        middle.set_ylabel("memberships")
        middle.legend(fontsize=8)
        middle.set_title("membership weights", fontsize=9)
        members = np.sort(edges.T, axis=1)[:, -hyper.k:]                           # [M, k]
        effective = reference.effective_order(torch.from_numpy(members / members.sum(1, keepdims=True))).numpy()
        right.hist(effective, bins=np.linspace(1, hyper.k, 25), color="tab:purple")
        right.set_xlabel(f"effective order (1: weight on the centre; {hyper.k}: even)")
        right.set_ylabel("hyperedges (one per centre node)")
        right.set_title(f"effective order, {order} order (median {np.median(effective):.2f})", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _on_cpu(value):
    """A number as is, a tensor detached as float32 on the CPU (where the plots compute)."""
    return value.detach().float().cpu() if isinstance(value, torch.Tensor) else value
