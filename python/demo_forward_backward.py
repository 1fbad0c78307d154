"""Forward/backward demo of the default STH-SepNet on the embedded real dataset (LOS-LOOP).

Uses the model and data APIs directly (no trainer): a few Adam steps of the default model (embedded
MiniLM backbone with LoRA, adaptive hypergraph) on 48 -> 48 windows of the training split, then the
validation MAE in mph beside the last-value baseline on the same windows. The training job with
checkpoints, every baseline and plots is `sthfast train`. When a few steps do not beat the baseline,
the demo says so.

    python python/demo_forward_backward.py --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm

from sthfast import STHSepNet, STHSepNetConfig
from sthfast.data import load_series, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="Adam steps (default 20)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    data = prepare(load_series("embedded"), seq_len=48, pred_len=48)   # 70/10/20, train-only scaler
    mean, std = data.target_scale()                                      # [N] mph
    config = STHSepNetConfig(num_nodes=data.series.num_nodes, seq_len=48, pred_len=48)
    model = STHSepNet(config)
    print(f"LOS-LOOP {data.series.num_steps} steps x {config.num_nodes} sensors; model parameters: "
          + ", ".join(f"{k} {v:,}" for k, v in model.parameter_counts().items()))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    step_times = []
    bar = tqdm(range(args.steps), desc="forward+backward", unit="step")
    for _ in bar:
        x, y, _ = data.train.batch(torch.randint(len(data.train), (args.batch_size,)))
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), (y - mean) / std)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{args.batch_size / step_times[-1]:.1f}")

    x, y, _ = data.val.batch(torch.arange(0, len(data.val), 8))
    model.eval()
    with torch.no_grad():
        pred = model(x) * std + mean
    last = (x[:, -1:, :, 0] * std + mean).expand_as(y)
    model_mae, naive_mae = float((pred - y).abs().mean()), float((last - y).abs().mean())
    print(f"median forward+backward+step time: {statistics.median(step_times):.3f} s "
          f"(B={args.batch_size}, T=48, N={config.num_nodes})")
    print(f"validation MAE over {len(x)} windows: model {model_mae:.2f} mph, "
          f"last-value baseline {naive_mae:.2f} mph"
          + ("" if model_mae < naive_mae else "  (the model does not beat the baseline yet)"))


if __name__ == "__main__":
    main()
