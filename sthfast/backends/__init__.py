"""The fast paths of :mod:`sthfast.ops`, one module or package per backend: ``sparse/`` (torch CSR
ops, CPU and CUDA), ``triton/`` (GPU kernels), ``extension`` (the compiled ``sthfast._C``: ``cpp``
on the CPU, ``cuda`` on GPUs) and ``faiss_search`` (FAISS neighbour search). The dense reference
is :mod:`sthfast.reference`.

Each of them exports ``IMPLEMENTATIONS``, one :class:`Implementation` per op it implements, which
:mod:`sthfast.ops` registers. This module imports no torch, so that the config can offer the names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# the order in which ``backend="auto"`` tries them, per op and device
AUTO_ORDER = ("triton", "cuda", "cpp", "faiss", "sparse", "reference")
BACKENDS = ("auto",) + AUTO_ORDER

DeviceTest = Callable[[Any], bool]         # torch.device -> bool


def anywhere(device) -> bool:
    return True


def nowhere(device) -> bool:
    return False


@dataclass(frozen=True)
class Implementation:
    """``backend``'s ``fn`` for the op ``op`` (called with the op's arguments, positionally, after
    :mod:`sthfast.ops` checked them). ``auto`` takes it on the devices ``auto_on`` accepts, for
    point sets of at least ``min_points`` (neighbour searches); named, it runs wherever ``runs_on``
    accepts (default: ``auto_on``; wider where ``auto`` should not pick it). ``same_as``: the
    backend whose function this one runs (an alias, there so that naming ``backend`` works for
    every op of a family): tests, ``sthfast info`` and benchmarks leave aliases out."""

    op: str
    backend: str
    fn: Callable
    auto_on: DeviceTest = anywhere
    runs_on: DeviceTest | None = None
    min_points: int = 0
    same_as: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in AUTO_ORDER or self.same_as not in (None, *AUTO_ORDER):
            raise ValueError(f"backend {self.backend!r} / same_as {self.same_as!r} is not one of {list(AUTO_ORDER)}")

    def runs(self, device) -> bool:
        return (self.runs_on or self.auto_on)(device)
