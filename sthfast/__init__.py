"""sthfast: a fast, drop-in implementation of STH-SepNet (KDD'25, arXiv 2505.19620).

``STHSepNetConfig`` holds the hyper-parameters, ``STHSepNet`` is the ``torch.nn.Module``;
``train`` / ``evaluate`` / ``predict`` (with ``TrainConfig``) are the main job, :mod:`sthfast.data` the
readers, :mod:`sthfast.ops` the dispatch point of the ops and :mod:`sthfast.reference` their
reference twins.

The names are imported on first use (torch and the training loop take seconds to import; the
command line's help needs neither).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {"STHSepNetConfig": "config", "STHSepNet": "model", "TrainConfig": "train_config",
            "train": "training", "evaluate": "evaluation", "predict": "evaluation"}

__all__ = ["STHSepNet", "STHSepNetConfig", "TrainConfig", "__version__", "evaluate", "predict", "train"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
