"""``python -m sthfast``: the command line (also ``torchrun -m sthfast train ...``)."""

import sys

from .cli import main

sys.exit(main())
