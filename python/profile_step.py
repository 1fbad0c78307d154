"""Where one training step of the default model spends its time: the median step (forward, backward,
Adam) over random inputs, then torch.profiler's top ops by self time over one more step.

    python python/profile_step.py [--nodes 207] [--length 12] [--backend auto] [--bf16] [--rows 15]

``--length 12`` is the standard protocol (patches of 4, stride 2), 48 the paper's (16, 8). The op
names are ATen's (``aten::convolution_backward`` ...) and ours (``sthfast::mixprop_forward`` ...).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from sthfast import STHSepNet, STHSepNetConfig


def training_step(nodes: int, length: int, backend: str, batch: int, bf16: bool):
    """A no-argument training step of the default model, ``length -> length`` steps."""
    torch.manual_seed(0)
    patches = dict(patch_len=4, stride=2) if length < 16 else {}
    model = STHSepNet(STHSepNetConfig(num_nodes=nodes, seq_len=length, pred_len=length, backend=backend,
                                      **patches))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.randn(batch, length, nodes, 1), torch.randn(batch, length, nodes)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = model(x)
        loss = (pred.float() - y).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=207, help="N (207: LOS-LOOP / METR-LA)")
    parser.add_argument("--length", type=int, default=12, help="input and forecast steps")
    parser.add_argument("--backend", default="auto", help="the model's backend (auto, reference, ...)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--bf16", action="store_true", help="under CPU bfloat16 autocast, as --bf16 trains")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after two warm-up steps")
    parser.add_argument("--rows", type=int, default=15, help="ops listed")
    args = parser.parse_args()
    if min(args.nodes, args.length, args.batch, args.repeats, args.rows) < 1:
        parser.error("--nodes, --length, --batch, --repeats and --rows must be at least 1")
    step = training_step(args.nodes, args.length, args.backend, args.batch, args.bf16)
    step(), step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(f"N = {args.nodes}, {args.length} -> {args.length}, B = {args.batch}, backend {args.backend}"
          f"{', bf16 autocast' if args.bf16 else ''}, {torch.get_num_threads()} threads: "
          f"median step {statistics.median(times) * 1e3:,.0f} ms over {args.repeats}")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                    max_name_column_width=48))


if __name__ == "__main__":
    main()
