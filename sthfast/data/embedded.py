"""The dataset shipped with the package: LOS-LOOP, one week of METR-LA (207 freeway loop detectors,
5-minute speed in mph, with its road graph). Provenance and licence: ``PROVENANCE.md`` here."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

EMBEDDED_NAME = "los_loop.npz"
EMBEDDED_UNITS = "mph"          # the file holds no units array; METR-LA's speeds are in miles per hour


def embedded_path() -> Path:
    """Path of the embedded LOS-LOOP ``.npz`` (``data [2016, 207]``, ``adj [207, 207]``,
    ``timestamps [2016]``, ``sensor_ids [207]``)."""
    return Path(str(resources.files(__package__).joinpath(EMBEDDED_NAME)))


def load_embedded() -> dict[str, np.ndarray]:
    """The embedded dataset's arrays, read without pickle."""
    with np.load(embedded_path(), allow_pickle=False) as z:
        return {key: z[key] for key in z.files}
