"""Benchmark helpers: peak resident memory of this process, recorded beside each timing."""

import resource
import sys


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux). It only
    grows across the cases of one run: select one case per process (``-k``) for its own peak."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / (1024 if sys.platform == "darwin" else 1)
