"""Training samples/s of ``sthfast train`` in P = 1, 2, ... processes (DDP under torchrun) at the
same global batch.

Every case trains the same model on the same data for ``--epochs`` epochs of ``--max-batches``
global batches in a fresh run folder, and reports the training samples/s of its last epoch from
``log.jsonl`` (the first epoch holds the warm-up; validation and test are not timed): the median
of ``--repeats`` rounds that interleave the process counts. On the CPU
every case gets the same cores in all (``--threads`` = cores / P per process, gloo); on CUDA each
process gets one GPU (NCCL). Writes a JSON file and prints a table::

    python benchmarks/ddp_throughput.py                                  # P = 1, 2 on this CPU
    python benchmarks/ddp_throughput.py --device cuda --processes 1,2,4  # a machine with 4 GPUs

Flags after ``--`` go to every ``sthfast train`` (e.g. a smaller model for a quick check).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from accuracy_campaign import commit, cpu_name


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts P")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU cores shared by the P processes")
    parser.add_argument("--data", default="embedded", help="series file ('embedded': LOS-LOOP)")
    parser.add_argument("--protocol", default="standard", choices=("standard", "paper"))
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch (P must divide it)")
    parser.add_argument("--max-batches", type=int, default=30, help="global batches per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per case (the last one is reported)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the P values, interleaved (medians "
                                                               "reported)")
    parser.add_argument("--json", default="benchmarks/ddp_throughput.json", help="where the results go")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then more `sthfast train` flags")
    args = parser.parse_args(argv)
    args.processes = [int(p) for p in args.processes.split(",")]
    args.train_flags = [f for f in args.train_flags if f != "--"]
    for p in args.processes:
        if args.batch_size % p or (args.device == "cpu" and args.cores < p):
            parser.error(f"P={p}: it must divide --batch-size {args.batch_size} and, on the CPU, be at most "
                         f"--cores {args.cores}")
    return args


def command(args: argparse.Namespace, processes: int, out: Path) -> list[str]:
    """The ``sthfast train`` of one case: plainly for P = 1, under torchrun for P > 1."""
    launcher = [sys.executable, "-m", "sthfast"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "-m", "sthfast"]
    flags = ["train", "--data", args.data, "--protocol", args.protocol, "--batch-size", str(args.batch_size),
             "--max-batches", str(args.max_batches), "--epochs", str(args.epochs), "--device", args.device,
             "--no-plots", "--out", str(out)]
    if args.device == "cpu":
        flags += ["--threads", str(args.cores // processes)]
    return launcher + flags + args.train_flags


def run_case(args: argparse.Namespace, processes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        threads = args.cores // processes if args.device == "cpu" else None
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads or 1))
        cmd = command(args, processes, out)
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"P={processes} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    return {"processes": processes, "threads_per_process": threads, "samples_per_s": last["samples_per_s"],
            "train_seconds": last["train_seconds"], "wall_seconds": time.perf_counter() - start,
            "command": " ".join(cmd).replace(str(out), "RUN")}


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    rounds = [[run_case(args, p) for p in args.processes] for _ in range(args.repeats)]   # interleaved
    cases = []
    for i, _ in enumerate(args.processes):
        runs = [r[i] for r in rounds]
        cases.append({**runs[0], "samples_per_s": statistics.median(r["samples_per_s"] for r in runs),
                      "samples_per_s_runs": [r["samples_per_s"] for r in runs],
                      "train_seconds": statistics.median(r["train_seconds"] for r in runs)})
    base = cases[0]["samples_per_s"]
    for case in cases:
        case["vs_first"] = case["samples_per_s"] / base
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name()
    result = {"device": args.device, "device_name": device, "cores": args.cores, "torch": torch.__version__,
              "global_batch": args.batch_size, "batches_per_epoch": args.max_batches, "repeats": args.repeats,
              "date": datetime.date.today().isoformat(), "commit": commit(), "cases": cases}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'P':>3} {'threads/process':>16} {'samples/s':>10} {'vs P=' + str(cases[0]['processes']):>8}")
    for case in cases:
        print(f"{case['processes']:>3} {str(case['threads_per_process'] or '-'):>16} {case['samples_per_s']:10.1f} "
              f"{case['vs_first']:8.2f}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
