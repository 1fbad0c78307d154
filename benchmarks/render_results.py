"""Render ``benchmarks/RESULTS.md`` from the pytest-benchmark JSON files: no figure is typed by hand.

    python benchmarks/render_results.py [--out benchmarks/RESULTS.md]

Each section is rendered from one JSON file when it exists (its command is in the section); ratios
are computed between cases of the same file, i.e. of the same run on the same machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).parent


SOURCE = HERE   # where the JSON files are read from (--from)


def _load(name: str) -> dict | None:
    path = SOURCE / name
    return json.loads(path.read_text()) if path.exists() else None


def _machine(run: dict) -> str:
    m, c = run["machine_info"], run["commit_info"]
    cpu = m.get("cpu", {}).get("brand_raw", m.get("processor", "?"))
    threads = {b["extra_info"].get("torch_threads") for b in run["benchmarks"]} - {None}
    device = {b["extra_info"].get("device") for b in run["benchmarks"]} - {None}
    where = f"device: {', '.join(sorted(device))}; " if device else ""
    return (f"{where}{cpu}, torch threads {', '.join(map(str, sorted(threads))) or '?'}, "
            f"Python {m['python_version']}; run {run['datetime'][:16]} UTC at commit "
            f"{c.get('id', '?')[:8]}{' (uncommitted changes)' if c.get('dirty') else ''}")


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def _mib(value) -> str:
    return "n/a" if value is None else f"{value:,.1f}" if value >= 1 else f"{value:.3f}"


def _ratio(a, b) -> str:
    if a is None or b is None or b <= 0:
        return "n/a"
    return f"{a / b:,.1f}x"


def gpu_section(run: dict | None) -> list[str]:
    lines = ["## GPU: `triton` vs `sparse` (torch CUDA) vs `reference`; the CUDA pool + patch", "",
             "```", "python -m pytest benchmarks/gpu --benchmark-json=benchmarks/gpu/triton_ops.json",
             "```", ""]
    if run is None:
        return lines + ["Not run yet: no GPU was lent to the sessions that built this. The command "
                        "above is the whole job for one lent GPU."]
    lines += [_machine(run), "", "| op | N | backend | median ms | peak GPU MiB |",
              "|---|---:|---|---:|---:|"]
    for b in sorted(run["benchmarks"], key=lambda b: (b["extra_info"]["op"], b["extra_info"]["n"],
                                                       b["extra_info"]["backend"])):
        e = b["extra_info"]
        lines.append(f"| {e['op']} | {e['n']:,} | {e['backend']} | {_ms(b['stats']['median'])} | "
                     f"{_mib(e.get('peak_gpu_mib'))} |")
    return lines


def large_n_section(run: dict) -> list[str]:
    from sthfast.backends.faiss_search import APPROX_MIN_POINTS
    from sthfast.memory import hypergraph_stage_bytes

    res = [r for r in run["results"] if "error" not in r or r["kind"] == "train_step"]

    def find(kind, n, backend=None, approximate=False):
        for r in res:
            if (r["kind"], r["n"]) == (kind, n) and r.get("backend") == backend and \
                    r.get("approximate", False) == approximate:
                return r
        return None

    def cell(r):
        if r is None:
            return "not run", "n/a"
        if "error" in r:
            return f"failed: {r['error'][:60]}", "n/a"
        return _ms(r["seconds"]), _mib(r["peak_mib"])

    lines = ["## Large N: FAISS, the hypergraph stage at 100,000 nodes, a training step at 8,600 (CPU)",
             "", "```", run["command"], "```", "",
             f"{run['machine']}, {run['cpus']} CPUs, torch {run['torch']}, {run['faiss']}; run "
             f"{run['date']} at commit {run['commit']}. Each case in its own process: median of its "
             "repeats (5 for the threshold sweep, 3 below 100,000 nodes, 1 at 100,000 and for the "
             "reference), peak = resident high-water mark above the process before the call. "
             "Points: clustered, tanh-squashed (like learned node embeddings), d = 40, k = 3."
             + (f" Note: {run['note']}." if run.get("note") else ""), "",
             "### Where FAISS overtakes the tiled torch search (`FAISS_MIN_POINTS`)", "",
             "| N | tiled torch ms | FAISS flat ms | FAISS speed-up |", "|---:|---:|---:|---:|"]
    for n in sorted({r["n"] for r in res if r["kind"] == "threshold"}):
        a, b = find("threshold", n, "sparse"), find("threshold", n, "faiss")
        lines.append(f"| {n:,} | {cell(a)[0]} | {cell(b)[0]} | "
                     f"{_ratio(a and a.get('seconds'), b and b.get('seconds'))} |")
    lines += ["", "### Hypergraph construction (search + merged CSR structure)", "",
              "| N | FAISS exact ms (MiB) | FAISS approximate ms (MiB), recall@3 | tiled torch ms (MiB) "
              "| dense reference ms (MiB) | tiled / FAISS exact |", "|---:|---|---|---|---|---:|"]
    for n in sorted({r["n"] for r in res if r["kind"] == "construction"}):
        ex, ap = find("construction", n, "faiss"), find("construction", n, "faiss", True)
        ti, rf = find("construction", n, "sparse"), find("construction", n, "reference")
        fmt = lambda r: "{} ({})".format(*cell(r)) if r else "not run"
        recall = f", {ap['recall']:.3f}" if ap and "recall" in ap else ""
        if n < APPROX_MIN_POINTS:
            recall += f" (the exact scan: below {APPROX_MIN_POINTS:,} points)"
        lines.append(f"| {n:,} | {fmt(ex)} | {fmt(ap)}{recall} | {fmt(ti)} | {fmt(rf)} | "
                     f"{_ratio(ti and ti.get('seconds'), ex and ex.get('seconds'))} |")
    lines += ["", "### Hypergraph stage with `auto`: construction + MixProp depth 2, C = 32, T = 12, "
              "B = 1, forward + backward", "",
              f"Propagation backend: `{run.get('propagation', 'sparse')}` (the memory model of that path).", "",
              "| N | ms | peak MiB | memory model MiB (sthfast/memory.py) | measured / model |",
              "|---:|---:|---:|---:|---:|"]
    fused = run.get("propagation", "sparse") == "cpp"         # which MixProp `auto` ran
    for r in (r for r in res if r["kind"] == "stage"):
        model = hypergraph_stage_bytes(r["n"], backward=True, fused=fused,
                                       threads=r.get("threads", 2)) / 2**20
        t, m = cell(r)
        lines.append(f"| {r['n']:,} | {t} | {m} | {model:,.0f} | "
                     f"{_ratio(r.get('peak_mib'), model)} |")
    steps = {r["backend"]: r for r in res if r["kind"] == "train_step"}
    n = next(iter(steps.values()))["n"] if steps else 0
    lines += ["", f"### One training step of the default model, N = {n:,}, B = 8, T = 12 -> 12", "",
              "| backend | ms | peak MiB |", "|---|---:|---:|"]
    for name, r in steps.items():
        t, m = cell(r)
        lines.append(f"| {name} | {t} | {m} |")
    if {"auto", "reference"} <= steps.keys() and "error" not in steps["reference"]:
        lines += ["", f"`auto` is {_ratio(steps['reference']['seconds'], steps['auto']['seconds'])} "
                  "faster than `reference` and peaks "
                  f"{_ratio(steps['reference']['peak_mib'], steps['auto']['peak_mib'])} lower."]
    return lines


def throughput_section(run: dict) -> list[str]:
    cases = [b for b in run["benchmarks"]]
    ops_ = {}
    for b in cases:
        e = b["extra_info"]
        if e.get("kind") == "op":
            ops_.setdefault((e["op"], e["dtype"]), {})[(e["n"], e["backend"])] = b
    lines = ["## Throughput: every op, fast paths vs reference vs the authors' approach",
             "", "```", "python -m pytest benchmarks/test_throughput.py -k test_op "
             "--benchmark-json=benchmarks/throughput.json", "```", "", _machine(run), "",
             "Median ms (rounds: 5, or 1 for calls over 5 s) and, in brackets, the call's own peak MiB. "
             "Ratios are each other path / ours, from this run. Ops: `topk_neighbors` (d = 40, "
             "k = 3), `knn_hypergraph` (search + merged structure; the authors': sklearn + "
             "a Python loop + dense incidence), `hypergraph_mixprop` (forward + backward over "
             "B x C x T = 32 x 32 x 12; the authors': dense attention convolution over their "
             "incidence), `graph_mixprop` (adaptive top-20 graph + MixProp, forward + backward), "
             "`pool_patch` (forward + backward). Ours: `cpp` (the extension) for pool + patch and the "
             "propagations where it was built, else `sparse`; `faiss`, which `auto` takes for "
             "searches from 4,096 points, beside it."]
    order = ("authors", "reference", "sparse", "faiss", "cpp")
    for (op, dtype), by in sorted(ops_.items()):
        backends_ = sorted({bk for _, bk in by}, key=order.index)
        ours = "cpp" if "cpp" in backends_ else "sparse"
        against = [bk for bk in ("reference", "authors", "sparse") if bk != ours and bk in backends_]
        head = " | ".join(backends_)
        lines += ["", f"### {op} ({dtype})", "",
                  f"| N | {head} | " + " | ".join(f"{bk} / {ours}" for bk in against) + " |",
                  "|---:|" + "---:|" * (len(backends_) + len(against))]
        for n in sorted({n for n, _ in by}):
            cells = []
            for bk in backends_:
                b = by.get((n, bk))
                peak = b and b["extra_info"].get("call_peak_mib")
                cells.append("skipped" if b is None else f"{_ms(b['stats']['median'])} ({_mib(peak)})")
            med = lambda bk: by[(n, bk)]["stats"]["median"] if (n, bk) in by else None
            lines.append(f"| {n:,} | {' | '.join(cells)} | "
                         + " | ".join(_ratio(med(bk), med(ours)) for bk in against) + " |")
    return lines


def model_section(run: dict) -> list[str]:
    """The whole model's training step and inference, ours (reference, auto, auto under bfloat16
    autocast) beside the peer (BasicTS's STID), from ``model_step.json``."""
    models = {}
    for b in run["benchmarks"]:
        e = b["extra_info"]
        if e.get("kind") == "model":
            models[(e["step"], e["batch"], e.get("length", 12), e["n"], e["backend"])] = b
    names = ("reference", "auto", "auto+bf16", "stid")
    med = lambda key: models[key]["stats"]["median"] if key in models else None
    lines = ["## The whole model: training step and inference, ours vs the reference vs BasicTS's STID", "",
             "```", "python -m pytest benchmarks/test_throughput.py -k test_model "
             "--benchmark-json=benchmarks/model_step.json", "```", "", _machine(run), "",
             "Default config (`auto` picks the C++ extension's pool + patch and MixProp on the CPU); "
             "`auto+bf16`: the same under CPU bfloat16 autocast, as `--bf16` trains; `stid`: BasicTS "
             "1.1.0's STID (3 MLP layers, 32-wide embeddings, time-of-day and day-of-week), the peer. "
             "Training step: forward, backward and Adam over random inputs; inference: eval, no "
             "gradients. Median ms (rounds: 5, or 1 for calls over 5 s) and, in brackets, the call's "
             "own peak MiB; the ratios are from this run.", "",
             "| step | B | T -> H | N | " + " | ".join(f"{n} ms (MiB)" for n in names)
             + " | reference / auto | reference / auto+bf16 | auto / stid | auto+bf16 / stid |",
             "|---|---:|---|---:|" + "---:|" * (len(names) + 4)]
    for step, batch, length, n in sorted({k[:4] for k in models}, key=lambda k: (k[0] != "train", k[1:])):
        keys = {name: (step, batch, length, n, name) for name in names}
        cells = []
        for name in names:
            b = models.get(keys[name])
            cells.append("not run" if b is None else
                         f"{_ms(b['stats']['median'])} ({_mib(b['extra_info'].get('call_peak_mib'))})")
        ratios = [_ratio(med(keys["reference"]), med(keys["auto"])),
                  _ratio(med(keys["reference"]), med(keys["auto+bf16"])),
                  _ratio(med(keys["auto"]), med(keys["stid"])), _ratio(med(keys["auto+bf16"]), med(keys["stid"]))]
        lines.append(f"| {step} | {batch} | {length} -> {length} | {n:,} | " + " | ".join(cells + ratios) + " |")
    return lines


def _medians(run: dict) -> dict[tuple, float]:
    """``(step, batch, length, n, backend) -> median seconds`` of a ``test_model`` run."""
    return {(e["step"], e["batch"], e.get("length", 12), e["n"], e["backend"]): b["stats"]["median"]
            for b in run["benchmarks"] if (e := b["extra_info"]).get("kind") == "model"}


def speed_targets_section(step: dict, job: dict, inference: dict) -> list[str]:
    """Issue 30's speed targets beside what was measured: the training step against the reference
    and STID (``model_step_n207.json``), the main job's epoch (the newest run of
    ``main_job.json``) and inference at B = 1 before and after the fused ops
    (``inference_ab_n207.json``)."""
    m = _medians(step)
    train = lambda length, backend: m[("train", 32, length, 207, backend)]
    run = job["runs"][-1]
    epochs = sorted(e["train_seconds"] for e in run["epochs"])
    epoch = epochs[len(epochs) // 2]
    key = "inference-1-12-auto-207_ms"
    side = lambda name: [r[key] for r in inference["rounds"] if r["side"] == name]
    old, new = (sum(v) / len(v) for v in (side("old"), side("new")))
    rows = [("training step, B = 32, N = 207, 12 -> 12: `auto` at least 5x faster than `reference` (float32)",
             train(12, "reference") / train(12, "auto"), ">=", 5.0, "x",
             f"bfloat16: {train(12, 'reference') / train(12, 'auto+bf16'):.2f}x"),
            ("the same step at most 5x STID's time (float32)", train(12, "auto") / train(12, "stid"), "<=", 5.0, "x",
             f"bfloat16: {train(12, 'auto+bf16') / train(12, 'stid'):.1f}x"),
            ("training step at 48 -> 48: at least 5x faster than `reference` (float32)",
             train(48, "reference") / train(48, "auto"), ">=", 5.0, "x",
             f"bfloat16: {train(48, 'reference') / train(48, 'auto+bf16'):.2f}x"),
            ("an epoch of `sthfast train --data embedded --protocol standard` under 6 s on 2 cores", epoch, "<", 6.0,
             " s", f"median of {len(epochs)} epochs, bfloat16 {'on' if run['bf16'] else 'off'}, {run['cpu']}"),
            ("inference at B = 1, N = 207, 12 -> 12 no slower than before the fused ops", new / old, "<=", 1.0,
             "x of before", f"{old:.1f} ms before, {new:.1f} ms after (means of {len(side('new'))} interleaved "
                            f"rounds)")]
    met = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t}
    lines = ["## Speed targets (issue 30), measured", "",
             f"From `model_step_n207.json` ({_machine(step)}), the newest run of `main_job.json` "
             f"({run['date']}, commit {run['commit']}) and `inference_ab_n207.json` ({inference['date']}, "
             f"{inference['machine']}). Why the missed ones are missed, and the next steps: "
             "`benchmarks/PROFILE.md` (round 2).", "",
             "| target | measured | met | note |", "|---|---:|---|---|"]
    for what, value, op, target, unit, note in rows:
        lines.append(f"| {what} | {value:.2f}{unit} | {'yes' if met[op](value, target) else 'no'} | {note} |")
    return lines


def profile_section(runs: list[dict]) -> list[str]:
    from sthfast.profile_stages import STAGES, table_rows

    lines = ["## Hypergraph latency profile: where the forward pass's time goes", ""]
    for run in runs:
        meta, res = run["meta"], run["results"]
        names = list(res)
        lines += [f"### N = {meta['nodes']:,} (training batch {meta['batch']})", "", "```",
                  meta["command"], "```", "",
                  f"{meta['machine']}, {meta['threads']} threads, torch {meta['torch']}, backend "
                  f"{meta['backend']}"
                  + (f" (MixProp: `{meta['propagation']}`)" if meta.get("propagation") else "")
                  + f", {meta['date']}; median of {meta['repeats']} calls after a "
                  f"warm-up; ms (share of the forward). Chart: `{meta['chart']}`.", "",
                  "| stage | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for label, nested, cells in table_rows(res):
            text = ["-" if c is None else f"{c[0]:,.1f} ({100 * c[1]:.0f}%)" for c in cells]
            lines.append(f"| {'&nbsp;&nbsp;' * nested}{label} | " + " | ".join(text) + " |")
        top = {n: max(STAGES, key=lambda x: res[n].get(x, 0.0)) for n in names}
        lines += ["", "Dominant stage: " + "; ".join(f"{n}: {top[n]}" for n in names) + ".", ""]
    return lines


def time_to_accuracy_section(run: dict) -> list[str]:
    """Best validation MAE against wall-clock seconds, ours and STID's (``time_to_accuracy.json``)."""
    from time_to_accuracy import table

    return ["## Time to accuracy: `sthfast train` against BasicTS's STID", "", "```",
            run["command"], "```", "", f"{run['cpu']}, {run['cores']} cores, {run['date']}, commit "
            f"{run.get('commit', '?')}; each run a fresh "
            f"process timed from its start, stopped at {run['budget_s']:.0f} s. Validation MAE on the "
            "original scale (masked as the protocol says). A run that stops before the budget was ended by its "
            "early stopping.", "", table(run), "",
            "![best validation MAE against seconds](time_to_accuracy.png)"]


def step_ab_section(runs: list[tuple[str, dict]]) -> list[str]:
    """Interleaved A/B runs of a training step between two checkouts (``step_ab_*.json``)."""
    lines = ["## Training step, before and after a change", "", "```",
             "python benchmarks/step_ab.py --old-python OLD/.venv/bin/python --old-root OLD --nodes N", "```", "",
             "| file | what | N | old ms | new ms | speed-up | old peak MiB | new peak MiB | lower by |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in runs:
        for r in run["results"]:
            lines.append(f"| `{name}` | {run['what'].split(':')[0]} | {r['nodes']} | {r['old_median_ms']:.0f} | "
                         f"{r['new_median_ms']:.0f} | {r['old_over_new_time']:.2f}x | {r['old_peak_mib']:.0f} | "
                         f"{r['new_peak_mib']:.0f} | {r['old_over_new_peak']:.2f}x |")
    return lines + ["", "Each file says what old and new were, the machine and the date."]


def render() -> str:
    lines = ["# Results", "", "Generated by `python benchmarks/render_results.py` from the JSON files "
             "next to it; do not edit by hand. Timings on shared CPUs are noisy: compare ratios "
             "within one run.", ""]
    throughput = _load("throughput.json")
    if throughput is not None:
        lines += throughput_section(throughput) + [""]
    model_step = _load("model_step.json")
    if model_step is not None:
        lines += model_section(model_step) + [""]
    targets = [_load(name) for name in ("model_step_n207.json", "main_job.json", "inference_ab_n207.json")]
    if all(t is not None for t in targets):
        lines += speed_targets_section(*targets) + [""]
    profiles = [p for p in (_load(f) for f in sorted(q.name for q in SOURCE.glob("profile_*.json"))) if p]
    if profiles:
        lines += profile_section(profiles)
    steps = [(q.name, _load(q.name)) for q in sorted(SOURCE.glob("step_ab_*.json"))]
    if steps:
        lines += step_ab_section(steps) + [""]
    tta = _load("time_to_accuracy.json")
    if tta is not None:
        lines += time_to_accuracy_section(tta) + [""]
    large = _load("large_n.json")
    if large is not None:
        lines += large_n_section(large) + [""]
    lines += gpu_section(_load("gpu/triton_ops.json"))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--from", dest="source", default=str(HERE),
                        help="folder holding the JSON files (default: benchmarks/)")
    args = parser.parse_args()
    global SOURCE
    SOURCE = Path(args.source)
    Path(args.out).write_text(render())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
