"""A training step of the default model in two checkouts, interleaved: this one (``new``) against
another (``old``, e.g. a ``git worktree`` of main with its own build), each round one fresh process
per side, so that a change to the kernels is measured against what it replaces on the same machine
at the same time. Per side: the median of the rounds' medians of ``--steps`` steps (after two warm-up
steps), and the resident high-water mark one step adds (``ru_maxrss``, first step, fresh process).

    python benchmarks/step_ab.py --old-python ../old/.venv/bin/python --old-root ../old \
        [--nodes 207] [--length 12] [--rounds 7] [--bf16] [--json out.json]

Both roots must hold ``python/profile_step.py`` (the step it times: B = 32, random inputs, forward,
backward, Adam).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r'''
import resource, statistics, sys, time
sys.path.insert(0, {root!r} + "/python")
from profile_step import training_step
step = training_step({nodes}, {length}, "auto", 32, {bf16})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
step()
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
step()
times = []
for _ in range({steps}):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
print(statistics.median(times) * 1000, peak)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-python", required=True, help="the other checkout's Python (its venv)")
    parser.add_argument("--old-root", required=True, help="the other checkout's root")
    parser.add_argument("--nodes", type=int, default=207)
    parser.add_argument("--length", type=int, default=12, help="input and forecast steps")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=7, help="timed steps per process")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args()
    sides = {"old": (args.old_python, str(Path(args.old_root).resolve())), "new": (sys.executable, str(ROOT))}
    runs = {name: {"ms": [], "peak_mib": []} for name in sides}
    for r in range(args.rounds):
        for name, (python, root) in sides.items():
            code = CHILD.format(root=root, nodes=args.nodes, length=args.length, bf16=args.bf16, steps=args.steps)
            done = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=root)
            if done.returncode:
                sys.exit(f"{name}: {done.stderr[-3000:]}")
            ms, peak = map(float, done.stdout.split()[-2:])
            runs[name]["ms"].append(ms)
            runs[name]["peak_mib"].append(peak)
        print(f"round {r + 1}: old {runs['old']['ms'][-1]:.0f} ms, new {runs['new']['ms'][-1]:.0f} ms", flush=True)
    result = {"nodes": args.nodes, "length": args.length, "batch": 32, "bf16": args.bf16, "rounds": args.rounds,
              "cpu": platform.processor() or platform.machine(), "threads": os.cpu_count(), "runs": runs}
    for name in sides:
        result[f"{name}_median_ms"] = statistics.median(runs[name]["ms"])
        result[f"{name}_peak_mib"] = statistics.median(runs[name]["peak_mib"])
    result["old_over_new_time"] = result["old_median_ms"] / result["new_median_ms"]
    result["old_over_new_peak"] = result["old_peak_mib"] / result["new_peak_mib"]
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
