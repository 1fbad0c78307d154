"""Data: readers for the formats users have, the embedded LOS-LOOP dataset, and the protocol's
chronological splits, per-node scaler and lazy sliding windows."""

from .adjacency import load_adjacency
from .embedded import embedded_path, load_embedded
from .formats import DataError, DataWarning, SensorSeries, load_series
from .windows import Scaler, SplitData, WindowDataset, model_inputs, prepare, unseen_nodes

__all__ = ["DataError", "DataWarning", "Scaler", "SensorSeries", "SplitData", "WindowDataset", "embedded_path", "model_inputs",
           "load_adjacency", "load_embedded", "load_series", "prepare", "unseen_nodes"]
