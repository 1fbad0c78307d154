"""Model options for large networks: a sparse static adjacency, reusing the hypergraph's neighbour
search for several training steps, freezing the structures at evaluation, approximate search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sthfast import STHSepNet, ops


def batch(config, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, config.seq_len, config.num_nodes, config.in_features, generator=g)


def sparse_adjacency(n, seed=0):
    """About three edges per node, as a dense array (zeros elsewhere)."""
    rng = np.random.default_rng(seed)
    a = np.zeros((n, n), np.float32)
    a[np.repeat(np.arange(n), 3), rng.integers(0, n, 3 * n)] = rng.random(3 * n).astype(np.float32)
    return a


@pytest.fixture
def count_searches(monkeypatch):
    """How often the model searches neighbours (and with which ``approximate``)."""
    calls = []
    real = ops.topk_neighbors

    def spy(*args, **kwargs):
        calls.append(kwargs.get("approximate", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "topk_neighbors", spy)
    return calls


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("backend", ["reference", "sparse"])
def test_static_adjacency_dense_torch_sparse_and_scipy_agree(small_config, backend):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    c = small_config(graph="static", fusion="spatial_only", backend=backend)
    dense = sparse_adjacency(c.num_nodes)
    x = batch(c)
    outputs = []
    for given in (dense, torch.from_numpy(dense).to_sparse(), torch.from_numpy(dense).to_sparse_csr(),
                  scipy_sparse.csr_matrix(dense)):
        torch.manual_seed(0)
        model = STHSepNet(c, adjacency=given).eval()
        outputs.append(model(x))
        assert model.spatial.static_weight.numel() == np.count_nonzero(dense)   # edges only
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0])


def test_bad_sparse_adjacency(small_config):
    c = small_config(graph="static")
    n = c.num_nodes
    with pytest.raises(ValueError, match="finite and non-negative"):
        STHSepNet(c, adjacency=torch.sparse_coo_tensor([[0], [1]], [-1.0], (n, n), check_invariants=True))
    with pytest.raises(ValueError, match=rf"adjacency must be \[{n}, {n}\]"):
        STHSepNet(c, adjacency=torch.sparse_coo_tensor([[0], [1]], [1.0], (n, n + 1), check_invariants=True))


def test_rebuild_every_reuses_the_search_and_still_trains(small_config, count_searches):
    c = small_config(hyper_rebuild_every=3, graph="none", fusion="spatial_only", backend="sparse")
    torch.manual_seed(0)
    model = STHSepNet(c).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    embedding = model.spatial.hypergraph.embedding.weight
    for step in range(7):
        before = embedding.detach().clone()
        model(batch(c, seed=step)).square().mean().backward()
        assert embedding.grad is not None and embedding.grad.abs().sum() > 0   # memberships train
        optimizer.step()
        optimizer.zero_grad()
        assert not torch.equal(before, embedding.detach())
    assert len(count_searches) == 3                                   # steps 0, 3 and 6
    state = model.state_dict()
    assert int(state["spatial.hypergraph.steps"]) == 7
    assert state["spatial.hypergraph.neighbors"].shape == (c.num_nodes, c.hyper_k)


def test_rebuild_every_first_step_equals_rebuilding_every_step(small_config):
    x = batch(small_config())
    outs = []
    for every in (1, 4):
        torch.manual_seed(0)
        model = STHSepNet(small_config(hyper_rebuild_every=every, fusion="spatial_only")).train()
        torch.manual_seed(1)
        outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1])


def test_eval_without_grad_builds_the_structures_once_until_the_weights_change(
        small_config, count_searches, monkeypatch):
    graphs = []
    real = ops.adaptive_graph
    monkeypatch.setattr(ops, "adaptive_graph", lambda *a, **kw: graphs.append(1) or real(*a, **kw))
    c = small_config(fusion="spatial_only", backend="sparse")
    model = STHSepNet(c).eval()
    x = batch(c)
    with torch.no_grad():
        first = model(x)
        torch.testing.assert_close(model(x), first)
    assert (len(count_searches), len(graphs)) == (1, 1)
    with torch.no_grad():
        model.spatial.hypergraph.embedding.weight.add_(1.0)            # weights changed in place
        model(x)
    assert (len(count_searches), len(graphs)) == (2, 1)  # the hypergraph is rebuilt, the graph not
    model(x)                                             # gradients on: nothing is cached
    model.train()
    model(x)
    assert (len(count_searches), len(graphs)) == (4, 3)


def test_dynamic_hypergraph_cannot_skip_searches(small_config):
    with pytest.raises(ValueError, match="hyper_rebuild_every=2 needs a shared hypergraph"):
        small_config(hypergraph="dynamic", hyper_rebuild_every=2)


def test_approximate_search_reaches_the_op(small_config, count_searches):
    c = small_config(neighbor_search="approximate", graph="none", fusion="spatial_only")
    STHSepNet(c)(batch(c))
    assert count_searches == [True]


def test_static_graph_and_reused_neighbours_survive_a_checkpoint(small_config, tmp_path):
    from sthfast import checkpoint

    c = small_config(graph="static", hyper_rebuild_every=2, fusion="spatial_only")
    model = STHSepNet(c, adjacency=sparse_adjacency(c.num_nodes)).train()
    model(batch(c))                                                    # one step: steps = 1
    checkpoint.save(tmp_path / "ckpt", model, {})
    loaded, _ = checkpoint.load_checkpoint(tmp_path / "ckpt", STHSepNet)
    for name in ("spatial.static_index", "spatial.static_weight", "spatial.hypergraph.neighbors",
                 "spatial.hypergraph.steps"):
        assert torch.equal(loaded.state_dict()[name], model.state_dict()[name]), name
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(batch(c, seed=1)), model(batch(c, seed=1)))


LARGE_MODEL_SCRIPT = """
import json, resource, sys, time, torch
from sthfast import STHSepNet, STHSepNetConfig, ops
from sthfast.backends import faiss_search
config = STHSepNetConfig(**json.loads(sys.argv[1]))
headroom = int(sys.argv[2])
torch.manual_seed(0)
model = STHSepNet(config)
x = torch.randn(1, config.seq_len, config.num_nodes, 1)
if faiss_search.runs_on(torch.device("cpu")):
    faiss_search._faiss()                       # map the library before the limit
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
start = time.perf_counter()
model(x).square().mean().backward()
assert model.spatial.hypergraph.embedding.weight.grad.abs().sum() > 0
peak = int(open("/proc/self/status").read().split("VmPeak:")[1].split()[0]) * 1024
print(json.dumps({"search": ops.resolve("knn_hypergraph", "auto", "cpu", config.num_nodes),
                  "seconds": time.perf_counter() - start, "peak_above_start": peak - size}))
"""


@pytest.mark.slow
def test_whole_model_at_44000_nodes_with_auto_allocates_no_n_by_n_tensor(small_config, tmp_path):
    """Forward and backward of the whole model (LLM stream included) at N = 44,000 under an
    address-space limit of 2 GiB above the built model: an N x N float32 buffer needs 7.7 GB."""
    import json
    import os
    import subprocess
    import sys

    n, headroom = 44_000, 2 << 30
    assert n * n * 4 > headroom
    config = small_config(num_nodes=n, pred_len=12, layers=1, subgraph_size=4).to_dict()
    script = tmp_path / "large_model.py"
    script.write_text(LARGE_MODEL_SCRIPT)
    done = subprocess.run([sys.executable, str(script), json.dumps(config), str(headroom)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    from sthfast import optional_deps

    assert result["search"] == ("faiss" if optional_deps.probe("faiss").ok else "sparse")


@pytest.mark.slow
def test_memory_model_matches_a_measured_hypergraph_stage():
    """``sthfast.memory`` against the peak resident memory of construction + MixProp (forward and
    backward) at N = 20,000, measured in a fresh process by the benchmark's own code."""
    import large_n  # benchmarks/, on the tests' path by pyproject.toml

    from sthfast.memory import hypergraph_stage_bytes

    measured = large_n.measure(dict(kind="stage", n=20_000, repeats=1))
    assert "error" not in measured, measured
    fused = ops.resolve("hypergraph_mixprop", "auto", "cpu") == "cpp"
    predicted = hypergraph_stage_bytes(20_000, backward=True, fused=fused,
                                       threads=measured["threads"]) / 2**20
    assert 0.7 < measured["peak_mib"] / predicted < 1.4, (measured["peak_mib"], predicted)


def test_model_built_and_run_under_inference_mode(small_config):
    """Parameters created under inference_mode have no version counter: nothing is cached, and
    the structures are rebuilt on every call instead of failing."""
    c = small_config(graph="static", fusion="spatial_only")
    x = batch(c)
    with torch.inference_mode():
        model = STHSepNet(c, adjacency=sparse_adjacency(c.num_nodes)).eval()
        first = model(x)
        torch.testing.assert_close(model(x), first)


def test_checkpoint_with_the_old_dense_static_adjacency_still_loads(small_config, tmp_path, monkeypatch):
    from sthfast import checkpoint

    c = small_config(graph="static", fusion="spatial_only")
    dense = sparse_adjacency(c.num_nodes)
    model = STHSepNet(c, adjacency=dense).eval()
    checkpoint.save(tmp_path / "ckpt", model, {})
    real_load = checkpoint.load_file

    def old_format(path):                       # what a checkpoint written before sparse storage holds
        weights = real_load(path)
        weights.pop("spatial.static_index"), weights.pop("spatial.static_weight")
        weights["spatial.static_adjacency"] = torch.from_numpy(dense)
        return weights

    monkeypatch.setattr(checkpoint, "load_file", old_format)
    loaded, _ = checkpoint.load_checkpoint(tmp_path / "ckpt", STHSepNet)
    torch.testing.assert_close(loaded.eval()(batch(c)), model(batch(c)))
