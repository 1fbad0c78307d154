"""sthfast: a fast, drop-in implementation of STH-SepNet (KDD'25, arXiv 2505.19620).

``STHSepNetConfig`` holds the hyper-parameters, ``STHSepNet`` is the ``torch.nn.Module``;
``train`` / ``evaluate`` / ``predict`` (with ``TrainConfig``) are the main job, :mod:`sthfast.data` the
readers, :mod:`sthfast.ops` the dispatch point of the ops and :mod:`sthfast.reference` their
reference twins.
"""

__version__ = "0.1.0"

from .config import STHSepNetConfig  # noqa: E402
from .model import STHSepNet  # noqa: E402
from .training import TrainConfig, evaluate, predict, train  # noqa: E402

__all__ = ["STHSepNet", "STHSepNetConfig", "TrainConfig", "__version__", "evaluate", "predict", "train"]
