import argparse
import json
import warnings

import pytest

from sthfast import STHSepNetConfig
from sthfast.config import FUSIONS, GRAPHS, HYPERGRAPHS

# The defaults of the authors' run_main.py (github jiawenchen10/ST-SepNet), as their argparse
# Namespace holds them.
AUTHORS_DEFAULTS = dict(
    task_name="long_term_forecast", is_training=1, model_id="test", model_comment="none", model="pool",
    seed=2021, data="outflow", root_path="dataset/Bike", data_path="outflow.csv",
    adjacency_path="adj.csv", features="M", target="OT", loader="modal", freq="5min",
    checkpoints="./checkpoints/", seq_len=48, label_len=48, pred_len=48, seasonal_patterns="Monthly",
    enc_in=295, dec_in=295, c_out=295, d_model=16, n_heads=8, e_layers=2, d_layers=1, d_ff=32,
    moving_avg=25, factor=1, dropout=0.1, embed="learned", activation="gelu", output_attention=False,
    patch_len=16, stride=8, prompt_domain=0, llm_model="deepseek2b", llm_dim=1536, node_num=295,
    fusion_gate="adaptive", num_workers=1, itr=1, train_epochs=50, align_epochs=10, batch_size=32,
    eval_batch_size=16, patience=10, learning_rate=0.00005, des="test", loss="MSE", lradj="multstep",
    pct_start=0.2, use_amp=False, llm_layers=6, percent=100, gcn_true=False, hgcn_true=True,
    hgat_true=True, scale_hyperedges=3, alpha=0.1, beta=0.2, gamma=0.5,
)


def test_defaults_follow_the_paper():
    c = STHSepNetConfig()
    assert (c.patch_len, c.stride, c.node_emb_dim, c.hyper_k, c.subgraph_size) == (16, 8, 40, 3, 20)
    assert (c.conv_channels, c.layers, c.gcn_depth, c.backbone) == (32, 3, 2, "minilm")
    assert c.num_patches == 6  # (48 - 16) / 8 + 2


def test_every_field_has_help():
    import dataclasses

    for f in dataclasses.fields(STHSepNetConfig):
        assert len(f.metadata.get("help", "")) > 10, f.name


def test_json_round_trip(tmp_path):
    c = STHSepNetConfig(num_nodes=5, hyper_k=2, fusion="lstm", lora_target_modules=["query"])
    assert STHSepNetConfig.from_json(c.to_json()) == c
    c.to_json(tmp_path / "c.json")
    assert STHSepNetConfig.from_json(tmp_path / "c.json") == c
    assert json.loads(c.to_json())["fusion"] == "lstm"


@pytest.mark.parametrize("bad, message", [
    ('{"num_nodes": 5, "colour": 1}', "unknown STHSepNetConfig fields: \\['colour'\\]"),
    ("[1, 2]", "must be an object"),
    ("{not json", "not valid JSON"),
    ("missing/config.json", "config file not found"),
    ('{"num_nodes": 5, ', "not valid JSON"),
])
def test_bad_json(bad, message):
    with pytest.raises(ValueError, match=message):
        STHSepNetConfig.from_json(bad)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(num_nodes=0), ValueError, "num_nodes=0"),
    (dict(num_nodes=2.5), TypeError, "num_nodes must be an int"),
    (dict(seq_len=8, patch_len=16), ValueError, "shorter than patch_len"),
    (dict(num_nodes=2, hyper_k=3), ValueError, "hyper_k=3 is larger than num_nodes=2: choose --hyper-k"),
    (dict(fusion="mean"), ValueError, "fusion='mean' is not one of"),
    (dict(hypergraph="kmeans"), ValueError, "hypergraph='kmeans'"),
    (dict(graph="full"), ValueError, "graph='full'"),
    (dict(backend="cuda-magic"), ValueError, "backend='cuda-magic'"),
    (dict(dropout=1.0), ValueError, "dropout=1.0 is outside"),
    (dict(prop_alpha=-0.1), ValueError, "prop_alpha"),
    (dict(conv_channels=30), ValueError, "multiple of 4"),
    (dict(in_features=2, target_feature=2), ValueError, "target_feature=2"),
    (dict(llm_layers=0), ValueError, "llm_layers=0"),
    (dict(hyper_temperature=0.0), ValueError, "hyper_temperature"),
    (dict(backbone=""), TypeError, "backbone"),
    (dict(revin="False"), TypeError, "revin must be True or False, got 'False'"),
    (dict(prompt=1), TypeError, "prompt must be True or False"),
    (dict(lora_target_modules=[]), TypeError, "lora_target_modules"),
    (dict(lora_target_modules=["query", 3]), TypeError, "lora_target_modules"),
])
def test_validation(overrides, error, message):
    with pytest.raises(error, match=message):
        STHSepNetConfig(**overrides)


def test_a_single_target_module_name_is_a_list_of_one():
    assert STHSepNetConfig(lora_target_modules="query").lora_target_modules == ["query"]


def test_choices_are_the_documented_sets():
    assert set(FUSIONS) == {"gate", "dense_gate", "attention", "lstm", "spatial_only", "temporal_only"}
    assert set(HYPERGRAPHS) == {"adaptive", "binary", "dynamic", "none"}
    assert set(GRAPHS) == {"adaptive", "static", "none"}


def test_from_authors_args_on_their_defaults():
    with pytest.warns(UserWarning, match="deepseek2b"):
        c = STHSepNetConfig.from_authors_args(argparse.Namespace(**AUTHORS_DEFAULTS))
    assert (c.num_nodes, c.seq_len, c.pred_len, c.patch_len, c.stride) == (295, 48, 48, 16, 8)
    assert (c.d_ff, c.d_model, c.n_heads, c.llm_layers, c.hyper_k) == (32, 16, 8, 6, 3)
    assert c.graph == "none"            # gcn_true=False
    assert c.hypergraph == "adaptive"   # hgcn_true=True
    assert c.fusion == "dense_gate" and c.reprogramming and c.prompt
    assert c.backbone == "minilm"


def test_from_authors_args_parses_string_booleans_and_overrides(tmp_path):
    args = dict(AUTHORS_DEFAULTS, gcn_true="True", hgcn_true="False", llm_model=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = STHSepNetConfig.from_authors_args(args, fusion="gate", llm_layers=None)
    assert (c.graph, c.hypergraph, c.fusion, c.backbone, c.llm_layers) == (
        "adaptive", "none", "gate", str(tmp_path), None)


@pytest.mark.parametrize("theirs, ours", [("adaptive", "dense_gate"), ("attentiongate", "attention"),
                                          ("lstmgate", "lstm"), ("hyperstgnn", "spatial_only")])
def test_from_authors_args_fusion_names(theirs, ours):
    assert STHSepNetConfig.from_authors_args(dict(node_num=5, fusion_gate=theirs)).fusion == ours


def test_from_authors_args_on_their_bert_bike_script():
    # The arguments of their scripts/BIKE/BERT_Bike.sh (string booleans as a shell passes them).
    args = dict(task_name="long_term_forecast", is_training="1", root_path="./dataset/Bike/",
                data_path="inflow.csv", model_id="Bike_48_48", model="pool", data="inflow",
                features="M", seq_len="48", label_len="48", pred_len="48", factor="3", enc_in="295",
                dec_in="295", c_out="295", des="Exp", itr="1", d_model="32", d_ff="32",
                batch_size="32", learning_rate="0.0003", llm_layers="12", train_epochs="30",
                model_comment="BERT", llm_model="BERT", llm_dim="768", node_num="295",
                fusion_gate="adaptive", gcn_true="True", hgcn_true="True")
    with pytest.warns(UserWarning, match="'BERT' is a hub name"):
        c = STHSepNetConfig.from_authors_args({k: _number(v) for k, v in args.items()}, llm_layers=None)
    assert (c.num_nodes, c.seq_len, c.pred_len, c.d_model, c.fusion) == (295, 48, 48, 32, "dense_gate")
    assert (c.graph, c.hypergraph) == ("adaptive", "adaptive")


def _number(text):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def test_from_authors_args_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"\['colour', 'zeta'\]"):
        STHSepNetConfig.from_authors_args(dict(AUTHORS_DEFAULTS, colour=1, zeta=2), backbone="minilm")
    with pytest.raises(ValueError, match="fusion_gate='mixer'"):
        STHSepNetConfig.from_authors_args(dict(node_num=3, fusion_gate="mixer"))
    with pytest.raises(ValueError, match="gcn_true='maybe' is not a boolean"):
        STHSepNetConfig.from_authors_args(dict(node_num=3, gcn_true="maybe"))
