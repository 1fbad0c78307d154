"""bfloat16 autocast against float32 at 12 -> 12: ``sthfast train``'s defaults with ``--bf16`` and
with ``--no-bf16`` on LOS-LOOP (standard protocol, 5 epochs) and NYCBIKE1-TAIL departures (6 epochs,
patience 3, as the accuracy campaign runs them), alternating, one seed: the test MAE / RMSE and the
median training seconds per epoch of each. Writes ``bf16_accuracy.json`` beside this file.

    python benchmarks/bf16_accuracy.py [--seed 2021]

Needs ``../shared/data`` for NYCBIKE1-TAIL. Speed ratios need a quiet machine; bfloat16 pays only
on CPUs with bfloat16 instructions (AMX-BF16 or AVX512-BF16: ``sthfast info``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
RUNS = {
    "los-loop": ["--data", "embedded", "--protocol", "standard", "--epochs", "5"],
    "nycbike-out": ["--data", str(SHARED / "NYCBIKE1-TAIL" / "nycbike1_tail.npz"), "--protocol", "standard",
                    "--no-zeros-missing", "--target-feature", "0", "--epochs", "6", "--patience", "3"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2021)
    args = parser.parse_args()
    results = []
    for dataset, flags in RUNS.items():
        for precision in ("--no-bf16", "--bf16"):
            with tempfile.TemporaryDirectory() as tmp:
                command = [sys.executable, "-m", "sthfast", "train", *flags, precision, "--seed", str(args.seed),
                           "--no-plots", "--out", str(Path(tmp) / "run")]
                start = time.time()
                subprocess.run(command, check=True, capture_output=True)
                summary = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
            test = summary["test"]["model"]["all"]
            record = {"data": dataset, "precision": precision.lstrip("-"), "bf16": summary["bf16"],
                      "test_mae": test["mae"], "test_rmse": test["rmse"], "best_epoch": summary["best_epoch"],
                      "train_seconds_per_epoch": statistics.median(r["train_seconds"] for r in summary["history"]),
                      "wall_seconds": time.time() - start,
                      "command": "sthfast train " + " ".join(flags + [precision, "--seed", str(args.seed)])}
            results.append(record)
            print(json.dumps(record), flush=True)
    (HERE / "bf16_accuracy.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "runs": results},
                                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
