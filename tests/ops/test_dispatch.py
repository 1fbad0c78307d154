"""The backend switch over every op: ``auto`` picks per op and device and falls back to the
reference, explicit names are checked, the registry is complete; the fast paths' ops compile into
one graph with no break."""

import pytest
import torch
from backend_cases import runnable

from sthfast import ops, optional_deps, reference
from sthfast.backends import Implementation
from sthfast.testing import features, points


def test_auto_picks_per_op_on_cpu():
    from sthfast.backends import extension

    assert set(ops.OPS) == {"pool_patch", "topk_neighbors", "knn_hypergraph", "hypergraph_mixprop",
                            "adaptive_graph", "graph_mixprop", "static_graph", "projected_hypergraph_mixprop",
                            "projected_graph_mixprop", "dropout"}
    fused = ("pool_patch", "hypergraph_mixprop", "graph_mixprop", "projected_hypergraph_mixprop",
             "projected_graph_mixprop", "dropout")   # the extension's, where built
    for op in ops.OPS:
        fallback = "reference" if op in ("pool_patch", "dropout") else "sparse"
        want = ("cpp" if extension.available() else fallback) if op in fused else "sparse"
        assert ops.resolve(op, "auto", "cpu") == want
        assert ops.resolve(op, "reference", "cpu") == "reference"


def test_unknown_and_unusable_backends_are_clear_errors():
    with pytest.raises(ValueError, match="backend='magic' is not one of"):
        ops.resolve("pool_patch", "magic", "cpu")
    assert ops.resolve("pool_patch", "sparse", "cpu") == ops.resolve("pool_patch", "auto", "cpu")
    with pytest.raises(ValueError, match="is not one of"):
        Implementation("pool_patch", "magic", lambda *a: None)


def test_auto_prefers_a_registered_fast_path_only_where_it_runs(monkeypatch):
    monkeypatch.setitem(ops._REGISTRY, "pool_patch", {"reference": ops._REGISTRY["pool_patch"]["reference"]})
    calls = []

    def fast(*args):
        calls.append(args)
        return reference.pool_patch(*args)

    ops.register(Implementation("pool_patch", "sparse", fast, auto_on=lambda d: d.type == "cpu"))
    ops.register(Implementation("pool_patch", "triton", fast, auto_on=lambda d: d.type == "cuda"))
    assert ops.resolve("pool_patch", "auto", "cpu") == "sparse"
    with pytest.raises(ValueError, match=r"backend 'triton' cannot run pool_patch on cpu; usable here: \['sparse', "
                                         r"'reference'\]"):
        ops.resolve("pool_patch", "triton", "cpu")
    x = torch.randn(1, 8, 3, 1)
    ops.pool_patch(x, 4, 2)
    assert len(calls) == 1
    torch.testing.assert_close(ops.pool_patch(x, 4, 2, backend="reference")[0], reference.pool_patch(x, 4, 2)[0])


def test_reference_backend_ops_equal_the_reference_functions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 4, generator=g)
    z = torch.randn(6, 5, generator=g)
    ref = dict(backend="reference")
    h = ops.knn_hypergraph(z, 3, **ref)
    torch.testing.assert_close(h, reference.knn_hypergraph(z, 3))
    torch.testing.assert_close(ops.hypergraph_mixprop(x, h, 2, 0.05, **ref),
                               reference.mixprop(x, lambda v: reference.hypergraph_propagate(v, h), 2, 0.05))
    a = ops.adaptive_graph(z, z.flip(0), 2, 3.0, **ref)
    torch.testing.assert_close(ops.graph_mixprop(x, a, 2, 0.05, transpose=True, **ref),
                               reference.mixprop(x, lambda v: reference.graph_propagate(v, a.T), 2, 0.05))
    assert torch.equal(ops.topk_neighbors(z, z, 2, **ref), reference.topk_neighbors(z, z, 2))


def test_every_backend_registers_both_ops_of_a_pair_and_those_built_on_sparse_all_of_its_ops():
    from sthfast.backends import faiss_search, sparse, triton

    assert set(triton.RUNS) == set(faiss_search.SEARCHES + faiss_search.FROM_SPARSE) == set(sparse.OPS)
    for constructor, propagation in ops.PAIRS:
        assert set(ops.implementations(constructor)) == set(ops.implementations(propagation)), (
            constructor, propagation)


def test_aliases_name_the_backend_whose_function_they_run_and_are_left_out_on_request():
    for op in ops.OPS:
        everything, own = ops.implementations(op), ops.implementations(op, aliases=False)
        assert set(own) <= set(everything) and "reference" in own
        for name, impl in everything.items():
            assert (name in own) is (impl.same_as is None)
            assert impl.same_as is None or impl.same_as in own        # an alias of a backend of its own
    assert ops.implementations("knn_hypergraph")["cpp"].same_as == "sparse"
    assert ops.implementations("hypergraph_mixprop")["faiss"].same_as == "sparse"
    assert "cpp" in ops.implementations("hypergraph_mixprop", aliases=False)


def test_a_structure_of_the_other_kind_is_a_clear_error_naming_its_builders():
    z, x = points(9, 4, torch.float32, seed=0), torch.randn(2, 3, 9, 5)
    dense, rows = ops.knn_hypergraph(z, 3, backend="reference"), ops.knn_hypergraph(z, 3, backend="sparse")
    with pytest.raises(ValueError, match=r"backend 'sparse' cannot propagate over a dense tensor, which backend\(s\) "
                                         r"\['reference'\] build"):
        ops.hypergraph_mixprop(x, dense, 2, 0.05, backend="sparse")
    with pytest.raises(ValueError, match=r"backend 'reference' cannot propagate over SparseRows, which backend\(s\) "
                                         r"\[.*'sparse'.*\] build: build the structure with ops.adaptive_graph"):
        ops.graph_mixprop(x, ops.adaptive_graph(z, z, 2, 3.0, backend="sparse"), 2, 0.05, backend="reference")
    with pytest.raises(ValueError, match="propagates over what ops.knn_hypergraph returns .* got list"):
        ops.hypergraph_mixprop(x, [dense], 2, 0.05)
    # auto propagates each kind with a backend that takes it
    torch.testing.assert_close(ops.hypergraph_mixprop(x, dense, 2, 0.05), ops.hypergraph_mixprop(x, rows, 2, 0.05))


def test_every_op_has_a_reference_with_its_name_and_every_record_is_filed_under_it():
    assert set(reference.OPS) == set(ops.OPS)
    for op in ops.OPS:
        impls = ops.implementations(op)
        assert impls["reference"].fn is getattr(reference, op)
        assert all(i.op == op and i.backend == name for name, i in impls.items())


def test_probe_reports_every_optional_piece():
    for name in optional_deps.OPTIONAL:
        found = optional_deps.probe(name)
        assert found.name == name and isinstance(found.ok, bool) and found.detail
    assert optional_deps.probe("cuda").ok == torch.cuda.is_available()
    with pytest.raises(ValueError, match="unknown optional piece"):
        optional_deps.probe("quantum")


# interpreted Triton does not compile
@pytest.mark.parametrize("backend", runnable("hypergraph_mixprop", exclude=("triton",)))
def test_construction_and_propagation_compile_as_one_graph(backend):
    """The fast paths' ops are custom ops or fixed-size torch ops: no graph break, forward or
    backward."""
    def spatial(z, m1, m2, x):
        h = ops.knn_hypergraph(z, 3, backend=backend)
        a = ops.adaptive_graph(m1, m2, 2, 3.0, backend=backend)
        return (ops.hypergraph_mixprop(x, h, 2, 0.05, backend=backend)
                + ops.graph_mixprop(x, a, 2, 0.05, transpose=True, backend=backend))

    args = [points(9, 4, torch.float32, seed=i).requires_grad_() for i in range(3)]
    args.append(features(2, 3, 9, 5, torch.float32, seed=3, grad=True))
    compiled = torch.compile(spatial, backend="aot_eager", fullgraph=True)
    got, want = compiled(*args), spatial(*args)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.sum(), args), torch.autograd.grad(want.sum(), args)):
        torch.testing.assert_close(a, b)
