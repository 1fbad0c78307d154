"""The accuracy campaign: which runs, with which flags, on which data; runs them one after another.

    python benchmarks/accuracy_campaign.py [--runs runs/accuracy] [--only PATTERN] [--list]

Every run is ``sthfast train`` (or, for the peer, ``benchmarks/stid_peer.py`` with the same flags) into
``RUNS/<dataset>/<variant>-seed<S>``; its metrics.json, with the
commit and command, is kept in ``benchmarks/accuracy_results/<dataset>/<variant>-seed<S>.json``
(committed, so results outlive the run folders; a run with a result is skipped, so the campaign
can be stopped and continued; delete results to re-run them after a change of defaults).
``benchmarks/accuracy_table.py`` renders ACCURACY.md from the results. Run nothing else
meanwhile: two processes on 2 cores slow each other down by up to 10x.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SHARED = "../shared/data"
RESULTS = Path(__file__).with_name("accuracy_results")


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    args: tuple[str, ...]       # data and protocol flags
    units: str


# Count data (bikes, boardings) keeps its zeros as readings (--no-zeros-missing); the weekly
# chickenpox series takes a year of 52 weeks as the calendar's "day", so the seasonal profile
# and the seasonal baseline are by week of the year.
DATASETS = (
    Dataset("los-loop-paper", "LOS-LOOP, paper protocol (48 -> 48)",
            ("--data", "embedded", "--protocol", "paper", "--epochs", "2"), "mph"),
    Dataset("los-loop-standard", "LOS-LOOP, standard protocol (12 -> 12, zeros masked)",
            ("--data", "embedded", "--protocol", "standard", "--epochs", "5", "--patience", "3"), "mph"),
    Dataset("nycbike-out-12", "NYCBIKE1-TAIL departures, 12 -> 12",
            ("--data", f"{SHARED}/NYCBIKE1-TAIL/nycbike1_tail.npz", "--protocol", "standard",
             "--no-zeros-missing", "--target-feature", "0", "--epochs", "6", "--patience", "3"), "trips / h"),
    Dataset("nycbike-in-12", "NYCBIKE1-TAIL arrivals, 12 -> 12",
            ("--data", f"{SHARED}/NYCBIKE1-TAIL/nycbike1_tail.npz", "--protocol", "standard",
             "--no-zeros-missing", "--target-feature", "1", "--epochs", "6", "--patience", "3"), "trips / h"),
    Dataset("nycbike-out-1", "NYCBIKE1-TAIL departures, 12 -> 1",
            ("--data", f"{SHARED}/NYCBIKE1-TAIL/nycbike1_tail.npz", "--protocol", "standard",
             "--no-zeros-missing", "--target-feature", "0", "--pred-len", "1", "--epochs", "6",
             "--patience", "3"), "trips / h"),
    Dataset("nycbike-in-1", "NYCBIKE1-TAIL arrivals, 12 -> 1",
            ("--data", f"{SHARED}/NYCBIKE1-TAIL/nycbike1_tail.npz", "--protocol", "standard",
             "--no-zeros-missing", "--target-feature", "1", "--pred-len", "1", "--epochs", "6",
             "--patience", "3"), "trips / h"),
    Dataset("montevideo-bus", "MONTEVIDEO-BUS boardings, 12 -> 12",
            ("--data", f"{SHARED}/MONTEVIDEO-BUS/montevideo_bus.npz", "--protocol", "standard",
             "--no-zeros-missing", "--epochs", "12", "--patience", "3"), "boardings / h"),
    Dataset("chickenpox", "CHICKENPOX-HU, 4 weeks -> 1",
            ("--data", f"{SHARED}/CHICKENPOX-HU/chickenpox_hu.npz", "--protocol", "standard",
             "--no-zeros-missing", "--seq-len", "4", "--pred-len", "1", "--patch-len", "2", "--stride", "1",
             "--steps-per-day", "52", "--epochs", "60", "--patience", "10"), "z-score"),
)

VARIANTS = {
    "full": ("STH-SepNet (defaults)", ()),
    "spatial_only": ("spatial_only (no LLM)", ("--fusion", "spatial_only")),
    "mae_loss": ("MAE loss", ("--loss", "mae")),
    "mse_loss": ("MSE loss (the authors')", ("--loss", "mse")),
    "huber_loss": ("Huber loss (delta 1)", ("--loss", "huber")),
    "huber_half": ("Huber loss (delta 0.5)", ("--loss", "huber", "--huber-delta", "0.5")),
    "no_seasonal": ("without the seasonal residual", ("--no-seasonal-residual",)),
    "with_seasonal": ("with the seasonal residual", ("--seasonal-residual",)),
    "temporal_only": ("temporal_only (LLM only)", ("--fusion", "temporal_only")),
    "hyper_none": ("hypergraph none", ("--hypergraph", "none")),
    "hyper_binary": ("hypergraph binary (the authors')", ("--hypergraph", "binary")),
    "hyper_dynamic": ("hypergraph dynamic", ("--hypergraph", "dynamic")),
    "adaptive_order": ("adaptive hyperedge order (k_max 6)", ("--hyper-order", "adaptive", "--hyper-k", "6")),
    "time_embedding": ("+ time embeddings (d = 16)", ("--time-embedding-dim", "16")),
    "temporal_groups": ("LLM over 4 regional series", ("--temporal-groups", "4")),
    "gate_half": ("gate starting at 0.5 (the paper's)", ("--gate-init", "0.5")),
    "identity_head": ("+ identity head (d = 32, as STID)", ("--identity-head-dim", "32")),
    "original_units": ("loss in the data's units", ("--loss-units", "original")),
    "converged": ("defaults, up to 30 epochs (patience 5)", ("--epochs", "30", "--patience", "5")),
    "stid": ("peer: BasicTS STID (its own recipe)", ()),           # benchmarks/stid_peer.py, not sthfast train
}
PEERS = {"stid": "benchmarks/stid_peer.py"}       # variant -> the script that trains it on the same flags
SEEDS = (1, 2, 3)
# the seasonal residual is 'auto' (off on the weekly chickenpox series and on LOS-LOOP 12 -> 12, where
# the last reading beats the profile over the horizon): its ablation flips it
FLIP_SEASONAL = {d: "no_seasonal" for d in (
    "los-loop-paper", "nycbike-out-12", "nycbike-in-12", "nycbike-out-1", "nycbike-in-1", "montevideo-bus")
} | {d: "with_seasonal" for d in ("los-loop-standard", "chickenpox")}

# In this order, each run skipped once its result is kept: three seeds of the defaults everywhere;
# one seed of spatial_only (the LLM's worth), of the MSE loss and of the seasonal residual flipped
# everywhere (the defaults are chosen on validation), then seeds 2 and 3 of spatial_only and of
# the flip (the two comparisons the targets rest on) after the single-seed ablations, and of the MSE
# loss where its one seed won validation; the Huber loss where neither MAE nor MSE won
# everywhere, and the MAE loss where --loss auto picks Huber; the seasonal flip over 3 seeds where
# the rule turned it off after the residual had been the default; every other ablation on the two
# cheapest datasets, then on LOS-LOOP's standard protocol; last, seeds 2 and 3 of those, the
# hypergraph modes and the adaptive order first (what the spatial stream's design rests on).
CHEAP = ("chickenpox", "nycbike-out-12")
TWELVE_STEPS = ("los-loop-standard", "nycbike-out-12", "nycbike-in-12", "montevideo-bus")   # 12 -> 12
HYPERGRAPH = ("hyper_none", "hyper_binary", "hyper_dynamic", "adaptive_order")
OTHERS = ("temporal_only", *HYPERGRAPH, "time_embedding", "temporal_groups", "gate_half")
PLAN: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    *((d.name, "full", SEEDS) for d in DATASETS),
    *((d.name, "spatial_only", (1,)) for d in DATASETS),
    *((d.name, "mse_loss", (1,)) for d in DATASETS),
    *((d.name, FLIP_SEASONAL[d.name], (1,)) for d in DATASETS),
    *((name, v, (1,)) for name in CHEAP for v in ("huber_loss", "huber_half")),
    ("montevideo-bus", "mae_loss", SEEDS),           # auto picks Huber there: MAE is the ablation
    ("los-loop-standard", "with_seasonal", SEEDS),   # the seasonal rule's one change of mind: 3 seeds
    *((name, v, (1,)) for name in (*CHEAP, "los-loop-standard") for v in OTHERS),
    *((d.name, "spatial_only", SEEDS[1:]) for d in DATASETS),
    *((d.name, FLIP_SEASONAL[d.name], SEEDS[1:]) for d in DATASETS),
    ("nycbike-out-1", "mse_loss", SEEDS[1:]),       # the one loss whose single seed beat the defaults
    *((name, v, SEEDS[1:]) for v in (*HYPERGRAPH, *(v for v in OTHERS if v not in HYPERGRAPH))
      for name in (*CHEAP, "los-loop-standard")),
    *((d.name, "stid", SEEDS) for d in DATASETS),     # the peer, on every dataset (issue 31)
    *((name, "identity_head", SEEDS) for name in TWELVE_STEPS),   # STID's lesson where STID wins
    *((name, "original_units", SEEDS) for name in TWELVE_STEPS),  # the loss weighed as the metrics are
    *((name, "converged", SEEDS) for name in ("los-loop-standard", "nycbike-out-12")),   # trained as STID is
    ("montevideo-bus", "converged", (1,)),          # the largest gap, capped at 12 epochs: one seed first
)


def runs_of_plan():
    """``(dataset, variant, seed, folder name)`` of every planned run, in order, each once (the plan
    names some twice: LOS-LOOP standard's seasonal flip is both its flip and its 3-seed re-run)."""
    seen = set()
    for dataset, variant, seeds in PLAN:
        for seed in seeds:
            name = f"{dataset}/{variant}-seed{seed}"
            if name not in seen:
                seen.add(name)
                yield dataset, variant, seed, name


def command(dataset: str, variant: str, seed: int | str, out: Path) -> list[str]:
    """``sthfast train`` with the dataset's and the variant's flags; a peer's script (:data:`PEERS`)
    with the same flags, which it reads for the data and protocol."""
    spec = next(d for d in DATASETS if d.name == dataset)
    program = ["python", PEERS[variant]] if variant in PEERS else ["sthfast", "train"]
    return [*program, *spec.args, *VARIANTS[variant][1], "--seed", str(seed), "--out", str(out), "--no-plots"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def commit() -> str:
    """The short hash of HEAD, with ``+`` when the tree has uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout
    dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    return git("rev-parse", "--short", "HEAD").strip() + ("+" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/accuracy", help="folder of the run folders")
    parser.add_argument("--only", default="*", help="glob over 'dataset/variant-seedS' (default: all)")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the kept results")
    parser.add_argument("--list", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    runs, results = Path(args.runs), Path(args.results)
    for dataset, variant, seed, name in runs_of_plan():
        if not fnmatch.fnmatch(name, args.only):
            continue
        out = runs / name
        cmd = command(dataset, variant, seed, out)
        if args.list:
            print(shlex.join(cmd))
            continue
        result = results / f"{name}.json"
        if result.is_file():
            continue
        if out.exists():                                       # an interrupted run: start it again
            subprocess.run(["rm", "-rf", str(out)], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"{name}: {shlex.join(cmd)}", flush=True)
        with open(runs / f"{name}.log", "w") as log:
            run = [sys.executable, *cmd[1:]] if cmd[0] == "python" else cmd
            done = subprocess.run(run, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            print(f"{name}: failed ({done.returncode}), see {runs / name}.log", file=sys.stderr, flush=True)
            continue
        metrics = json.loads((out / "metrics.json").read_text())
        metrics["campaign"] = {"commit": commit(), "command": shlex.join(cmd),
                                   "date": datetime.date.today().isoformat(),
                               "machine": f"{cpu_name()}, {os.cpu_count()} cores"}
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_text(json.dumps(metrics, indent=1) + "\n")


if __name__ == "__main__":
    main()
