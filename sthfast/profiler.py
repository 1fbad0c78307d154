"""Where the spatial stream's time goes: per-stage latency of STH-SepNet's forward pass (node
features, neighbour search, hyperedge structure, the hypergraph MixProp and its node -> hyperedge
(v2e) and hyperedge -> node (e2v) products, the graph branch, the temporal convolutions, fusion),
for streaming single-step inference (B = 1, one new window; hypergraph rebuilt on every call vs
reused) and a training batch, beside a static-graph model of the same size.

    sthfast profile                        # LOS-LOOP windows (N = 207), 12 -> 12
    sthfast profile --nodes 8600           # synthetic inputs at another size
    sthfast profile --trace trace.json     # also a torch.profiler (Chrome) trace

(``python python/profile_hypergraph.py`` takes the same flags.) Prints a table (median ms per stage
over --repeats calls, share of the forward) and writes a PNG bar chart (--chart). Stages are the
model's ``sthfast.<stage>`` record_function ranges (:mod:`sthfast.profile_stages`); the table checks
that they add up to the measured forward. The fused MixProp (backend ``cpp``) is one call: its
v2e / e2v parts show only with ``--backend sparse`` (or on GPUs, ``triton``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from .cli import add_profile_flags
from .config import STHSepNetConfig
from .model import STHSepNet
from .profile_stages import PREFIX, STAGES, table_rows

SCENARIOS = ("streaming, rebuilt", "streaming, reused", "training batch", "static graph, streaming",
             "static graph, training batch")


def inputs(nodes: int | None, batch: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``x [batch, T, N, 1]`` and an adjacency: LOS-LOOP windows and its road graph by default,
    else synthetic (about three edges per node)."""
    if nodes is None:
        from .data import load_series, prepare  # noqa: PLC0415 (the data only for the default inputs)
        from .data.embedded import embedded_path  # noqa: PLC0415

        data = prepare(load_series(embedded_path()), seq_len, seq_len)
        windows = len(data.train)
        if batch > windows:
            raise ValueError(f"--batch {batch} is more than the {windows} training windows of LOS-LOOP")
        x, _, _ = data.train.batch(torch.arange(batch) * (windows // batch))   # spread over the split
        adjacency = torch.as_tensor(data.series.adjacency, dtype=torch.float32)
        return x, adjacency.to_sparse(), x.shape[2]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, seq_len, nodes, 1, generator=g)
    rows = torch.arange(nodes).repeat_interleave(3)
    cols = torch.randint(0, nodes, (3 * nodes,), generator=g)
    adjacency = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.rand(3 * nodes, generator=g),
                                        (nodes, nodes), check_invariants=True).coalesce()
    return x, adjacency, nodes


def stage_times(model: STHSepNet, x: torch.Tensor, train: bool, rebuild: bool, repeats: int,
                trace: Path | None = None) -> dict[str, float]:
    """Median ms per stage (and ``forward`` / ``backward`` / ``total``) over ``repeats`` calls."""
    model.train(train)
    samples: dict[str, list[float]] = {}
    for i in range(repeats + 1):                                      # call 0 warms up
        if rebuild:                                                   # streaming without reuse
            for module in (model.spatial.hypergraph, model.spatial.graph):
                if module is not None:
                    module.cache.clear()
        with torch.set_grad_enabled(train), profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            y = model(x)
            forward = time.perf_counter() - start
            if train:
                y.square().mean().backward()
                model.zero_grad(set_to_none=True)
            total = time.perf_counter() - start
        if i == 0:
            continue
        if trace is not None and i == repeats:
            prof.export_chrome_trace(str(trace))
        sums: dict[str, float] = {}
        for event in prof.events():
            if event.name.startswith(PREFIX):
                name = event.name[len(PREFIX):]
                sums[name] = sums.get(name, 0.0) + event.cpu_time_total / 1e3   # us -> ms
        sums.update(forward=forward * 1e3, total=total * 1e3)
        if train:
            sums["backward"] = (total - forward) * 1e3
        for name, value in sums.items():
            samples.setdefault(name, []).append(value)
    return {name: statistics.median(values) for name, values in samples.items()}


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'stage (ms, median)':28s}" + "".join(f"{n[:22]:>24s}" for n in results)]
    for label, nested, cells in table_rows(results):
        text = [f"{'-':>24s}" if c is None else f"{c[0]:>14.2f} ({100 * c[1]:5.1f}%)" for c in cells]
        lines.append(f"{('  ' if nested else '') + label:28s}" + "".join(text))
    return "\n".join(lines)


def chart(results: dict[str, dict[str, float]], path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415 (only for the chart)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(10, 0.8 * len(results) + 2))
    cmap = plt.get_cmap("tab20")
    for row, r in enumerate(results.values()):
        left = 0.0
        for j, s in enumerate(STAGES + ("backward",)):
            width = r.get(s, 0.0)
            if width:
                ax.barh(row, width, left=left, color=cmap(j % 20), label=s)
                left += width
    ax.set_yticks(range(len(results)), list(results))
    ax.invert_yaxis()
    ax.set_xlabel("ms (median per call)")
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))                              # one legend entry per stage
    ax.legend(unique.values(), unique.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None, command: str = "sthfast profile") -> dict[str, dict[str, float]]:
    """Parse ``argv``, profile every scenario, print the table, write the chart (and JSON); returns
    scenario -> stage -> median ms. ``command`` is how the JSON says it was run."""
    parser = argparse.ArgumentParser(prog=command, description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_profile_flags(parser)
    return run(parser.parse_args(argv), command + " " + " ".join(argv if argv is not None else sys.argv[1:]))


def run(args: argparse.Namespace, command: str) -> dict[str, dict[str, float]]:
    """The profile for parsed flags (see :func:`sthfast.cli.add_profile_flags`)."""
    for flag in ("batch", "seq_len", "repeats"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.nodes is not None and args.nodes < 4:
        raise ValueError(f"--nodes must be >= 4 (k = 3 neighbours and a graph), got {args.nodes}")
    for flag in ("chart", "trace", "json"):                # before minutes of profiling, not after
        path = getattr(args, flag)
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise ValueError(f"--{flag} {path}: its folder does not exist")
    x, adjacency, n = inputs(args.nodes, args.batch, args.seq_len)
    common = dict(num_nodes=n, seq_len=args.seq_len, pred_len=args.seq_len, patch_len=4, stride=2,
                  backend=args.backend)
    if args.tiny:
        common.update(conv_channels=8, residual_channels=8, skip_channels=8, end_channels=16, layers=1,
                      node_emb_dim=8, d_ff=16, gate_hidden=8)
    results = {}
    for name in SCENARIOS:
        static = name.startswith("static")
        torch.manual_seed(0)
        config = STHSepNetConfig(**common, **(dict(graph="static", hypergraph="none") if static else {}))
        model = STHSepNet(config, adjacency=adjacency if static else None)
        train = "training" in name
        batch = x if train else x[:1]
        trace = Path(args.trace) if args.trace and name == "training batch" else None
        results[name] = stage_times(model, batch, train, rebuild=name.endswith("rebuilt"),
                                    repeats=args.repeats, trace=trace)
    print(f"N = {n}, T = {args.seq_len} -> {args.seq_len}, training batch {args.batch}, backend "
          f"{args.backend}, {torch.get_num_threads()} threads\n")
    print(table(results))
    chart(results, Path(args.chart), f"STH-SepNet forward stages, N = {n}")
    print(f"\nchart: {args.chart}" + (f"; trace: {args.trace}" if args.trace else ""))
    if args.json:
        from . import ops  # noqa: PLC0415

        meta = dict(nodes=n, seq_len=args.seq_len, batch=args.batch, backend=args.backend,
                    propagation=ops.resolve("hypergraph_mixprop", args.backend, x.device),
                    repeats=args.repeats, threads=torch.get_num_threads(), torch=torch.__version__,
                    machine=platform.processor() or platform.machine(), chart=Path(args.chart).name,
                    date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    command=command.strip())
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    return results
