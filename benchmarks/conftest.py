"""Benchmark helpers: peak resident memory, of the process and of one call.

A call's own peak is read from the resident high-water mark, which sees only memory that grows the
resident set: memory that glibc kept from earlier frees would hide it. So the benchmark process
runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (allocations of 64 KiB and more are mapped on demand and
returned on free): this module re-executes pytest with it set if it is not. Both backends of every
comparison run under the same setting.
"""

import os
import resource
import sys
from typing import Callable

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and sys.platform.startswith("linux"):
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[1:]])


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux). It only
    grows across the cases of one run: use :func:`call_peak_mib` for one call's own peak."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / (1024 if sys.platform == "darwin" else 1)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def call_peak_mib(fn: Callable[[], object]) -> float | None:
    """Peak memory ``fn()`` adds to this process, in MiB: the resident high-water mark is reset
    (Linux ``/proc/self/clear_refs``), ``fn`` runs, and the new mark minus the resident size before
    the call is returned; None where the kernel does not offer the reset."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        before = _status_mib("VmRSS:")
    except OSError:
        return None
    fn()
    return _status_mib("VmHWM:") - before
