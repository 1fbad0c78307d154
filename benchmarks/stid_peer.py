"""The peer's row of the accuracy campaign: BasicTS's STID trained on exactly the windows, split,
scaler and masked metrics of ``sthfast train``, by its own recipe (``peers.RECIPE``).

    python benchmarks/stid_peer.py [sthfast train's flags] --seed S --out DIR

The data and protocol flags are ``sthfast train``'s, read by its own parser (``--data``,
``--protocol``, ``--seq-len``, ``--pred-len``, ``--target-feature``, ``--no-zeros-missing``,
``--steps-per-day`` ...), so that the campaign runs the peer with each dataset's flags as they
stand; the flags about our model and its training (``--epochs``, ``--patience``, ``--loss``,
``--lr`` ...) are read and ignored: STID trains as BasicTS trains it (Adam 2e-3, weight decay
1e-4, masked MAE on the original scale, batch 32, up to 100 epochs, stopped after 10 without a
better validation MAE), and the best epoch's weights are tested beside the three baselines.
Writes ``DIR/metrics.json`` with the keys of ``sthfast train``'s (``test``, ``history``,
``best_epoch``, ``epochs_run`` ...), which the campaign keeps and ``accuracy_table.py`` reads.
Needs BasicTS (``peers.INSTALL``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers import INSTALL, RECIPE, WindowForecaster, have_basicts, stid_model, train_epoch  # noqa: E402

from sthfast.baselines import fit_baselines  # noqa: E402
from sthfast.cli import build_parser  # noqa: E402
from sthfast.config import STHSepNetConfig  # noqa: E402
from sthfast.data import prepare  # noqa: E402
from sthfast.data.calendar import calendar  # noqa: E402
from sthfast.evaluation import evaluate_windows, report  # noqa: E402
from sthfast.train_config import PROTOCOLS, TrainConfig  # noqa: E402

EVAL_BATCH = 64


def run(argv: list[str]) -> dict:
    """Train and test STID on the data of ``sthfast train argv``; returns (and writes to the
    ``--out`` folder) the metrics.json."""
    args = vars(build_parser().parse_args(["train", *argv]))
    tc = TrainConfig(**{k: v for k, v in args.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    lengths = {**PROTOCOLS[tc.protocol]["model"],
               **{k: args[k] for k in ("seq_len", "pred_len", "target_feature") if args.get(k) is not None}}
    seq_len, pred_len = lengths["seq_len"], lengths["pred_len"]
    target = lengths.get("target_feature", STHSepNetConfig().target_feature)
    zeros_missing = tc.missing_zeros()
    series = tc.read_series()
    cal = calendar(series, tc.steps_per_day)
    data = prepare(series, seq_len, pred_len, tc.split_fractions(), target,
                   time_features=("time_of_day", "day_of_week"), cal=cal)
    torch.manual_seed(tc.seed)
    forecaster = WindowForecaster(stid_model(series.num_nodes, seq_len, pred_len, cal.per_day), target)
    optimizer = torch.optim.Adam(forecaster.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    generator = torch.Generator().manual_seed(tc.seed)
    cpu = torch.device("cpu")
    history, best, best_state = [], None, None
    for epoch in range(1, RECIPE["max_epochs"] + 1):
        start = time.perf_counter()
        loss = train_epoch(forecaster, optimizer, data, zeros_missing, generator)
        seconds = time.perf_counter() - start
        val = evaluate_windows(forecaster, data.val, data, zeros_missing, EVAL_BATCH, cpu)["metrics"]["model"].result()
        history.append({"epoch": epoch, "train_loss": loss, "val_mae": val["all"]["mae"],
                        "val_rmse": val["all"]["rmse"], "train_seconds": seconds})
        print(json.dumps(history[-1]), flush=True)
        if best is None or val["all"]["mae"] < history[best - 1]["val_mae"]:
            best, best_state = epoch, copy.deepcopy(forecaster.state_dict())
        elif epoch - best >= RECIPE["patience"]:
            break
    forecaster.load_state_dict(best_state)
    test = evaluate_windows(forecaster, data.test, data, zeros_missing, EVAL_BATCH, cpu, baselines=fit_baselines(data))
    params = sum(p.numel() for p in forecaster.parameters())
    metrics = {"model": "BasicTS 1.1.0 STID, traffic configuration", "recipe": RECIPE, "protocol": tc.protocol,
               "data": tc.data, "num_nodes": series.num_nodes, "seq_len": seq_len, "pred_len": pred_len,
               "zeros_missing": zeros_missing, "loss": "mae", "seed": tc.seed, "best_epoch": best,
               "epochs_run": len(history),
               "test": report(test["metrics"], PROTOCOLS[tc.protocol]["horizons"]), "history": history,
               "parameters": {"total": params, "trainable": params}}
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def main() -> None:
    if not have_basicts():
        sys.exit(f"needs BasicTS: {INSTALL}")
    metrics = run(sys.argv[1:])
    model = metrics["test"]["model"]["all"]
    print(f"STID test MAE {model['mae']:.3f} RMSE {model['rmse']:.3f} (best epoch {metrics['best_epoch']} of "
          f"{metrics['epochs_run']})")


if __name__ == "__main__":
    main()
