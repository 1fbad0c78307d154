"""The ``triton`` backend's ops: Triton kernels for the tiled top-k search (:mod:`.topk_neighbors`) and the
sparse gather primitive (:mod:`.mixprop`), plugged into the structure builders and propagation of
:mod:`sthfast.backends.sparse`, which are device-agnostic torch index ops. Importing this module
imports Triton (the package's ``__init__`` does not)."""

from __future__ import annotations

from ..sparse import backend_ops
from ..sparse.custom_ops import define_spmm, define_topk
from . import mixprop as _kernels
from .topk_neighbors import topk_neighbors

spmm = define_spmm("triton", _kernels.csr_rows, _kernels.sampled_dot)
topk = define_topk("triton", topk_neighbors)
OPS = backend_ops(spmm, topk)

__all__ = ["OPS", "spmm", "topk"]
