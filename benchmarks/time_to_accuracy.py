"""Time to accuracy: the best validation MAE a model has reached after so many seconds of wall-clock
time, for the defaults of ``sthfast train`` and for BasicTS's STID (the model users pick for speed),
on the same machine, split, scaler, windows and masked metric, the runs of the two alternating.

    python benchmarks/time_to_accuracy.py [--budget 300] [--rounds 1] [--datasets los-loop,nycbike-out]

Each run is a fresh process, timed from its start (imports, data, model and all included) to the
end of each epoch's validation: ``sthfast train`` with its defaults, stopped by SIGTERM at the
budget (its epochs read from ``log.jsonl`` as they appear), and STID trained here as BasicTS's
traffic recipe does (Adam 2e-3, weight decay 1e-4, masked MAE on the original scale, batch 32,
its traffic configuration: ``peers.stid``) on the windows of :func:`sthfast.data.prepare`.
Writes ``time_to_accuracy.json`` and ``time_to_accuracy.png`` beside this file and prints the
table of ``RESULTS.md`` (best validation MAE within 30, 60, 120 and 300 s). Needs BasicTS
(``peers.INSTALL``) and, for NYCBIKE1-TAIL, ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
CHECKPOINTS = (30, 60, 120, 300)
# name -> (title, sthfast train's data flags, masked zeros, steps per day)
DATASETS = {
    "los-loop": ("LOS-LOOP, standard protocol (12 -> 12, zeros masked)",
                 ["--data", "embedded", "--protocol", "standard"], True, 288),
    "nycbike-out": ("NYCBIKE1-TAIL departures (12 -> 12)",
                    ["--data", str(SHARED / "NYCBIKE1-TAIL" / "nycbike1_tail.npz"), "--protocol", "standard",
                     "--no-zeros-missing", "--target-feature", "0"], False, 24),
}


def run_sthfast(dataset: str, budget: float) -> list[tuple[float, float]]:
    """``[(seconds, val MAE)]`` of ``sthfast train``'s defaults on ``dataset``, stopped at ``budget``."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "run" / "log.jsonl"
        start = time.time()
        process = subprocess.Popen([sys.executable, "-m", "sthfast", "train", *DATASETS[dataset][1], "--no-plots",
                                    "--out", str(Path(tmp) / "run")], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        seen: list[tuple[float, float]] = []
        while process.poll() is None and time.time() - start < budget:
            time.sleep(0.1)
            if log.exists():
                lines = log.read_text().splitlines()
                seen += [(time.time() - start, json.loads(line)["val_mae"]) for line in lines[len(seen):]]
        process.send_signal(signal.SIGTERM)
        process.wait()
        return seen


def run_stid(dataset: str, budget: float) -> list[tuple[float, float]]:
    """The same in a fresh process (this script with ``--stid``), read from its stdout."""
    done = subprocess.run([sys.executable, __file__, "--stid", dataset, "--budget", str(budget),
                           "--start", repr(time.time())], capture_output=True, text=True, timeout=budget + 600)
    if done.returncode:
        sys.exit(f"STID on {dataset} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [(r["seconds"], r["val_mae"]) for r in records if r["seconds"] <= budget]


def train_stid(dataset: str, budget: float, start: float) -> None:
    """STID on ``dataset``'s windows until ``budget`` seconds after ``start`` (the wall-clock time
    its parent started this process): one JSON line per epoch on stdout, ``seconds`` since then."""
    import torch

    from sthfast import TrainConfig
    from sthfast.data import prepare
    from sthfast.data.calendar import calendar
    from sthfast.evaluation import evaluate_windows

    sys.path.insert(0, str(HERE))
    from peers import RECIPE, WindowForecaster, stid_model, train_epoch

    flags = DATASETS[dataset][1]
    value = lambda flag, default: flags[flags.index(flag) + 1] if flag in flags else default
    zeros_missing, per_day = DATASETS[dataset][2], DATASETS[dataset][3]
    tc = TrainConfig(data=value("--data", "embedded"), protocol="standard", zeros_missing=zeros_missing)
    series = tc.read_series()
    data = prepare(series, 12, 12, tc.split_fractions(), int(value("--target-feature", 0)),
                   time_features=("time_of_day", "day_of_week"), cal=calendar(series, tc.steps_per_day))
    torch.manual_seed(tc.seed)
    forecaster = WindowForecaster(stid_model(series.num_nodes, 12, 12, per_day), int(value("--target-feature", 0)))
    optimizer = torch.optim.Adam(forecaster.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    generator = torch.Generator().manual_seed(tc.seed)
    epoch = 0
    while time.time() - start < budget:
        train_epoch(forecaster, optimizer, data, zeros_missing, generator)
        val = evaluate_windows(forecaster, data.val, data, zeros_missing, 64, torch.device("cpu"))
        epoch += 1
        print(json.dumps({"epoch": epoch, "seconds": time.time() - start,
                          "val_mae": val["metrics"]["model"].result()["all"]["mae"]}), flush=True)


def best_within(curve: list[tuple[float, float]], seconds: float) -> float:
    return min((mae for t, mae in curve if t <= seconds), default=math.nan)


def table(result: dict) -> str:
    lines = ["| data | model | epochs in the budget | " + " | ".join(f"best val MAE by {s} s" for s in CHECKPOINTS)
             + " |", "|---|---|---:|" + "---:|" * len(CHECKPOINTS)]
    for dataset, models in result["curves"].items():
        for model, curve in models.items():
            cells = [f"{best_within(curve, s):.3f}" if s <= result["budget_s"] and not math.isnan(best_within(curve, s))
                     else "-" for s in CHECKPOINTS]
            lines.append(f"| {DATASETS[dataset][0]} | {model} | {len(curve)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result["curves"]), figsize=(6 * len(result["curves"]), 4), squeeze=False)
    for ax, (dataset, models) in zip(axes[0], result["curves"].items()):
        for model, curve in models.items():
            best = [min(m for _, m in curve[: i + 1]) for i in range(len(curve))]
            ax.step([t for t, _ in curve], best, where="post", marker=".", label=model)
        ax.set_xlabel("wall-clock seconds from the process start")
        ax.set_ylabel("best validation MAE so far")
        ax.set_title(DATASETS[dataset][0], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--stid", help=argparse.SUPPRESS)           # the STID child process
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)  # its parent's clock at its start
    parser.add_argument("--out", default=str(HERE / "time_to_accuracy"), help="JSON and PNG path, less suffix")
    args = parser.parse_args()
    if args.stid:
        train_stid(args.stid, args.budget, args.start)
        return
    sys.path.insert(0, str(HERE))
    from peers import INSTALL, have_basicts

    if not have_basicts():
        sys.exit(f"needs BasicTS: {INSTALL}")
    curves: dict[str, dict[str, list]] = {}
    for dataset in args.datasets.split(","):
        curves[dataset] = {}
        for model, run in (("sthfast train (defaults)", run_sthfast), ("BasicTS STID", run_stid)):
            curves[dataset][model] = run(dataset, args.budget)
            print(f"{dataset} {model}: {len(curves[dataset][model])} epochs, best val MAE "
                  f"{best_within(curves[dataset][model], args.budget):.3f}", flush=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True, text=True)
    result = {"budget_s": args.budget, "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
              "commit": commit.stdout.strip() or "unknown",
              "command": "python benchmarks/time_to_accuracy.py " + " ".join(sys.argv[1:]), "curves": curves}
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, Path(args.out + ".png"))
    print(table(result))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
