"""The ``triton`` backend's ops: Triton kernels for the tiled top-k search (:mod:`.topk_neighbors`), the
fused MixProp (:mod:`.mixprop`) and the projected MixProp (:mod:`.projected_mixprop`), plugged into
the structure builders and propagation of :mod:`sthfast.backends.sparse`, which are device-agnostic
torch index ops. Importing this module imports Triton (the package's ``__init__`` does not)."""

from __future__ import annotations

from ..sparse import backend_ops
from ..sparse.custom_ops import define_topk
from .mixprop import mixprop
from .projected_mixprop import projected
from .topk_neighbors import topk_neighbors

topk = define_topk("triton", topk_neighbors)
OPS = backend_ops(topk, fused=mixprop, projector=projected)

__all__ = ["OPS", "mixprop", "projected", "topk"]
