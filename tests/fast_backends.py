"""The fast backends the tests compare with the reference on this machine."""

import os

import torch

from sthfast import backends

FAST_BACKENDS = ["sparse"]
if backends.probe("triton").ok and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    FAST_BACKENDS.append("triton")
