"""Shared fixtures: tiny random Hugging Face backbones written locally (never downloaded) and a
small-model config factory, so that most tests build models in well under a second. Without a
GPU, switches on Triton's interpreter so that the ``triton`` backend is tested on the CPU, and
records its kernel launches, which ``test_triton_aot.py`` (run after every other test) compiles
for real GPU targets; ``STHFAST_TRITON_LAUNCHES=FILE`` writes them to FILE at the end."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # Triton kernels run on the CPU through the interpreter, which
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be on before Triton is first imported

import json

import pytest

from sthfast import STHSepNetConfig, optional_deps
from sthfast.backends.triton import aot


def pytest_configure(config):
    if optional_deps.triton_interpreter() and optional_deps.probe("triton").ok:
        aot.start_recording()


def pytest_collection_modifyitems(config, items):
    """The ``triton_aot`` tests last: they compile the launches that the others recorded."""
    items.sort(key=lambda item: item.get_closest_marker("triton_aot") is not None)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("STHFAST_TRITON_LAUNCHES"):
        with open(os.environ["STHFAST_TRITON_LAUNCHES"], "w") as file:
            json.dump([launch.to_json() for launch in aot.RECORDED], file)


def _save_tiny(kind: str, path) -> None:
    import transformers as tf

    common = dict(vocab_size=100, num_hidden_layers=2)
    if kind == "bert":
        config = tf.BertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=128, **common)
    elif kind == "gpt2":
        config = tf.GPT2Config(n_embd=32, n_head=2, n_positions=128, **common)
    elif kind == "llama":
        config = tf.LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                                intermediate_size=64, max_position_embeddings=128, **common)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    tf.AutoModel.from_config(config).save_pretrained(path)
    if kind == "bert":  # a 100-word vocabulary, so that prompts can be tested without MiniLM
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.:,;")
        words += ["dataset", "description", "task", "forecast", "the", "next", "steps", "given",
                  "previous", "input", "statistics", "sensor", "readings", "of", "a", "network"]
        words += [str(i) for i in range(100 - len(words))]
        (path / "vocab.txt").write_text("\n".join(words[:100]) + "\n")
        tf.BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> dict[str, str]:
    """Folders of 2-layer, 32-wide random BERT, GPT-2 and LLaMA models."""
    root = tmp_path_factory.mktemp("backbones")
    paths = {}
    for kind in ("bert", "gpt2", "llama"):
        _save_tiny(kind, root / kind)
        paths[kind] = str(root / kind)
    return paths


@pytest.fixture
def small_config(tiny_backbones):
    """``small_config(**overrides)``: a config small enough to build and run in milliseconds."""

    def make(**overrides) -> STHSepNetConfig:
        values = dict(num_nodes=11, seq_len=12, pred_len=6, patch_len=4, stride=2, d_ff=16,
                      node_emb_dim=8, subgraph_size=4, conv_channels=8, residual_channels=8,
                      skip_channels=8, end_channels=16, layers=2, gate_hidden=8, num_prototypes=10,
                      d_model=8, n_heads=2, backbone=tiny_backbones["bert"], dropout=0.0,
                      lora_dropout=0.0)
        values.update(overrides)
        return STHSepNetConfig(**values)

    return make
