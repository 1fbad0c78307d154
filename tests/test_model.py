"""The assembled model: every variant, gradients, frozen backbone, determinism, edge cases, bad input."""

import itertools

import numpy as np
import pytest
import torch

from sthfast import STHSepNet, STHSepNetConfig
from sthfast.config import FUSIONS, GRAPHS, HYPERGRAPHS
from sthfast.testing import block_count


def batch(config, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, config.seq_len, config.num_nodes, config.in_features, generator=g)


def adjacency(n, seed=0):
    return np.random.default_rng(seed).random((n, n)).astype(np.float32)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_shape(small_config, fusion):
    c = small_config(fusion=fusion)
    assert STHSepNet(c)(batch(c)).shape == (3, c.pred_len, c.num_nodes)


@pytest.mark.parametrize("fusion", ["gate", "dense_gate"])
def test_gate_init_sets_the_temporal_share_at_the_start(small_config, fusion):
    from sthfast.nn.fusion import FUSION_MODULES
    y_time, y_space = torch.ones(64, 6, 11), torch.zeros(64, 6, 11)      # the output is the share
    for share in (0.5, 0.1, 0.9):
        torch.manual_seed(0)
        gate = FUSION_MODULES[fusion](small_config(fusion=fusion, gate_init=share))
        assert gate(y_time, y_space).mean().item() == pytest.approx(share, abs=0.05)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="gate_init"):
            small_config(gate_init=bad)


@pytest.mark.parametrize("graph, hypergraph", list(itertools.product(GRAPHS, HYPERGRAPHS)))
def test_every_graph_and_hypergraph_shape(small_config, graph, hypergraph):
    c = small_config(graph=graph, hypergraph=hypergraph, fusion="spatial_only")
    model = STHSepNet(c, adjacency=adjacency(c.num_nodes) if graph == "static" else None)
    assert model(batch(c)).shape == (3, c.pred_len, c.num_nodes)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_every_backbone_kind(small_config, tiny_backbones, kind):
    c = small_config(backbone=tiny_backbones[kind], llm_layers=1)
    model = STHSepNet(c)
    assert model.temporal.num_layers == 1 and block_count(model.temporal.backbone) == 1
    assert model(batch(c)).shape == (3, c.pred_len, c.num_nodes)


def test_multifeature_input_and_target(small_config):
    c = small_config(in_features=3, target_feature=2, reprogramming=True)
    x = batch(c)
    assert STHSepNet(c)(x).shape == (3, c.pred_len, c.num_nodes)
    # the temporal stream reads only the target feature: the others change nothing there
    temporal = STHSepNet(small_config(in_features=3, target_feature=2, fusion="temporal_only")).eval()
    x2 = x.clone()
    x2[..., :2] += 5.0
    torch.testing.assert_close(temporal(x), temporal(x2))
    x2[..., 2] += 1.0
    assert not torch.allclose(temporal(x), temporal(x2))
    c2 = small_config(seq_len=20, pred_len=3, layers=3, dilation_exponential=2)  # T < receptive field
    assert STHSepNet(c2)(batch(c2)).shape == (3, 3, c2.num_nodes)


def _trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("overrides", [dict(), dict(hypergraph="dynamic", fusion="attention"),
                                        dict(reprogramming=True, fusion="lstm"),
                                        dict(fusion="dense_gate", graph="none"),
                                        dict(hyper_order="adaptive", hyper_k=5)])
def test_gradient_reaches_every_trainable_parameter_and_no_frozen_one(small_config, overrides):
    c = small_config(**overrides)
    model = STHSepNet(c)
    params = _trainable(model)
    assert any("lora_B" in n for n in params)
    model(batch(c)).pow(2).mean().backward()
    # At initialisation LoRA B = 0, so lora_A's gradient is exactly zero; it is checked after a step.
    for name, p in params.items():
        assert p.grad is not None, f"no gradient reaches {name}"
        if "lora_A" not in name:
            assert p.grad.abs().sum() > 0, f"zero gradient at {name}"
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not any("lora_" in n for n in frozen)
    torch.optim.SGD(params.values(), lr=0.1).step()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"frozen {name} changed"
    model.zero_grad()
    model(batch(c, seed=1)).pow(2).mean().backward()
    for name, p in params.items():
        if "lora_A" in name:
            assert p.grad.abs().sum() > 0, f"zero gradient at {name} after a step"


def test_hypergraph_embeddings_get_gradients_only_when_adaptive(small_config):
    c = small_config(fusion="spatial_only", graph="none")
    model = STHSepNet(c)
    model(batch(c)).sum().backward()
    assert model.spatial.hypergraph.embedding.weight.grad.abs().sum() > 0
    binary = STHSepNet(small_config(fusion="spatial_only", graph="none", hypergraph="binary"))
    assert not binary.spatial.hypergraph.embedding.weight.requires_grad


def test_backbone_weights_are_frozen(small_config):
    model = STHSepNet(small_config())
    for name, p in model.temporal.backbone.named_parameters():
        assert p.requires_grad == ("lora_" in name), name
    counts = model.parameter_counts()
    assert 0 < counts["lora"] < counts["trainable"] < counts["total"]


def test_dense_gate_is_quadratic_and_node_gate_is_not(small_config):
    def fusion_params(n, fusion):
        m = STHSepNet(small_config(num_nodes=n, fusion=fusion))
        return sum(p.numel() for p in m.fusion.parameters())

    assert fusion_params(40, "dense_gate") == 2 * 40 * 40 + 40
    assert fusion_params(40, "gate") - fusion_params(20, "gate") == 20 * 8  # node embeddings only


def test_deterministic_under_a_fixed_seed(small_config):
    c = small_config(dropout=0.2, lora_dropout=0.1)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = STHSepNet(c)
        torch.manual_seed(7)
        y = model(batch(c))
        y.sum().backward()
        outs.append((y.detach(), model.spatial.start.weight.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_prototypes_are_cached_only_without_gradients(small_config):
    c = small_config(reprogramming=True)
    model = STHSepNet(c).eval()
    x = batch(c)
    with torch.no_grad():
        y1 = model(x)
        first = model.temporal.prototype_cache.value
        y2 = model(x)
        assert model.temporal.prototype_cache.value is first
        torch.testing.assert_close(y1, y2)
        model.temporal.prototype_map.weight.add_(0.5)      # an optimizer step changes the version
        model(x)
        assert model.temporal.prototype_cache.value is not first
    assert model(x).requires_grad


def test_edge_cases_single_node_k_equals_n_and_empty_batch(small_config):
    one = small_config(num_nodes=1, hyper_k=1, subgraph_size=20)
    assert STHSepNet(one)(batch(one)).shape == (3, one.pred_len, 1)
    full = small_config(num_nodes=5, hyper_k=5, subgraph_size=5)
    model = STHSepNet(full)
    assert model(batch(full)).shape == (3, full.pred_len, 5)
    empty = model(torch.zeros(0, full.seq_len, 5))
    assert empty.shape == (0, full.pred_len, 5) and not empty.requires_grad  # documented: no graph


def test_clamp_to_the_training_range(small_config):
    c = small_config(clamp=True)
    model = STHSepNet(c)
    model.set_clamp_range(np.full(c.num_nodes, -0.01), np.full(c.num_nodes, 0.01))
    assert model(batch(c)).abs().max() <= 0.01
    with pytest.raises(ValueError, match=r"clamp_min must have shape \[11\]"):
        model.set_clamp_range(np.zeros(3), np.zeros(3))


@pytest.mark.parametrize("make_input, error, message", [
    (lambda c: torch.randn(2, c.seq_len), ValueError, r"\[B, T, N\] or \[B, T, N, F\], got shape \[2, 12\]"),
    (lambda c: torch.randn(2, c.seq_len + 1, c.num_nodes), ValueError, "T=13 time steps, the model expects seq_len=12"),
    (lambda c: torch.randn(2, c.seq_len, c.num_nodes + 1), ValueError, "N=12 nodes, the model expects num_nodes=11"),
    (lambda c: torch.randn(2, c.seq_len, c.num_nodes, 2), ValueError, "F=2 features, the model expects in_features=1"),
    (lambda c: torch.full((2, c.seq_len, c.num_nodes), float("nan")), ValueError, "NaN or inf"),
    (lambda c: torch.full((2, c.seq_len, c.num_nodes), float("inf")), ValueError, "NaN or inf"),
    (lambda c: torch.zeros(2, c.seq_len, c.num_nodes, dtype=torch.long), TypeError, "floating-point"),
    (lambda c: np.zeros((2, c.seq_len, c.num_nodes)), TypeError, "torch.Tensor"),
])
def test_bad_input(small_config, make_input, error, message):
    c = small_config()
    with pytest.raises(error, match=message):
        STHSepNet(c)(make_input(c))


def test_bad_construction(small_config):
    with pytest.raises(TypeError, match="STHSepNetConfig"):
        STHSepNet({"num_nodes": 3})
    with pytest.raises(ValueError, match="graph='static' needs an adjacency"):
        STHSepNet(small_config(graph="static"))
    with pytest.raises(ValueError, match=r"adjacency must be \[11, 11\], got \[3, 3\]"):
        STHSepNet(small_config(graph="static"), adjacency=np.ones((3, 3)))
    with pytest.raises(ValueError, match="finite and non-negative"):
        STHSepNet(small_config(graph="static"), adjacency=-np.ones((11, 11)))
    with pytest.raises(ValueError, match="d_ff=64 exceeds the backbone width d_llm=32"):
        STHSepNet(small_config(d_ff=64))
    with pytest.raises(ValueError, match="neither 'minilm' nor an existing folder"):
        STHSepNet(small_config(backbone="gpt2"))
    with pytest.raises(ValueError, match="llm_layers=9 but the backbone"):
        STHSepNet(small_config(llm_layers=9))


def test_spatial_only_loads_no_backbone(small_config):
    model = STHSepNet(small_config(fusion="spatial_only", backbone="/no/such/folder"))
    assert model.temporal is None
    assert STHSepNet(small_config(fusion="temporal_only", graph="static")).spatial is None


def test_the_model_keeps_its_own_copy_of_the_config(small_config):
    c = small_config()
    model = STHSepNet(c)
    c.gcn_depth = 5
    assert model.config.gcn_depth == 2 and model(batch(model.config)).shape[0] == 3


def test_temporal_only_output_is_a_plain_tensor(small_config):
    y = STHSepNet(small_config(fusion="temporal_only"))(batch(small_config()))
    assert y.is_contiguous()
    y.add_(1.0)


def test_prompt_is_tokenised_once_not_in_forward(small_config, monkeypatch):
    import transformers

    model = STHSepNet(small_config(prompt=True))
    assert model.temporal.prompt_embeddings.shape == (len(model.temporal.prompt_embeddings), 32)

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer ran inside forward")

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "__call__", refuse)
    y = model(batch(model.config))
    y.sum().backward()
    assert model.temporal.statistics_embedding.weight.grad.abs().sum() > 0


def test_input_check_can_be_switched_off(small_config):
    x = batch(small_config())
    x[0, 0, 0] = float("nan")
    assert torch.isnan(STHSepNet(small_config(check_inputs=False))(x)).any()


@pytest.mark.slow
def test_default_model_with_minilm_prompt_and_reprogramming():
    c = STHSepNetConfig(num_nodes=9, seq_len=24, pred_len=12, prompt=True, reprogramming=True,
                        num_prototypes=50)
    torch.manual_seed(0)
    model = STHSepNet(c)
    assert model.temporal.prompt_embeddings.shape[1] == 384
    y = model(batch(c, b=2))
    assert y.shape == (2, 12, 9)
    y.sum().backward()
    assert model.temporal.statistics_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["reference", "sparse"])
def test_adaptive_hyperedge_order_starts_as_the_fixed_one_and_learns_per_node(small_config, backend):
    from sthfast.reference import effective_order, membership_weights, topk_neighbors

    torch.manual_seed(0)
    fixed = STHSepNet(small_config(hyper_k=5, backend=backend))
    torch.manual_seed(0)
    adaptive = STHSepNet(small_config(hyper_k=5, hyper_order="adaptive", backend=backend))
    x = batch(fixed.config)
    assert torch.allclose(adaptive(x), fixed(x), atol=1e-6)
    hyper = adaptive.spatial.hypergraph
    assert hyper.log_temperature.shape == (11,)
    adaptive(x).pow(2).mean().backward()
    assert hyper.log_temperature.grad.abs().sum() > 0
    with torch.no_grad():                       # one hyperedge cold, one hot: orders ~1 and ~k
        hyper.log_temperature[0], hyper.log_temperature[1] = -20.0, 20.0
        z = hyper.node_features(None)
        weights = membership_weights(z, topk_neighbors(z, z, 5, "l2", True), False, hyper.temperatures())
        order = effective_order(weights)
    assert order[0] == pytest.approx(1.0, abs=1e-3) and order[1] == pytest.approx(5.0, abs=1e-3)
    with pytest.raises(ValueError, match="hyper_order='adaptive' .* not 'binary'"):
        small_config(hyper_order="adaptive", hypergraph="binary")
