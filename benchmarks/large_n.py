"""Large-N measurements on this machine, written to ``benchmarks/large_n.json`` and rendered into
RESULTS.md by ``render_results.py``:

    python benchmarks/large_n.py [--quick] [--out benchmarks/large_n.json]

Every case runs in its own process (so that its peak resident memory is its own): the median time
of its repeats, and its peak RSS above the process's resident size before the first call.

* ``threshold``: neighbour search (d = 40, k = 3, self first), tiled torch (``sparse``) vs FAISS
  flat, N = 1,024 .. 16,384: where FAISS overtakes (``sthfast.ops.FAISS_MIN_POINTS``).
* ``construction``: the KNN hypergraph (d = 40, k = 3) at N = 8,600, 20,000 and 100,000: FAISS
  exact, FAISS approximate (with the recall@3 it reached), tiled torch, and the dense reference
  at 8,600 (the largest size where its N x N buffers fit comfortably).
* ``stage``: construction + hypergraph MixProp (depth 2, C = 32, T = 12, B = 1), forward and
  backward, at N = 20,000, 50,000 and 100,000 with ``auto``; the peak beside the memory model of
  :mod:`sthfast.memory`.
* ``train_step``: one training step (forward, backward, Adam) of the default model at N = 8,600,
  B = 8, T = 12 -> 12, with ``auto`` and with ``reference``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent

# --- one case, run in a fresh process by measure() (python benchmarks/large_n.py --child SPEC) ---

def _status(field: str) -> int:
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024


def _points(n: int, d: int):
    from sthfast.testing import embeddings

    return embeddings(n, d, clusters=max(n // 50, 1), spread=0.3)     # clustered, like learned embeddings


def _search_case(spec: dict, n: int):
    from sthfast import ops, reference

    z = _points(n, 40)
    backend, approximate = spec["backend"], spec.get("approximate", False)
    if backend == "reference":
        return z, lambda: reference.knn_hypergraph(z, 3)
    if spec["kind"] == "threshold":
        return z, lambda: ops.topk_neighbors(z, z, 3, self_first=True, backend=backend)
    return z, lambda: ops.knn_hypergraph(z, 3, neighbors=ops.topk_neighbors(
        z, z, 3, self_first=True, approximate=approximate, backend=backend), backend=backend)


def _stage_case(spec: dict, n: int):
    import torch

    from sthfast import ops

    z = _points(n, 40).requires_grad_()
    x = torch.randn(1, 32, n, 12, requires_grad=True)

    def run():
        h = ops.knn_hypergraph(z, 3)
        y = ops.hypergraph_mixprop(x, h, 2, 0.05)
        y.square().mean().backward()
    return z, run


def _train_case(spec: dict, n: int):
    import torch

    from sthfast import STHSepNet, STHSepNetConfig

    config = STHSepNetConfig(num_nodes=n, seq_len=12, pred_len=12, patch_len=4, stride=2,
                             backend=spec["backend"])
    model = STHSepNet(config)
    x, y = torch.randn(8, 12, n, 1), torch.randn(8, 12, n)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])

    def run():
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
    return None, run


CASES = {"threshold": _search_case, "construction": _search_case, "stage": _stage_case,
         "train_step": _train_case}


def child(spec: dict) -> dict:
    """Measure one case in this process: the median of its repeats and the peak RSS they add."""
    import torch

    from sthfast import ops
    from sthfast.backends.faiss_search import _faiss
    from sthfast.testing import recall

    torch.manual_seed(0)
    if spec.get("faiss_import", True):
        try:
            _faiss()
        except ImportError:
            pass
    CASES[spec["kind"]](spec, 256)[1]()                   # lazy initialisation, outside the measure
    z, run = CASES[spec["kind"]](spec, spec["n"])
    base = _status("VmRSS")
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    out = {"seconds": statistics.median(times), "times": times, "peak_mib": (_status("VmHWM") - base) / 2**20,
           "threads": torch.get_num_threads()}
    if spec["kind"] == "construction" and spec.get("recall_against"):
        idx = ops.topk_neighbors(z, z, 3, self_first=True, approximate=True, backend="faiss")
        exact = ops.topk_neighbors(z, z, 3, self_first=True, backend="faiss")
        out["recall"] = recall(idx, exact, leave_out_first=False)   # as recorded: the self column counts
    return out


def measure(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                          text=True, env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        result = {"error": tail[0][:300]}
    else:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({**spec, **result}), flush=True)
    return {**spec, **result}


def cases(quick: bool) -> list[dict]:
    if quick:
        return [dict(kind="threshold", n=1024, backend=b, repeats=1) for b in ("sparse", "faiss")] + \
               [dict(kind="construction", n=2048, backend="faiss", approximate=True, repeats=1,
                     recall_against=True), dict(kind="stage", n=2048, repeats=1),
                dict(kind="train_step", n=300, backend="auto", repeats=1)]
    out = [dict(kind="threshold", n=n, backend=b, repeats=5)
           for n in (1024, 2048, 4096, 8192, 16384) for b in ("sparse", "faiss")]
    for n in (8600, 20000, 100000):
        reps = 3 if n < 100000 else 1
        out += [dict(kind="construction", n=n, backend="faiss", repeats=reps),
                dict(kind="construction", n=n, backend="faiss", approximate=True, repeats=reps,
                     recall_against=True),
                dict(kind="construction", n=n, backend="sparse", repeats=reps)]
        if n == 8600:
            out.append(dict(kind="construction", n=n, backend="reference", repeats=1))
    out += [dict(kind="stage", n=n, repeats=3 if n < 100000 else 1) for n in (20000, 50000, 100000)]
    out += [dict(kind="train_step", n=8600, backend="auto", repeats=3),
            dict(kind="train_step", n=8600, backend="reference", repeats=1)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (CI smoke run)")
    parser.add_argument("--out", default=str(HERE / "large_n.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)             # one case, from measure()
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    import platform

    import torch

    from sthfast import ops, optional_deps

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = [measure(spec) for spec in cases(args.quick)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    record = {"date": started, "commit": commit, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "torch": torch.__version__, "faiss": optional_deps.probe("faiss").detail,
              "propagation": ops.resolve("hypergraph_mixprop", "auto", "cpu"),
              "command": "python benchmarks/large_n.py", "results": results}
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
