"""What this installation can run: optional dependencies and compiled pieces, found once, lazily.

Like PyG's ``typing.py``: every optional piece is probed with a guarded import and reported, never
required.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Found:
    """One optional piece: whether it can be used, its version, and why not if not."""

    name: str
    ok: bool
    detail: str


@functools.lru_cache(maxsize=None)
def probe(name: str) -> Found:
    """Probe one optional piece by name: ``triton``, ``faiss``, ``cuda``, ``extension``, ``cpu_bf16``
    (the CPU's bfloat16 matrix tiles)."""
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return Found(name, False, "not installed (pip install triton)")
        try:
            import triton  # noqa: PLC0415 (optional: a broken install must not break sthfast)
        except Exception as err:  # noqa: BLE001
            return Found(name, False, f"installed but fails to import: {err}")
        return Found(name, True, f"triton {triton.__version__}")
    if name == "faiss":
        if importlib.util.find_spec("faiss") is None:
            return Found(name, False, "not installed (pip install 'sthfast[faiss-cpu]' or '[faiss-gpu]')")
        try:
            import faiss  # noqa: PLC0415 (optional, imported only when probed)
        except Exception as err:  # noqa: BLE001 (a broken install must not break sthfast)
            return Found(name, False, f"installed but fails to import: {err}")
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        build = "GPU" if hasattr(faiss, "StandardGpuResources") else "CPU"
        return Found(name, True, f"faiss {faiss.__version__} ({build} build, {gpus} GPU(s) visible)")
    if name == "cuda":
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            return Found(name, False, f"no CUDA device (torch {torch.__version__} is {built})")
        return Found(name, True, f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    if name == "extension":
        from .backends import extension  # noqa: PLC0415

        if not extension.available():
            return Found(name, False, f"{extension.load()}: pool_patch runs the reference, "
                                      "MixProp the sparse backend")
        cuda = "with" if extension.has_cuda_kernels() else "without"
        return Found(name, True, f"sthfast._C, CPU kernels (MixProp: {extension.mixprop_isa()} copy), "
                                 f"{cuda} CUDA kernels")
    if name == "cpu_bf16":
        import torch  # noqa: PLC0415

        capabilities = getattr(torch.cpu, "get_capabilities", dict)()   # torch >= 2.8
        units = [label for key, label in (("amx_bf16", "AMX-BF16 tiles"), ("avx512_bf16", "AVX512-BF16"))
                 if capabilities.get(key)]
        if not units:
            return Found(name, False, "this CPU has no bfloat16 matrix instructions (AMX-BF16, "
                                      "AVX512-BF16; or torch cannot tell): bfloat16 training is off "
                                      "by default")
        return Found(name, True, f"{' and '.join(units)}: --bf16 is on by default")
    raise ValueError(f"unknown optional piece {name!r}")


OPTIONAL = ("cuda", "triton", "faiss", "extension", "cpu_bf16")


@functools.lru_cache(maxsize=None)
def triton_gpu_ok(device) -> bool:
    """Whether Triton can compile for this CUDA device (compute capability 7.0 or newer)."""
    import torch  # noqa: PLC0415

    return torch.cuda.get_device_capability(device) >= (7, 0)


def triton_interpreter() -> bool:
    """Whether Triton kernels run on the CPU through its interpreter (``TRITON_INTERPRET=1``, for
    tests: it must be set before Triton is first imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1" and probe("triton").ok
