"""PNG plots of a run: forecast vs truth, error by horizon, training curves, the learned hypergraph."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from . import reference
from .checkpoint import atomic_write

PLOTS = ("forecast.png", "error_by_horizon.png", "training_curves.png", "hypergraph.png")
MAX_HYPERGRAPH_NODES = 2000  # the picture uses the dense reference incidence


def write_plots(out: Path, model, data, test: dict, history: list[dict]) -> list[Path]:
    """Write the run's plots into ``out``; returns their paths."""
    paths = [out / name for name in PLOTS]
    _forecast(paths[0], data, test["predictions"])
    _error_by_horizon(paths[1], test["metrics"])
    _training_curves(paths[2], history)
    _hypergraph(paths[3], model)
    return paths


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _forecast(path: Path, data, predictions: torch.Tensor) -> None:
    """Inputs, truth and forecast of the middle test window for the four most variable nodes."""
    w = len(data.test) // 2
    x, y, start = data.test[w]
    mean, std = data.target_scale()
    history = (x[:, :, data.target_feature] * std + mean).numpy()            # [T, N]
    truth, pred = y.numpy(), predictions[w].numpy()
    nodes = np.argsort(-np.nanstd(truth, axis=0))[:4]
    t_in, t_out = np.arange(-len(history), 0), np.arange(len(truth))
    fig, axes = plt.subplots(len(nodes), 1, figsize=(8, 2.2 * len(nodes)), sharex=True, squeeze=False)
    for ax, n in zip(axes[:, 0], nodes):
        ax.plot(t_in, history[:, n], color="gray", label="input")
        ax.plot(t_out, truth[:, n], color="black", label="truth")
        ax.plot(t_out, pred[:, n], color="tab:red", label="STH-SepNet")
        ax.set_ylabel(f"node {n}")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel(f"steps from the forecast start (test window starting at step {start})")
    fig.tight_layout()
    _save(fig, path)


def _error_by_horizon(path: Path, metrics: dict) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, m in metrics.items():
        mae = m.mae_by_step()
        ax.plot(np.arange(1, len(mae) + 1), mae, label=name, linewidth=2.5 if name == "model" else 1.2)
    ax.set_xlabel("horizon step")
    ax.set_ylabel("test MAE")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def _training_curves(path: Path, history: list[dict]) -> None:
    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [r["train_loss"] for r in history], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss (masked MSE, scaled)")
    right.plot(epochs, [r["val_mae"] for r in history], marker="o", color="tab:orange")
    right.set_xlabel("epoch")
    right.set_ylabel("validation MAE")
    fig.tight_layout()
    _save(fig, path)


def _hypergraph(path: Path, model) -> None:
    """Hyperedge sizes and the node-membership matrix of the learned (static) hypergraph."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    spatial = getattr(model, "spatial", None)
    hyper = getattr(spatial, "hypergraph", None)
    if hyper is None or hyper.mode == "dynamic" or model.config.num_nodes > MAX_HYPERGRAPH_NODES:
        for ax in (left, right):
            ax.axis("off")
        left.text(0.0, 0.5, "no static hypergraph to draw (hypergraph='none' or 'dynamic', "
                  f"or N > {MAX_HYPERGRAPH_NODES})", fontsize=9)
    else:
        with torch.no_grad():
            z = hyper.node_features(None).float().cpu()
            incidence = reference.knn_hypergraph(z, hyper.k, binary=hyper.mode == "binary",
                                                 temperature=_on_cpu(hyper.temperatures())).numpy()
        edges = incidence[:, incidence.sum(0) > 0]                                   # [N, M]
        sizes = (edges > 0).sum(0)
        left.hist(sizes, bins=np.arange(sizes.min(), sizes.max() + 2) - 0.5)
        left.set_xlabel("hyperedge size (nodes)")
        left.set_ylabel("hyperedges")
        left.set_title(f"{edges.shape[1]} hyperedges over {edges.shape[0]} nodes (k={hyper.k})")
        shown = edges[:60][:, (edges[:60] > 0).any(0)]
        image = right.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
        right.set_xlabel("hyperedge")
        right.set_ylabel("node (first 60)")
        right.set_title("membership weights")
        fig.colorbar(image, ax=right)
    fig.tight_layout()
    _save(fig, path)


def _on_cpu(value):
    """A number as is, a tensor detached as float32 on the CPU (where the plots compute)."""
    return value.detach().float().cpu() if isinstance(value, torch.Tensor) else value
