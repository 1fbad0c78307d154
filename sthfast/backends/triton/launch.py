"""What every kernel launch needs: the accumulator type for a dtype, and the tensors' device made
current (Triton launches on the current CUDA device, not on the tensors')."""

from __future__ import annotations

import contextlib

import torch
import triton.language as tl
from torch import Tensor


def accumulator(dtype: torch.dtype):
    """float64 for float64 data, float32 otherwise (half precision included)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def on_device(tensor: Tensor):
    """A context making ``tensor``'s CUDA device current; nothing for CPU tensors (interpreter)."""
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()
