"""The fast paths of :mod:`sthfast.ops`, one module or package per backend: ``sparse/`` (torch CSR
ops, CPU and CUDA), ``triton/`` (GPU kernels), ``extension`` (the compiled ``sthfast._C``: ``cpp``
on the CPU, ``cuda`` on GPUs) and ``faiss_search`` (FAISS neighbour search). The dense reference
is :mod:`sthfast.reference`.

This module defines the backend names only (no torch import), so that the config can offer them.
"""

# the order in which ``backend="auto"`` tries them, per op and device
AUTO_ORDER = ("triton", "cuda", "cpp", "faiss", "sparse", "reference")
BACKENDS = ("auto",) + AUTO_ORDER
