"""Render benchmarks/ACCURACY.md from the results kept by benchmarks/accuracy_campaign.py.

    python benchmarks/accuracy_table.py [RESULTS_DIR] > benchmarks/ACCURACY.md

Every figure comes from the runs' metrics.json, kept as ``RESULTS_DIR/<dataset>/<variant>-seed<S>.json``
(test metrics beside the three baselines, the validation history); cells are mean +- std over the
seeds that ran. The hand-written discussion is
benchmarks/accuracy_notes.md, appended as is.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from importlib import metadata
from pathlib import Path

from accuracy_campaign import DATASETS, RESULTS, VARIANTS, command, runs_of_plan

BASELINES = ("last_value", "seasonal_average", "linear")
LOSS_VARIANTS = ("mae_loss", "mse_loss", "huber_loss", "huber_half")


def spread(values: list[float], digits: int = 3) -> str:
    """``mean +- std (n)``, or the value alone for one run."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def load(results: Path) -> dict[str, dict[str, list[dict]]]:
    """dataset -> variant -> [metrics.json of each finished seed], in the plan's order."""
    found: dict[str, dict[str, list[dict]]] = {}
    for dataset, variant, _, name in runs_of_plan():
        path = results / f"{name}.json"
        if path.is_file():
            found.setdefault(dataset, {}).setdefault(variant, []).append(json.loads(path.read_text()))
    return found


def beats_all(summary: dict) -> bool:
    """The model's MAE and RMSE over all steps are below every baseline's."""
    test = summary["test"]
    return all(test["model"]["all"][m] < test[b]["all"][m] for b in BASELINES for m in ("mae", "rmse"))


def dataset_section(spec, variants: dict[str, list[dict]]) -> list[str]:
    first = next(iter(variants.values()))[0]
    horizons = [h for h in first["test"]["model"] if h != "all"]
    cols = ["MAE", "RMSE", "MAPE %"] + [f"MAE {h}" for h in horizons]
    lines = [f"## {spec.title}", "",
             f"N = {first['num_nodes']}, {first['seq_len']} -> {first['pred_len']}, zeros masked: "
             f"{first['zeros_missing']}; test split, original units ({spec.units}); mean ± std over "
             "the seeds run (n).", "",
             "| method | n | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]

    def cells(per_run: list[dict]) -> list[str]:
        out = [spread([p["all"][m] for p in per_run], 2 if m == "mape" else 3) for m in ("mae", "rmse", "mape")]
        return out + [spread([p[h]["mae"] for p in per_run]) for h in horizons]

    for variant, runs in variants.items():
        label = VARIANTS[variant][0]
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells([r["test"]["model"] for r in runs])) + " |")
    for name in BASELINES:
        lines.append(f"| baseline: {name} | - | " + " | ".join(cells([first["test"][name]])) + " |")
    lines += ["", "| method | best validation MAE | epochs run | best epoch | train s / epoch (median) | "
              "beats all three baselines (MAE and RMSE, all steps) |", "|---|---:|---:|---:|---:|---|"]
    for variant, runs in variants.items():
        best_val = [min(r["val_mae"] for r in s["history"]) for s in runs]
        seconds = statistics.median(r["train_seconds"] for s in runs for r in s["history"])
        wins = sum(beats_all(s) for s in runs)
        lines.append(f"| {VARIANTS[variant][0]} | {spread(best_val)} | "
                     f"{'/'.join(str(s['epochs_run']) for s in runs)} | "
                     f"{'/'.join(str(s['best_epoch']) for s in runs)} | {seconds:.1f} | "
                     f"{wins} of {len(runs)} |")
    lines += ["", "Commands (`python benchmarks/accuracy_campaign.py --list --only "
              f"'{spec.name}/*'` prints them all):", "", "```bash"]
    for variant in variants:
        lines.append(shlex.join(command(spec.name, variant, "S", Path(f"runs/accuracy/{spec.name}/{variant}-seedS"))))
    return lines + ["```", ""]


def verdicts(found: dict[str, dict[str, list[dict]]]) -> list[str]:
    lines = ["## Targets", "",
             "Test MAE and RMSE against the peer, BasicTS's STID (trained on the same windows by its own "
             "recipe: `benchmarks/stid_peer.py`); test MAE against spatial_only; validation MAE (what the "
             "defaults were chosen on) against the other losses run and against the seasonal residual flipped "
             "(off where the default turns it on). Means over the seeds run; 'within the seeds' spread' where "
             "the gap is below the larger standard deviation of the two sides.", "",
             "| dataset | defaults beat all three baselines | defaults vs STID (test MAE) | defaults vs STID "
             "(test RMSE) | defaults vs spatial_only (test MAE) | defaults vs the other losses (val MAE) | "
             "defaults vs seasonal residual flipped (val MAE) |",
             "|---|---|---|---|---|---|---|"]

    def test_mae(s):
        return s["test"]["model"]["all"]["mae"]

    def test_rmse(s):
        return s["test"]["model"]["all"]["rmse"]

    def val_mae(s):
        return min(r["val_mae"] for r in s["history"])

    for spec in DATASETS:
        variants = found.get(spec.name, {})
        full = variants.get("full")
        if not full:
            lines.append(f"| {spec.title} | not run | | | | | |")
            continue

        def versus(names: tuple[str, ...], key) -> str:
            """The defaults' mean ``key`` against that of each variant of ``names`` that ran."""
            ran = [name for name in names if name in variants]
            if not ran:
                return "not run"
            others = {name: statistics.mean(key(s) for s in variants[name]) for name in ran}
            ours = statistics.mean(key(s) for s in full)
            theirs = ", ".join(f"{value:.3f}" + (f" ({name})" if len(names) > 1 else "")
                               for name, value in others.items())
            best = min(others, key=others.get)
            if ours <= others[best]:
                return f"{ours:.3f} vs {theirs} (better or equal)"
            spread = max((statistics.stdev(key(s) for s in runs) for runs in (full, variants[best]) if len(runs) > 1),
                         default=0.0)
            close = ", within the seeds' spread" if ours - others[best] < spread else ""
            return f"{ours:.3f} vs {theirs} (worse{close})"

        flipped = next((v for v in ("no_seasonal", "with_seasonal") if v in variants), "no_seasonal")
        lines.append(f"| {spec.title} | {sum(beats_all(s) for s in full)} of {len(full)} seeds | "
                     f"{versus(('stid',), test_mae)} | {versus(('stid',), test_rmse)} | "
                     f"{versus(('spatial_only',), test_mae)} | {versus(LOSS_VARIANTS, val_mae)} | "
                     f"{versus((flipped,), val_mae)} |")
    return lines + [""]


PEER_ROWS = ("full", "converged", "identity_head", "original_units")   # ours beside the peer, where run


def peer_section(found: dict[str, dict[str, list[dict]]]) -> list[str]:
    """Test MAE / RMSE of STID beside the defaults (the campaign's epoch cap, and up to 30 epochs) and
    the options that bring STID's lessons in, per dataset (means over the seeds run)."""
    def cell(runs: list[dict] | None) -> str:
        if not runs:
            return "-"
        mae, rmse = (statistics.mean(s["test"]["model"]["all"][m] for s in runs) for m in ("mae", "rmse"))
        epochs = "/".join(str(s["best_epoch"]) for s in runs)
        return f"{mae:.3f} / {rmse:.3f} (best epochs {epochs})"

    lines = ["## Against the peer: BasicTS's STID", "",
             "Test MAE / RMSE, means over the seeds run, with each run's best epoch. STID trains by its own "
             "recipe (up to 100 epochs, early stopping after 10); the defaults under the campaign's epoch cap "
             "(the dataset's flags), then up to 30 epochs with patience 5; the two options from STID's lessons "
             "under the campaign's cap. 'ours best' is our row with the lowest validation MAE (chosen as the "
             "defaults are chosen, not on the test split), and its test MAE.", "",
             "| dataset | STID | " + " | ".join(VARIANTS[v][0] for v in PEER_ROWS) + " | ours best vs STID (MAE) |",
             "|---|---|" + "---|" * len(PEER_ROWS) + "---|"]
    for spec in DATASETS:
        variants = found.get(spec.name, {})
        if "stid" not in variants:
            continue
        stid = statistics.mean(s["test"]["model"]["all"]["mae"] for s in variants["stid"])
        ours = {v: statistics.mean(s["test"]["model"]["all"]["mae"] for s in variants[v])
                for v in PEER_ROWS if variants.get(v)}
        val = {v: statistics.mean(min(r["val_mae"] for r in s["history"]) for s in variants[v]) for v in ours}
        best = min(val, key=val.get) if val else None           # chosen on validation, as the defaults are
        verdict = ("-" if best is None else
                   f"{ours[best]:.3f} ({VARIANTS[best][0]}) {'<=' if ours[best] <= stid else '>'} {stid:.3f}: "
                   f"{100 * (stid - ours[best]) / stid:+.1f} %")
        lines.append(f"| {spec.title} | {cell(variants['stid'])} | "
                     + " | ".join(cell(variants.get(v)) for v in PEER_ROWS) + f" | {verdict} |")
    return lines + [""]


def main() -> None:
    found = load(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
    kept = [s.get("campaign", {}) for variants in found.values() for seeds in variants.values() for s in seeds]

    def each(key: str) -> str:
        return ", ".join(sorted({k.get(key, "unknown") for k in kept}))
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("sthfast", "torch", "transformers", "peft"))
    out = ["# Accuracy campaign", "",
           "Generated by `python benchmarks/accuracy_table.py` from the results of "
           "`python benchmarks/accuracy_campaign.py`; do not edit by hand.", "",
           f"- Machine(s): {each('machine')}; {versions}; runs at commit(s) {each('commit')}, "
           f"on {each('date')}.",
           "- Defaults of `sthfast train` (backend `auto`, the embedded all-MiniLM-L6-v2 with LoRA "
           "rank 8, `--loss auto`: the Huber loss where most nodes read mostly 0, else the masked MAE; the "
           "seasonal residual where the data are seasonal); "
           "chronological 70/10/20 split; every run keeps its best epoch by validation MAE.", ""]
    out += verdicts(found)
    out += peer_section(found)
    for spec in DATASETS:
        if spec.name in found:
            out += dataset_section(spec, found[spec.name])
    notes = Path(__file__).with_name("accuracy_notes.md")
    if notes.is_file():
        out += [notes.read_text().rstrip(), ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
