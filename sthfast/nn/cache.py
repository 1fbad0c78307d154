"""One cache for values built from a module's tensors (graphs, hypergraphs, prototypes)."""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class TensorCache:
    """A value built from some tensors, kept while the caller says it may be (``keep``) and rebuilt
    when any of them changes: an optimizer step, ``load_state_dict`` or ``copy_`` bumps a tensor's
    version, a move to another device or dtype changes its storage. Writes through ``.data`` bypass
    version counting: call :meth:`clear` after them. Tensors created under
    ``torch.inference_mode`` have no version counter, so nothing is cached for them."""

    def __init__(self):
        self.key, self.value = None, None

    def clear(self) -> None:
        self.key = self.value = None

    def get(self, tensors: Iterable[Tensor], build: Callable[[], T], keep: bool = True) -> T:
        tensors = list(tensors)
        if not keep or any(t.is_inference() for t in tensors):
            self.clear()
            return build()
        key = (torch.is_inference_mode_enabled(), *((t.data_ptr(), t.device, t.dtype, t._version) for t in tensors))
        if key != self.key:
            self.key, self.value = key, build()
        return self.value


def frozen(module: torch.nn.Module) -> bool:
    """Whether ``module``'s parameters cannot change during this call: eval mode, gradients off."""
    return not module.training and not torch.is_grad_enabled()
