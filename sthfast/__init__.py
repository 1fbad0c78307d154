"""sthfast: a fast, drop-in implementation of STH-SepNet (KDD'25, arXiv 2505.19620).

``STHSepNetConfig`` holds the hyper-parameters, ``STHSepNet`` is the ``torch.nn.Module``,
:mod:`sthfast.ops` the dispatch point of the ops and :mod:`sthfast.reference` their reference twins.
"""

from .config import STHSepNetConfig
from .model import STHSepNet

__version__ = "0.1.0"
__all__ = ["STHSepNet", "STHSepNetConfig", "__version__"]
