"""Which fast paths the tests compare with the reference, on which device: every implementation
registered for an op (``sthfast.ops.implementations``), on the CPU and on CUDA, as pytest
parameters ``(backend, device)``; the pairs that cannot run on this machine are skipped with the
reason. On a machine without a GPU that leaves ``sparse``, ``cpp`` (where the extension is built),
``faiss`` (where FAISS is installed) and ``triton`` (through its interpreter, which
``conftest.py`` switches on); on a GPU machine the CUDA cases run the kernels compiled for real."""

from __future__ import annotations

import pytest
import torch

from sthfast import ops, optional_deps
from sthfast.backends import extension

DEVICES = ("cpu", "cuda")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
needs_cpp = pytest.mark.skipif(not extension.available(), reason=f"the C++ extension is not built: {extension.load()}")
# backends made for one kind of device only: never offered for the other
ONLY_ON = {"cpp": "cpu", "cuda": "cuda"}


def _why_not(op: str, backend: str, device: str) -> str | None:
    if device == "cuda" and not CUDA:
        return "needs a CUDA device"
    if ops.implementations(op)[backend].runs(torch.device(device)):
        return None
    return {("triton", "cpu"): "Triton runs on the CPU only under TRITON_INTERPRET=1, which conftest.py sets only "
                               "without a GPU",
            ("triton", "cuda"): f"needs Triton: {optional_deps.probe('triton').detail}",
            ("faiss", "cpu"): f"needs FAISS: {optional_deps.probe('faiss').detail}",
            ("faiss", "cuda"): "needs a GPU build of FAISS (pip install 'sthfast[faiss-gpu]')",
            ("cpp", "cpu"): f"the C++ extension is not built: {extension.load()}",
            ("cuda", "cuda"): "the extension was built without its CUDA kernels",
            }.get((backend, device), f"{backend} cannot run {op} on {device} here (see `sthfast info`)")


def fast_paths(op: str, devices: tuple[str, ...] = DEVICES, exclude: tuple[str, ...] = ()) -> list:
    """``pytest.param(backend, device)`` for every fast path of ``op`` (not ``exclude``, nor an
    alias of another backend's: ``Implementation.same_as``) on each of ``devices``, with ids like
    ``sparse-cpu``."""
    params = []
    for device in devices:
        for backend in ops.implementations(op, aliases=False):
            if backend == "reference" or backend in exclude or ONLY_ON.get(backend, device) != device:
                continue
            why = _why_not(op, backend, device)
            marks = [pytest.mark.gpu] if device == "cuda" else []
            marks += [pytest.mark.skip(reason=why)] if why else []
            params.append(pytest.param(backend, device, id=f"{backend}-{device}", marks=marks))
    return params


def runnable(op: str, device: str = "cpu", exclude: tuple[str, ...] = ()) -> list[str]:
    """The fast paths of ``op`` that run on ``device`` on this machine."""
    return [p.values[0] for p in fast_paths(op, (device,), exclude)
            if not any(m.name == "skip" for m in p.marks)]


def interpreted(backend: str, device: str) -> bool:
    """Whether ``backend`` runs through Triton's interpreter here (slow: small cases only)."""
    return backend == "triton" and device == "cpu"


def tolerance(dtype: torch.dtype, device: str) -> dict:
    """``assert_close`` tolerances of a fast path against the reference: float64 on the CPU agrees
    to rounding; CUDA sums in other orders (torch's float64 defaults); float32 to its precision."""
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10) if device == "cpu" else dict(rtol=1e-7, atol=1e-7)
    return dict(rtol=2e-4, atol=2e-5)
