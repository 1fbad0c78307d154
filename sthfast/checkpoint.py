"""Checkpoints: weights in safetensors, metadata in JSON, trainer state loadable with
``weights_only=True``; every file written atomically, the manifest last.

A checkpoint folder holds ``model.safetensors`` (every parameter and buffer except the frozen
backbone weights, which are re-read from the backbone folder), optionally ``trainer_state.pt``
(optimizer, scheduler, RNG, history), and ``meta.json`` (config, scaler, data fingerprint, epoch,
and the SHA-256 of the other files). ``meta.json`` is replaced last, so a crash leaves either the
old checkpoint or the new one, and a mismatch between files is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import STHSepNetConfig

WEIGHTS, STATE, META = "model.safetensors", "trainer_state.pt", "meta.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or made for another model or dataset."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and move the result over ``path`` with ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without the frozen backbone weights (LoRA adapters are kept)."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if not (k.startswith("temporal.backbone.") and "lora_" not in k)}


def save(folder: str | Path, model, meta: dict[str, Any], trainer_state: dict | None = None) -> None:
    """Write a checkpoint folder atomically (see the module docstring)."""
    folder = Path(folder)
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(trainable_state(model), str(tmp)))
    files = {WEIGHTS: _sha256(folder / WEIGHTS)}
    if trainer_state is not None:
        atomic_write(folder / STATE, lambda tmp: torch.save(trainer_state, tmp))
        files[STATE] = _sha256(folder / STATE)
    record = dict(meta, format_version=FORMAT_VERSION, config=model.config.to_dict(), files=files)
    atomic_write_text(folder / META, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The manifest, after checking every file it names is present and unchanged."""
    folder = Path(folder)
    if not (folder / META).is_file():
        raise CheckpointError(f"{folder}: no checkpoint here ({META} missing)")
    try:
        meta = json.loads((folder / META).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{folder / META}: damaged ({err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder}: checkpoint format {meta.get('format_version')} is not {FORMAT_VERSION}")
    for name, digest in meta.get("files", {}).items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            raise CheckpointError(f"{folder / name}: missing or does not match {META} (interrupted write?)")
    return meta


def load_model(folder: str | Path, model_class):
    """Build ``model_class`` from the checkpoint's config and load its weights (no code is executed
    from the files: safetensors and JSON only). Returns ``(model, meta)``."""
    meta = read_meta(folder)
    config = STHSepNetConfig.from_dict(meta["config"])
    model = model_class(config, adjacency=_static_adjacency(config, folder))
    load_weights(model, folder)
    return model, meta


def _static_adjacency(config: STHSepNetConfig, folder: str | Path):
    if config.graph != "static":
        return None
    return load_file(str(Path(folder) / WEIGHTS))["spatial.static_adjacency"]


def load_weights(model, folder: str | Path) -> None:
    """Load ``model.safetensors`` into ``model``; every saved and every expected key must match."""
    weights = load_file(str(Path(folder) / WEIGHTS))
    expected = set(trainable_state(model))
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not fit this model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    own = model.state_dict()
    for key, value in weights.items():
        if own[key].shape != value.shape:
            raise CheckpointError(f"{folder}: {key} is {list(value.shape)} in the checkpoint but "
                                  f"{list(own[key].shape)} in the model (different N or config?)")
    model.load_state_dict(weights, strict=False)


def load_trainer_state(folder: str | Path) -> dict:
    """The optimizer / scheduler / RNG state, read with ``weights_only=True``."""
    path = Path(folder) / STATE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no trainer state to resume from")
    return torch.load(path, weights_only=True)
