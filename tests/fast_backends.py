"""The fast backends the tests compare with the reference on this machine."""

import torch

from sthfast import backends

TRITON_ON_GPU = backends.probe("triton").ok and torch.cuda.is_available()
FAST_BACKENDS = ["sparse"]
if TRITON_ON_GPU or backends.triton_interpreter():
    FAST_BACKENDS.append("triton")
# the whole model at N = 207: too slow for the interpreter (seconds per kernel launch), GPU only
MODEL_BACKENDS = ["sparse"] + (["triton"] if TRITON_ON_GPU else [])
