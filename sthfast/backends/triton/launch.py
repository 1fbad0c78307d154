"""What every kernel launch needs: the accumulator type for a dtype, the tensors' device made
current (Triton launches on the current CUDA device, not on the tensors'), and the register cap."""

from __future__ import annotations

import contextlib

import torch
import triton.language as tl
from torch import Tensor

MAX_REGISTERS = 255
"""``maxnreg`` of every launch: left to itself, ptxas stops some kernels at 128 registers and spills
a few bytes; allowed the architecture's 255, it uses what they need (tests/test_triton_aot.py)."""


def accumulator(dtype: torch.dtype):
    """float64 for float64 data, float32 otherwise (half precision included)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def on_device(tensor: Tensor):
    """A context making ``tensor``'s CUDA device current; nothing for CPU tensors (interpreter)."""
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()
