"""Backbone loading: local folders only, truncation checked, frozen weights, live LoRA adapters."""

import pytest
import torch

from sthfast.nn.backbone import embedded_backbone_path, load_backbone
from sthfast.testing import block_count


def load(path, layers=None, rank=4, targets=None):
    return load_backbone(path, layers, rank, 8.0, 0.0, targets)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_tiny_backbones_load_truncate_and_adapt(tiny_backbones, kind):
    bb = load(tiny_backbones[kind], layers=1)
    assert bb.d_llm == 32 and bb.num_layers == 1 and bb.word_embeddings.shape == (100, 32)
    assert block_count(bb.model) == 1 and block_count(load(tiny_backbones[kind], rank=0).model) == 2
    out = bb.model(inputs_embeds=torch.randn(2, 5, 32)).last_hidden_state
    assert out.shape == (2, 5, 32)
    trainable = [n for n, p in bb.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    out.sum().backward()
    grads = {n: p.grad for n, p in bb.model.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_llm_layers_larger_than_the_model_names_both_numbers(tiny_backbones):
    with pytest.raises(ValueError, match="llm_layers=5 but the backbone at .* has only 2 layers"):
        load(tiny_backbones["bert"], layers=5)


def test_missing_and_invalid_backbones(tmp_path):
    with pytest.raises(ValueError, match="neither 'minilm' nor an existing folder"):
        load("bert-base-uncased")
    with pytest.raises(ValueError, match="neither 'minilm' nor an existing folder"):
        load(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="has no config.json"):
        load(str(tmp_path))


def test_lora_rank_zero_freezes_everything(tiny_backbones):
    bb = load(tiny_backbones["gpt2"], rank=0)
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_lora_with_wrong_target_modules_is_a_clear_error(tiny_backbones):
    with pytest.raises(ValueError, match="lora_target_modules"):
        load(tiny_backbones["bert"], targets=["no_such_projection"])


def test_prompt_needs_a_tokenizer(tiny_backbones):
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_backbone(tiny_backbones["gpt2"], None, 0, 1.0, 0.0, None, need_tokenizer=True)
    assert load_backbone(tiny_backbones["bert"], None, 0, 1.0, 0.0, None, need_tokenizer=True).tokenizer


def test_weights_that_do_not_fit_the_config_are_refused(tiny_backbones, tmp_path):
    import json
    import shutil

    folder = tmp_path / "renamed"
    shutil.copytree(tiny_backbones["bert"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 48          # the saved tensors are 64 wide
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no weights that fit its config"):
        load(str(folder))
    config["intermediate_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    dropped = next(k for k in tensors if "attention.self.query.weight" in k)
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="tensors would be random"):
        load(str(folder))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights that fit its config"):
        load(str(folder))


@pytest.mark.slow
def test_embedded_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (embedded_backbone_path() / "model.safetensors").is_file()
    bb = load_backbone("minilm", None, 8, 16.0, 0.0, None, need_tokenizer=True)
    assert (bb.d_llm, bb.num_layers, bb.word_embeddings.shape[0]) == (384, 6, 30522)
    assert bb.tokenizer("traffic")["input_ids"]
