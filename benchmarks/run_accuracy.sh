#!/usr/bin/env bash
# Accuracy on the embedded LOS-LOOP data: STH-SepNet, its spatial_only and temporal_only ablations,
# under both protocols (the naive baselines are evaluated in every run). Then renders ACCURACY.md.
#   bash benchmarks/run_accuracy.sh [RUNS_DIR]      (about 85 minutes on 2 CPU cores; run nothing else meanwhile)
set -euo pipefail
runs=${1:-runs/accuracy}
standard=(--protocol standard --epochs 20 --patience 5)
paper=(--protocol paper --epochs 2)
for fusion in gate spatial_only temporal_only; do
  sthfast train --data embedded "${standard[@]}" --fusion "$fusion" --out "$runs/standard-$fusion" --no-plots
done
for fusion in gate spatial_only temporal_only; do
  sthfast train --data embedded "${paper[@]}" --fusion "$fusion" --out "$runs/paper-$fusion" --no-plots
done
python benchmarks/accuracy_table.py "$runs" > benchmarks/ACCURACY.md
