"""Data: readers for the formats users have, the embedded LOS-LOOP dataset, and the protocol's
chronological splits, per-node scaler and lazy sliding windows.

The readers need numpy only; the windows (:mod:`sthfast.data.windows`, torch tensors) are imported
on first use, so that the command line's flags and help import no torch."""

from __future__ import annotations

import importlib

from .adjacency import load_adjacency
from .embedded import embedded_path, load_embedded
from .formats import DataError, DataWarning, SensorSeries, load_series

_WINDOWS = ("Scaler", "SplitData", "WindowDataset", "fill_target_gaps", "model_inputs", "prepare", "unseen_nodes")

__all__ = ["DataError", "DataWarning", "SensorSeries", "embedded_path", "load_adjacency", "load_embedded",
           "load_series", *_WINDOWS]


def __getattr__(name: str):
    if name in _WINDOWS:
        return getattr(importlib.import_module(".windows", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
