"""Readers for sensor time series: ``.npz``, DCRNN-style pandas ``.h5``, ``.csv``.

Every reader returns a :class:`SensorSeries` with missing values as NaN, and every failure is one
:class:`DataError` naming the file and the problem.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embedded import EMBEDDED_UNITS, embedded_path

EMBEDDED = "embedded"
TIME_HEADERS = ("time", "date", "datetime", "timestamp", "timestamps")


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


class DataWarning(UserWarning):
    """A data file that can be used, with a problem the run works around (named in the message)."""


@dataclass
class SensorSeries:
    """A network's series: ``values [T, N, F]`` float32 (NaN = missing), optional
    ``timestamps [T]`` (datetime64[s]), ``adjacency [N, N]``, ``node_ids [N]`` and the values'
    ``units`` (e.g. "mph"; for plots and reports)."""

    values: np.ndarray
    source: str
    timestamps: np.ndarray | None = None
    adjacency: np.ndarray | None = None
    node_ids: np.ndarray | None = None
    units: str | None = None

    @property
    def num_steps(self) -> int:
        return self.values.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.values.shape[1]

    def select_nodes(self, keep: np.ndarray | list[int]) -> "SensorSeries":
        """The series of nodes ``keep`` only (values, adjacency and ids), in that order."""
        keep = np.asarray(keep, dtype=np.int64)
        adjacency = None if self.adjacency is None else self.adjacency[np.ix_(keep, keep)]
        ids = None if self.node_ids is None else self.node_ids[keep]
        return SensorSeries(self.values[:, keep], self.source, self.timestamps, adjacency, ids, self.units)

    def fingerprint(self) -> str:
        """SHA-256 of the values (NaN-aware) and shape: identifies the data a checkpoint saw."""
        digest = hashlib.sha256(str(self.values.shape).encode())
        digest.update(np.ascontiguousarray(self.values).tobytes())
        return digest.hexdigest()


def load_series(path: str | Path, *, key: str | None = None, features: list[int] | None = None,
                zeros_missing: bool = False, header: bool | None = None) -> SensorSeries:
    """Read a series file.

    Args:
        path: ``"embedded"`` (LOS-LOOP), or a ``.npz`` (array ``data`` ``[T, N]`` / ``[T, N, F]``,
            optional ``adj``, ``timestamps`` and ``units`` (a string); ``PEMS0x.npz`` flow
            tensors included), a DCRNN
            ``.h5`` / ``.hdf5`` pandas frame (``metr-la.h5``, ``pems-bay.h5``), or a ``.csv`` (one row
            per step, one column per node, an optional time column).
        key: the array (npz) or group (h5) to read instead of the default.
        features: feature channels to keep; default all, except ``PEMS0x.npz`` files whose 3
            channels (flow, occupancy, speed) default to flow only.
        zeros_missing: treat exact zeros as missing readings (METR-LA and PEMS-BAY mark gaps so).
        header: CSV only: whether the first row names the columns. ``None`` guesses: a row with a
            non-numeric cell, or a row of integers (sensor ids) above a row holding a fractional
            reading, is a header. Say ``True`` for integer sensor ids above integer counts.
    """
    name = str(path)
    if name == EMBEDDED:
        series = _read_npz(embedded_path(), key=None)
        series.source, series.units = EMBEDDED, EMBEDDED_UNITS
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"{file}: file not found")
        suffix = file.suffix.lower()
        readers = {".npz": _read_npz, ".h5": _read_h5, ".hdf5": _read_h5, ".csv": _read_csv}
        if suffix not in readers:
            raise DataError(f"{file}: unknown format {suffix!r}; expected one of {sorted(readers)}")
        try:
            series = _read_csv(file, header) if suffix == ".csv" else readers[suffix](file, key=key)
        except (UnicodeDecodeError, ValueError) as err:
            if isinstance(err, DataError):
                raise
            raise DataError(f"{file}: cannot be read as {suffix} ({err})") from None
    values = series.values
    if features is None and re.fullmatch(r"pems0\d", Path(name).stem.lower()) and values.shape[2] == 3:
        features = [0]
    if features is not None:
        bad = [f for f in features if not 0 <= f < values.shape[2]]
        if bad or not features:
            raise DataError(f"{series.source}: features {features} not in 0..{values.shape[2] - 1}")
        values = values[:, :, features]
    values = values.astype(np.float32, copy=True)
    if zeros_missing:
        values[values == 0] = np.nan
    series.values = values
    _check_series(series)
    return series


def _check_series(series: SensorSeries) -> None:
    v = series.values
    if np.isinf(v).any():
        raise DataError(f"{series.source}: contains inf values")
    if v.shape[1] and np.isnan(v).all():
        raise DataError(f"{series.source}: no node has a valid reading (every value is missing)")
    if series.timestamps is not None and len(series.timestamps) != v.shape[0]:
        raise DataError(f"{series.source}: {len(series.timestamps)} timestamps for {v.shape[0]} steps")
    if series.adjacency is not None and series.adjacency.shape != (v.shape[1],) * 2:
        raise DataError(f"{series.source}: adjacency is {list(series.adjacency.shape)} but the data "
                        f"has N={v.shape[1]} nodes")


def _as_tnf(values: np.ndarray, source: str) -> np.ndarray:
    if values.ndim == 2:
        values = values[:, :, None]
    if values.ndim != 3:
        raise DataError(f"{source}: data must be [T, N] or [T, N, F], got shape {list(values.shape)}")
    if not np.issubdtype(values.dtype, np.number):
        raise DataError(f"{source}: data must be numeric, got dtype {values.dtype}")
    if min(values.shape) == 0:
        raise DataError(f"{source}: data is empty, shape {list(values.shape)}")
    return values


def _parse_times(raw: np.ndarray, source: str) -> np.ndarray:
    raw = np.asarray(raw)
    if not (raw.dtype.kind in "UOS" or np.issubdtype(raw.dtype, np.datetime64)):
        raise DataError(f"{source}: timestamps must be ISO date-time strings or datetime64, got {raw.dtype}")
    try:
        return raw.astype("datetime64[s]")
    except (ValueError, TypeError) as err:
        raise DataError(f"{source}: timestamps are not ISO date-times ({err})") from None


def _units(raw: np.ndarray, source: str) -> str:
    """The ``units`` array of an archive: one string (e.g. ``np.array("mph")``)."""
    if raw.dtype.kind not in "US" or raw.size != 1:
        raise DataError(f"{source}: 'units' must be one string (e.g. np.array('mph')), got {raw.dtype} "
                        f"of shape {list(raw.shape)}")
    value = raw.reshape(()).item()
    return value.decode() if isinstance(value, bytes) else str(value)


# the first bytes of a .npy file and of a .npz (zip) archive
MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK\x03\x04"}


def check_numpy_file(file: Path) -> None:
    """A :class:`DataError` naming what ``file`` is not, where its first bytes are not those of the
    NumPy format its .npy / .npz name promises (numpy would take it for a pickle and suggest
    ``allow_pickle``, which must not be followed for a file of unknown origin)."""
    magic = MAGIC.get(file.suffix.lower())
    if magic is None:
        return
    with open(file, "rb") as handle:
        head = handle.read(len(magic))
    if head != magic:
        kind = "zip archive of .npy arrays (np.savez)" if file.suffix.lower() == ".npz" else "file (np.save)"
        raise DataError(f"{file}: not a NumPy {file.suffix} {kind}: it starts with {head!r} (a text or CSV file "
                        "renamed? then give it its own suffix)")


def _read_npz(file: Path, key: str | None) -> SensorSeries:
    source = str(file)
    try:
        check_numpy_file(file)
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{source}: not a readable .npz archive ({err})") from None
    with archive as z:
        name = key or "data"
        if name not in z.files:
            raise DataError(f"{source}: no array {name!r}; arrays: {z.files} (choose one with key=)")
        try:
            values = _as_tnf(z[name], source)
            times = _parse_times(z["timestamps"], source) if "timestamps" in z.files else None
            adj = z["adj"].astype(np.float32) if "adj" in z.files else None
            ids = next((z[k] for k in ("sensor_ids", "node_ids", "stop_ids") if k in z.files), None)
            units = _units(z["units"], source) if "units" in z.files else None
        except ValueError as err:
            if isinstance(err, DataError):
                raise
            raise DataError(f"{source}: an array holds Python objects (pickled), which sthfast does not load: "
                            "save numbers, and timestamps as strings or datetime64") from None
    return SensorSeries(values, source, times, adj, ids, units)


def _read_h5(file: Path, key: str | None) -> SensorSeries:
    """A pandas ``DataFrame.to_hdf`` file in the fixed format (DCRNN's ``metr-la.h5``): group ``df``
    with ``block0_values [T, N]``, ``axis0`` (sensor ids) and ``axis1`` (datetime64[ns] index)."""
    try:
        import h5py  # noqa: PLC0415 (only for this format)
    except ImportError:
        raise DataError(f"{file}: reading .h5 files needs h5py (pip install h5py)") from None
    source = str(file)
    try:
        handle = h5py.File(file, "r")
    except OSError as err:
        raise DataError(f"{source}: not a readable HDF5 file ({err})") from None
    with handle as h5:
        groups = [k for k in h5.keys() if isinstance(h5[k], h5py.Group)]
        name = key or ("df" if "df" in groups else (groups[0] if len(groups) == 1 else None))
        if name is None or name not in h5:
            raise DataError(f"{source}: no frame group {key or 'df'!r}; groups: {groups} (choose one with key=)")
        group = h5[name]
        blocks = sorted(k for k in group.keys() if re.fullmatch(r"block\d+_values", k))
        if len(blocks) != 1:
            raise DataError(f"{source}: expected one numeric block in {name!r} (a frame of sensor "
                            f"columns), found {blocks}")
        values = _as_tnf(group[blocks[0]][()], source)
        times = None
        if "axis1" in group:
            index = group["axis1"][()]
            times = (index.astype("datetime64[ns]").astype("datetime64[s]")
                     if np.issubdtype(index.dtype, np.integer) else _parse_times(index.astype(str), source))
        ids = group["axis0"][()] if "axis0" in group else None
    return SensorSeries(values, source, times, None, ids)


def _read_csv(file: Path, has_header: bool | None) -> SensorSeries:
    source = str(file)
    with open(file, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise DataError(f"{source}: empty file")
    if has_header is None:
        has_header = not _data_row(rows[0]) or (
            len(rows) > 1 and _integer_row(rows[0]) and _data_row(rows[1]) and _has_fraction(rows[1]))
    header = rows[0] if has_header else None
    body = rows[1:] if header else rows
    if not body:
        raise DataError(f"{source}: a header but no data rows")
    widths = {len(r) for r in body}
    if len(widths) != 1:
        raise DataError(f"{source}: rows have different numbers of columns {sorted(widths)}")
    if header is not None and len(header) != len(body[0]):
        raise DataError(f"{source}: the header has {len(header)} columns but the rows have {len(body[0])}")
    time_col = _time_column(header, body)
    times = _parse_times(np.array([r[time_col] for r in body]), source) if time_col is not None else None
    cols = [i for i in range(len(body[0])) if i != time_col]
    try:
        values = np.array([[_cell(r[i]) for i in cols] for r in body], dtype=np.float64)
    except ValueError as err:
        raise DataError(f"{source}: non-numeric value ({err})") from None
    ids = np.array([header[i] for i in cols]) if header else None
    return SensorSeries(_as_tnf(values, source), source, times, None, ids)


def _cell(text: str) -> float:
    text = text.strip()
    return float("nan") if text == "" or text.lower() in ("nan", "na", "null") else float(text)


def _numeric_row(row: list[str]) -> bool:
    try:
        [_cell(c) for c in row]
        return True
    except ValueError:
        return False


def _integer_row(row: list[str]) -> bool:
    return all(c.strip().lstrip("-").isdigit() for c in row)


def _has_fraction(row: list[str]) -> bool:
    """A reading with a fractional part (64.375): a row of sensor ids has none."""
    for cell in row:
        try:
            value = float(cell)
        except ValueError:
            continue
        if math.isfinite(value) and value != int(value):
            return True
    return False


def _is_time(text: str) -> bool:
    try:
        np.datetime64(text.strip())
        return True
    except ValueError:
        return False


def _data_row(row: list[str]) -> bool:
    """A row of readings: all numeric, or a date-time followed by numbers (no header)."""
    return _numeric_row(row) or (_is_time(row[0]) and _numeric_row(row[1:]))


def _time_column(header: list[str] | None, body: list[list[str]]) -> int | None:
    if header:
        for i, name in enumerate(header):
            if name.strip().lower() in TIME_HEADERS:
                return i
    return 0 if not _numeric_row(body[0][:1]) else None
