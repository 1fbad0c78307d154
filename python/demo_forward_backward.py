"""Forward/backward demo of the default STH-SepNet on the embedded real dataset (LOS-LOOP).

Trains the default model (embedded MiniLM backbone with LoRA, adaptive hypergraph) for a few Adam
steps on 48 -> 48 windows of the first 70 % of the week, then reports the validation MAE in mph
beside the last-value baseline on the same windows. It shows the model API on raw tensors; the
training job with checkpoints, all baselines and plots is `sthfast train`. When a few steps do not
beat the baseline, the demo says so.

    python python/demo_forward_backward.py --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from tqdm import tqdm

from sthfast import STHSepNet, STHSepNetConfig
from sthfast.data import load_embedded


def windows(series: np.ndarray, starts: np.ndarray, seq_len: int, pred_len: int):
    """``series[T, N]`` -> inputs ``[B, seq_len, N]`` and targets ``[B, pred_len, N]``."""
    x = np.stack([series[s:s + seq_len] for s in starts])
    y = np.stack([series[s + seq_len:s + seq_len + pred_len] for s in starts])
    return torch.from_numpy(x), torch.from_numpy(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="Adam steps (default 20)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    speed = load_embedded()["data"]                                   # [2016, 207] mph
    n_train, n_val = int(len(speed) * 0.7), int(len(speed) * 0.1)
    mean, std = speed[:n_train].mean(0), speed[:n_train].std(0) + 1e-6
    scaled = ((speed - mean) / std).astype(np.float32)

    config = STHSepNetConfig(num_nodes=speed.shape[1], seq_len=48, pred_len=48)
    model = STHSepNet(config)
    counts = model.parameter_counts()
    print(f"LOS-LOOP {speed.shape[0]} steps x {speed.shape[1]} sensors; model parameters: "
          + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    window = config.seq_len + config.pred_len
    train_starts = np.arange(n_train - window + 1)

    step_times = []
    bar = tqdm(range(args.steps), desc="forward+backward", unit="step")
    for _ in bar:
        x, y = windows(scaled, rng.choice(train_starts, args.batch_size), config.seq_len, config.pred_len)
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{args.batch_size / step_times[-1]:.1f}")

    val_starts = np.arange(n_train, n_train + n_val - window + 1, 8)
    x, y = windows(scaled, val_starts, config.seq_len, config.pred_len)
    model.eval()
    with torch.no_grad():
        pred = model(x).numpy() * std + mean
    truth = y.numpy() * std + mean
    last = x[:, -1:].numpy() * std + mean
    model_mae = float(np.abs(pred - truth).mean())
    naive_mae = float(np.abs(last - truth).mean())
    print(f"median forward+backward+step time: {statistics.median(step_times):.3f} s "
          f"(B={args.batch_size}, T=48, N={config.num_nodes})")
    print(f"validation MAE over {len(val_starts)} windows: model {model_mae:.2f} mph, "
          f"last-value baseline {naive_mae:.2f} mph"
          + ("" if model_mae < naive_mae else "  (the model does not beat the baseline yet)"))


if __name__ == "__main__":
    main()
