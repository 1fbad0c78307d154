"""Checkpoints: weights in safetensors, metadata in JSON, trainer state loadable with
``weights_only=True``; nothing in a checkpoint can execute code when it is loaded.

A checkpoint folder holds ``model-<tag>.safetensors`` (every parameter and buffer except the frozen
backbone weights, which are re-read from the backbone folder), optionally ``trainer_state-<tag>.pt``
(optimizer, scheduler, RNG, progress), and ``meta.json`` (config, scaler, data fingerprint, epoch,
the names and SHA-256 of the other files). Each save writes files under a fresh tag, each atomically
(temporary file + ``os.replace``), then replaces ``meta.json``, then deletes the files of older tags:
a crash at any point leaves ``meta.json`` naming a complete, consistent set.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import STHSepNetConfig
from .nn.backbone import backbone_fingerprint

META = "meta.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or made for another model or dataset."""


def _umask() -> int:
    mask = os.umask(0o022)            # reading the umask sets it: put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and move the result over ``path`` with ``os.replace``. The file gets
    the mode a plain ``open`` would give it (0666 less the umask; the temporary file is 0600), so
    that others can read a run folder where the umask lets them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
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
    """Write a checkpoint folder crash-safely (see the module docstring)."""
    folder = Path(folder)
    tag = uuid.uuid4().hex[:12]
    files = {"weights": f"model-{tag}.safetensors"}
    atomic_write(folder / files["weights"], lambda tmp: save_file(trainable_state(model), str(tmp)))
    if trainer_state is not None:
        files["trainer_state"] = f"trainer_state-{tag}.pt"
        atomic_write(folder / files["trainer_state"], lambda tmp: torch.save(trainer_state, tmp))
    record = dict(meta, format_version=FORMAT_VERSION, config=model.config.to_dict(), files=files,
                  sha256={name: _sha256(folder / name) for name in files.values()})
    atomic_write_text(folder / META, json.dumps(record, indent=2, sort_keys=True) + "\n")
    for stale in folder.iterdir():  # older tags, and temporary files of an interrupted save
        if stale.name not in files.values() and stale.name != META:
            stale.unlink()


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
    for name, digest in meta.get("sha256", {}).items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            raise CheckpointError(f"{folder / name}: missing or does not match {META} (changed by hand?)")
    return meta


def load_checkpoint(folder: str | Path, model_class):
    """Build ``model_class`` (:class:`sthfast.STHSepNet`) from a checkpoint folder, or a run folder's
    best checkpoint, and load its weights (no code is executed from the files: safetensors and
    JSON only). Returns ``(model, meta)``: ``meta`` holds the scaler and the training metadata."""
    folder = Path(folder)
    if not (folder / META).exists() and (folder / "checkpoint" / "best" / META).exists():
        folder = folder / "checkpoint" / "best"
    meta = read_meta(folder)
    config = STHSepNetConfig.from_dict(meta["config"])
    if config.uses_llm and meta.get("backbone_fingerprint") != backbone_fingerprint(config.backbone):
        raise CheckpointError(f"{folder}: the backbone at {config.backbone!r} is not the one this "
                              "checkpoint was trained with (config or weight files differ)")
    weights = load_file(str(Path(folder) / meta["files"]["weights"]))
    static = None
    if config.graph == "static" and config.uses_spatial:
        n = config.num_nodes
        if "spatial.static_adjacency" in weights:          # written before the edges were stored
            dense = weights.pop("spatial.static_adjacency").to_sparse().coalesce()
            weights["spatial.static_index"], weights["spatial.static_weight"] = dense.indices(), dense.values()
        static = torch.sparse_coo_tensor(weights["spatial.static_index"], weights["spatial.static_weight"],
                                         (n, n), check_invariants=True)
    model = model_class(config, adjacency=static)
    load_weights(model, folder, meta, weights)
    return model, meta


def load_weights(model, folder: str | Path, meta: dict | None = None, weights: dict | None = None) -> None:
    """Load the checkpoint's weights into ``model``; every saved and every expected key must match."""
    meta = meta or read_meta(folder)
    weights = weights if weights is not None else load_file(str(Path(folder) / meta["files"]["weights"]))
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


def load_trainer_state(folder: str | Path, meta: dict) -> dict:
    """The optimizer / scheduler / RNG state, read with ``weights_only=True``."""
    name = meta["files"].get("trainer_state")
    if name is None:
        raise CheckpointError(f"{folder}: no trainer state to resume from")
    return torch.load(Path(folder) / name, weights_only=True)
