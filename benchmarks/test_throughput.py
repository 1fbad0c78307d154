"""Throughput of every op and of the whole model: the fast paths, the dense reference, the
authors' approach and, for the whole model, the peer (BasicTS's STID) (``authors_approach.py``),
by N (207 LOS-LOOP / METR-LA, 358 PEMS03, 883 PEMS07, 8,600 LargeST CA), backend and dtype, each
case with its peak memory in ``extra_info``.

    python -m pytest benchmarks/test_throughput.py -k test_op --benchmark-json=benchmarks/throughput.json
    python -m pytest benchmarks/test_throughput.py -k test_model --benchmark-json=benchmarks/model_step.json
    python benchmarks/render_results.py

The whole-model cases put BasicTS's STID (``peers.py``) beside ours; they skip it with the reason
when BasicTS is not installed.

``STHFAST_BENCH_QUICK=1`` runs every case once at N = 64 (the test suite does, with
``--benchmark-disable``, so that the suite cannot rot). Cases that cannot run at a size (the
authors' dense attention needs B T N^2 floats per tensor: 113 GB at 8,600) skip with the reason.
"""

from __future__ import annotations

import os
import time

import authors_approach
import peers
import pytest
import torch
from peak_memory import call_peak_mib, own_peak_mib

from sthfast import STHSepNet, STHSepNetConfig, ops, optional_deps
from sthfast.backends import extension
from sthfast.testing import embeddings, features, series

QUICK = os.environ.get("STHFAST_BENCH_QUICK") == "1"
SIZES = (64,) if QUICK else (207, 358, 883, 8600)
D, K, C, T, DEPTH, BETA = 40, 3, 32, 12, 2, 0.05
BATCH = 2 if QUICK else 32             # the authors' anchors: B = 32, 32 channels
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SECONDS_PER_CALL_LIMIT = 5.0           # slower cases: one round, in-process peak


def _features(n: int, dtype: torch.dtype, grad: bool = True) -> torch.Tensor:
    return features(BATCH, C, n, T, dtype, seed=n + 1, grad=grad)


def op_case(op: str, backend: str, n: int, dtype: str):
    """A no-argument call of ``op`` at ``n`` nodes (importable: ``call_peak_mib`` rebuilds it)."""
    dt = DTYPES[dtype]
    if op == "pool_patch":
        x = series(BATCH, T, n, 1, torch.float32, seed=n, grad=True)
        return lambda: ops.pool_patch(x, 4, 2, backend=backend)[0].sum().backward()
    z = embeddings(n, D, seed=n)
    if op == "topk_neighbors":
        return lambda: ops.topk_neighbors(z, z, K, self_first=True, backend=backend)
    if op == "knn_hypergraph":
        if backend == "authors":
            return lambda: authors_approach.knn_incidence(z, K)
        return lambda: ops.knn_hypergraph(z, K, backend=backend)
    x = _features(n, dt)
    if op == "hypergraph_mixprop":
        if backend == "authors":
            incidence = authors_approach.knn_incidence(z, K)
            return lambda: authors_approach.hypergraph_attention_conv(x, incidence, dt).sum().backward()
        structure = ops.knn_hypergraph(z.to(dt), K, backend=backend)
        return lambda: ops.hypergraph_mixprop(x, structure, DEPTH, BETA, backend=backend).sum().backward()
    if op == "graph_mixprop":
        m1, m2 = z[:, : D // 2].to(dt), z[:, D // 2:].to(dt)
        def run():
            graph = ops.adaptive_graph(m1, m2, min(20, n - 1), 3.0, backend=backend)
            ops.graph_mixprop(x, graph, DEPTH, BETA, backend=backend).sum().backward()
        return run
    raise ValueError(op)


def model_case(step: str, backend: str, n: int, batch: int, length: int = 12):
    """One training step (forward, backward, Adam) or one inference call (eval, no gradients: the
    graph and hypergraph are built on the first call and reused), ``length -> length`` steps, of
    the default model (``backend``: ``reference``, ``auto``, or ``auto+bf16``: ``auto`` under CPU
    bfloat16 autocast, as ``--bf16`` trains) or of the peer, BasicTS's STID (``stid``)."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, length, n, 1), torch.randn(batch, length, n)
    if backend == "stid":
        model, forward = peers.stid(n, length)
    else:
        patches = dict(patch_len=4, stride=2) if length == 12 else {}
        model = STHSepNet(STHSepNetConfig(num_nodes=n, seq_len=length, pred_len=length,
                                          backend=backend.split("+")[0], **patches))
        forward = model
    bf16 = backend.endswith("+bf16")
    if step == "inference":
        model.eval()
        def infer():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                forward(x)
        return infer
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    def train():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = forward(x)
        (pred.float() - y).square().mean().backward()
        optimizer.step()
    return train


DENSE_LIMIT = 1000   # the reference's dense propagation at B = 32 beyond this: minutes per call


def _skip_reason(op: str, backend: str, n: int, dtype: str) -> str | None:
    if backend == "faiss" and not optional_deps.probe("faiss").ok:
        return "FAISS is not installed"
    if backend == "cpp" and not extension.available():
        return "the C++ extension is not built"
    if backend == "reference" and op in ("hypergraph_mixprop", "graph_mixprop") and n > DENSE_LIMIT:
        return (f"dense N x N products over B C T = {BATCH * C * T} columns: about "
                f"{6 * DEPTH * n * n * BATCH * C * T / 1e12:.0f} TFLOP per call")
    if backend == "authors" and op == "hypergraph_mixprop" and n > 1000:
        return f"the authors' dense attention needs {BATCH * T * n * n * 4 / 1e9:.0f} GB per tensor"
    if backend == "authors" and dtype == "bfloat16" and n > 207:
        return "bfloat16 as the authors ship it: measured at N = 207 only (~7x slower than float32 here)"
    return None


def _measure(benchmark, make, factory: str, *args) -> float | None:
    """Time ``make()`` and return its call's peak MiB. The first call warms up and measures the
    peak in this process; a call under :data:`SECONDS_PER_CALL_LIMIT` is then timed over 5 rounds
    and its peak re-measured in a fresh process (``call_peak_mib``: allocator caches cannot hide
    growth there), a slower one timed once with the in-process peak (which may understate)."""
    fn = make()
    start = time.perf_counter()
    peak = own_peak_mib(fn)                                         # warm-up
    slow = time.perf_counter() - start > SECONDS_PER_CALL_LIMIT
    if QUICK:
        peak = None
    elif not slow:
        peak = call_peak_mib("test_throughput", factory, *args)
    benchmark.pedantic(fn, rounds=1 if slow or QUICK else 5, warmup_rounds=0)
    return peak


OPS = {"pool_patch": ("reference", "cpp"), "topk_neighbors": ("reference", "sparse", "faiss"),
       "knn_hypergraph": ("authors", "reference", "sparse", "faiss"),
       "hypergraph_mixprop": ("authors", "reference", "sparse", "cpp"),
       "graph_mixprop": ("reference", "sparse", "cpp")}


OP_CASES = [(op, b, "float32") for op, bs in OPS.items() for b in bs] + \
    [("hypergraph_mixprop", b, "bfloat16") for b in ("authors", "sparse", "cpp")]   # as the authors ship it


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("op,backend,dtype", OP_CASES)
def test_op(benchmark, op, backend, n, dtype):
    reason = _skip_reason(op, backend, n, dtype)
    if reason:
        pytest.skip(reason)
    peak = _measure(benchmark, lambda: op_case(op, backend, n, dtype), "op_case", op, backend, n, dtype)
    benchmark.extra_info.update(kind="op", op=op, backend=backend, n=n, dtype=dtype, batch=BATCH,
                                call_peak_mib=None if peak is None else round(peak, 2),
                                torch_threads=torch.get_num_threads())


MODEL_BACKENDS = ("reference", "auto", "auto+bf16", "stid")
# (step, B, length): the training step at 12 -> 12 and at the paper's 48 -> 48 (N = 207
# only: LOS-LOOP), streaming and batched inference
MODEL_STEPS = (("train", BATCH, 12), ("train", BATCH, 48), ("inference", 1, 12), ("inference", BATCH, 12))


def _model_skip_reason(step: str, backend: str, n: int, batch: int, length: int) -> str | None:
    if backend == "stid" and not peers.have_basicts():
        return f"BasicTS is not installed ({peers.INSTALL})"
    if length == 48 and n != min(SIZES):
        return "48 -> 48 is measured at the smallest N (207, LOS-LOOP) only"
    if backend == "reference" and n > DENSE_LIMIT and not (step == "inference" and batch == 1):
        return ("the reference model at 8,600 nodes takes minutes per call (its training step at "
                "B = 8: large_n.json, 273 s)")
    return None


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("backend", MODEL_BACKENDS)
@pytest.mark.parametrize("step,batch,length", MODEL_STEPS)
def test_model(benchmark, step, batch, length, backend, n):
    reason = _model_skip_reason(step, backend, n, batch, length)
    if reason:
        pytest.skip(reason)
    peak = _measure(benchmark, lambda: model_case(step, backend, n, batch, length), "model_case",
                    step, backend, n, batch, length)
    benchmark.extra_info.update(kind="model", step=step, backend=backend, n=n, batch=batch, length=length,
                                call_peak_mib=None if peak is None else round(peak, 2),
                                torch_threads=torch.get_num_threads())
