"""Where the spatial stream's time goes: the per-stage latency profile of :mod:`sthfast.profiler`
(also ``sthfast profile``), runnable from a checkout:

    python python/profile_hypergraph.py [--nodes N] [--batch B] [--trace trace.json] [--json out.json]
"""

import sys

from sthfast.profiler import SCENARIOS, STAGES, main

__all__ = ["SCENARIOS", "STAGES", "main"]

if __name__ == "__main__":
    try:
        main(sys.argv[1:], command="python python/profile_hypergraph.py")
    except ValueError as err:                        # bad flags: one line, as `sthfast profile` does
        sys.exit(f"profile_hypergraph.py: error: {err}")
