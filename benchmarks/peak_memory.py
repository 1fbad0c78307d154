"""Benchmark helpers: the peak resident memory one call adds."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def own_peak_mib(fn) -> float:
    """Reset the resident high-water mark (Linux ``/proc/self/clear_refs``), call ``fn``, return the
    new mark minus the resident size before the call."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = _status_mib("VmRSS:")
    fn()
    return _status_mib("VmHWM:") - before


def call_peak_mib(module: str, factory: str, *args) -> float | None:
    """Peak memory one call of ``module.factory(*args)()`` adds, in MiB, measured in a fresh
    process (after one warm-up call) with ``MALLOC_MMAP_THRESHOLD_=65536``: allocations of 64 KiB
    and more are mapped on demand and returned on free, so that memory glibc kept from earlier frees
    cannot hide the call's growth. The timings run in the benchmark process, with the normal
    allocator. None where the high-water mark cannot be reset (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    code = (f"import peak_memory, {module} as m; "
            f"fn = m.{factory}(*{args!r}); fn(); print(peak_memory.own_peak_mib(fn))")
    path = os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH"))))   # benchmarks/ importable
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **MMAP_ENV, "PYTHONPATH": path},
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])
