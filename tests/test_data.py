"""Tests for ``sthfast.data``: every reader on files written here (never /work/shared), the
adjacency formats, the errors, the protocol's split / scaler / lazy windows and the embedded set."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sthfast.data import DataError, SensorSeries, WindowDataset, load_adjacency, load_series, prepare

# ---------------------------------------------------------------------------------------------
# helpers


def _values(t: int, n: int, f: int | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (t, n) if f is None else (t, n, f)
    return (rng.random(shape) * 50 + 10).astype(np.float32)


def _npz(tmp_path, name: str, **arrays) -> Path:
    """``arrays`` saved as ``tmp_path / name``."""
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _raises(path, match: str, func, *args, **kwargs) -> str:
    """Call ``func``; assert a ``DataError`` whose message names ``path`` and matches ``match``."""
    with pytest.raises(DataError, match=match) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    return message


def _write_h5(path, values: np.ndarray, ids: list[str], times_ns: np.ndarray, group: str = "df"):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as h5:
        g = h5.create_group(group)
        g.create_dataset("axis0", data=np.array([i.encode() for i in ids], dtype="S"))
        g.create_dataset("axis1", data=times_ns.astype(np.int64))
        g.create_dataset("block0_items", data=np.array([i.encode() for i in ids], dtype="S"))
        g.create_dataset("block0_values", data=values)


# ---------------------------------------------------------------------------------------------
# 1. formats


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


def test_npz_2d_with_adj_and_timestamps(tmp_path):
    data = _values(6, 3)
    adj = np.eye(3, dtype=np.float64) + 0.5
    times = np.array([f"2021-05-01T00:{5 * i:02d}:00" for i in range(6)])
    path = tmp_path / "net.npz"
    np.savez(path, data=data, adj=adj, timestamps=times)
    s = load_series(path)
    assert isinstance(s, SensorSeries)
    assert s.values.shape == (6, 3, 1) and s.values.dtype == np.float32
    np.testing.assert_array_equal(s.values[..., 0], data)
    assert s.num_steps == 6 and s.num_nodes == 3
    assert s.timestamps.dtype == np.dtype("datetime64[s]")
    np.testing.assert_array_equal(s.timestamps, times.astype("datetime64[s]"))
    assert s.timestamps[1] == np.datetime64("2021-05-01T00:05:00")
    assert s.adjacency.dtype == np.float32
    np.testing.assert_array_equal(s.adjacency, adj.astype(np.float32))
    assert s.source == str(path)


def test_npz_3d_without_extras(tmp_path):
    data = _values(5, 4, 2)
    path = _npz(tmp_path, "three.npz", data=data)
    s = load_series(path)
    assert s.values.shape == (5, 4, 2)
    np.testing.assert_array_equal(s.values, data)
    assert s.timestamps is None and s.adjacency is None
    sub = load_series(path, features=[1])
    np.testing.assert_array_equal(sub.values, data[:, :, [1]])


def test_npz_other_key(tmp_path):
    data = _values(4, 2)
    path = _npz(tmp_path, "keyed.npz", speed=data)
    np.testing.assert_array_equal(load_series(path, key="speed").values[..., 0], data)


def test_pems_npz_flow_by_default_all_on_request(tmp_path):
    data = _values(7, 5, 3)
    path = _npz(tmp_path, "PEMS04.npz", data=data)
    flow = load_series(path)
    assert flow.values.shape == (7, 5, 1)
    np.testing.assert_array_equal(flow.values[..., 0], data[..., 0])
    full = load_series(path, features=[0, 1, 2])
    assert full.values.shape == (7, 5, 3)
    np.testing.assert_array_equal(full.values, data)
    # the default applies to PEMS0x names only
    other = tmp_path / "mine.npz"
    np.savez(other, data=data)
    assert load_series(other).values.shape == (7, 5, 3)


def test_dcrnn_h5(tmp_path):
    data = _values(6, 3).astype(np.float64)
    data[2, 1] = np.nan
    ids = ["773869", "767541", "767542"]
    start = np.datetime64("2012-03-01T00:00:00", "ns").astype(np.int64)
    times_ns = start + np.arange(6, dtype=np.int64) * 300 * 10**9
    path = tmp_path / "metr-la.h5"
    _write_h5(path, data, ids, times_ns)
    s = load_series(path)
    assert s.values.shape == (6, 3, 1) and s.values.dtype == np.float32
    np.testing.assert_array_equal(s.values[..., 0], data.astype(np.float32))
    assert s.timestamps.dtype == np.dtype("datetime64[s]")
    expected = np.datetime64("2012-03-01T00:00:00") + np.arange(6) * np.timedelta64(300, "s")
    np.testing.assert_array_equal(s.timestamps, expected)
    assert [i.decode() if isinstance(i, bytes) else str(i) for i in s.node_ids] == ids
    assert s.adjacency is None


def test_dcrnn_h5_zeros_missing(tmp_path):
    data = _values(5, 2).astype(np.float64)
    data[1, 0] = 0.0
    data[3, 1] = 0.0
    path = tmp_path / "pems-bay.h5"
    _write_h5(path, data, ["1", "2"], np.arange(5, dtype=np.int64) * 300 * 10**9, group="speed")
    kept = load_series(path)
    assert kept.values[1, 0, 0] == 0.0 and kept.values[3, 1, 0] == 0.0
    gone = load_series(path, zeros_missing=True)
    assert np.isnan(gone.values[1, 0, 0]) and np.isnan(gone.values[3, 1, 0])
    assert np.isnan(gone.values).sum() == 2


def test_csv_with_header_and_time_column(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("time,s1,s2,s3\n"
                    "2020-01-01T00:00:00,1.5,2,3\n"
                    "2020-01-01T01:00:00,4,,6\n"
                    "2020-01-01T02:00:00,NaN,8,9.25\n")
    s = load_series(path)
    assert s.values.shape == (3, 3, 1)
    expected = np.array([[1.5, 2, 3], [4, np.nan, 6], [np.nan, 8, 9.25]], np.float32)
    np.testing.assert_array_equal(s.values[..., 0], expected)
    assert np.isnan(s.values[1, 1, 0]) and np.isnan(s.values[2, 0, 0])
    assert s.timestamps.dtype == np.dtype("datetime64[s]")
    np.testing.assert_array_equal(s.timestamps, np.array(
        ["2020-01-01T00:00:00", "2020-01-01T01:00:00", "2020-01-01T02:00:00"], "datetime64[s]"))
    assert list(s.node_ids) == ["s1", "s2", "s3"]


def test_csv_time_column_not_first(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("a,timestamp,b\n1,2020-01-01T00:00:00,2\n3,2020-01-01T00:05:00,4\n")
    s = load_series(path)
    np.testing.assert_array_equal(s.values[..., 0], [[1, 2], [3, 4]])
    assert list(s.node_ids) == ["a", "b"]
    assert s.timestamps[1] == np.datetime64("2020-01-01T00:05:00")


def test_csv_without_header_or_time(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("1,2,3\n4,,6\n7,nan,0\n")
    s = load_series(path)
    expected = np.array([[1, 2, 3], [4, np.nan, 6], [7, np.nan, 0]], np.float32)
    np.testing.assert_array_equal(s.values[..., 0], expected)
    assert s.timestamps is None and s.node_ids is None
    zeros = load_series(path, zeros_missing=True)
    assert np.isnan(zeros.values[2, 2, 0])
    assert np.isnan(zeros.values).sum() == 3


def test_zeros_missing_npz(tmp_path):
    data = _values(4, 3, 2)
    data[0, 0, 0] = 0.0
    data[2, 1, 1] = 0.0
    data[3, 2, 0] = -0.0
    path = tmp_path / "z.npz"
    np.savez(path, data=data)
    s = load_series(path, zeros_missing=True)
    mask = np.zeros(data.shape, bool)
    mask[0, 0, 0] = mask[2, 1, 1] = mask[3, 2, 0] = True
    np.testing.assert_array_equal(np.isnan(s.values), mask)
    np.testing.assert_array_equal(s.values[~mask], data[~mask])
    assert not np.isnan(load_series(path).values).any()


def test_csv_without_header_with_time_column(tmp_path):
    path = tmp_path / "timed.csv"
    path.write_text("2020-01-01T00:00:00,1,2\n2020-01-01T00:05:00,3,4\n2020-01-01T00:10:00,5,6\n")
    s = load_series(path)
    assert s.values.shape == (3, 2, 1)
    np.testing.assert_array_equal(s.values[..., 0], [[1, 2], [3, 4], [5, 6]])


@pytest.mark.parametrize("header", ["a,b", "a,b,c,d"])
def test_csv_header_width_differs_from_rows(tmp_path, header):
    path = tmp_path / "ragged_header.csv"
    path.write_text(f"{header}\n1,2,3\n4,5,6\n")
    _raises(path, "column", load_series, path)


# ---------------------------------------------------------------------------------------------
# 2. adjacency


def test_adjacency_dense_npy_npz_csv(tmp_path):
    adj = np.arange(9, dtype=np.float64).reshape(3, 3) / 4
    np.save(tmp_path / "a.npy", adj)
    np.savez(tmp_path / "a.npz", adj=adj, other=np.zeros(2))
    np.savez(tmp_path / "b.npz", mine=adj)
    (tmp_path / "a.csv").write_text("\n".join(",".join(str(v) for v in row) for row in adj) + "\n")
    for name, kwargs in (("a.npy", {}), ("a.npz", {}), ("b.npz", {"key": "mine"}), ("a.csv", {})):
        out = load_adjacency(tmp_path / name, 3, **kwargs)
        assert out.dtype == np.float32 and out.shape == (3, 3), name
        np.testing.assert_array_equal(out, adj.astype(np.float32), err_msg=name)


def _edge_file(tmp_path, name="edges.csv"):
    path = tmp_path / name
    path.write_text("from,to,cost\n0,1,1.0\n1,2,2.0\n3,2,3.0\n")
    return path


def test_adjacency_edge_list_binary_symmetric(tmp_path):
    out = load_adjacency(_edge_file(tmp_path), 4)
    expected = np.zeros((4, 4), np.float32)
    for a, b in ((0, 1), (1, 2), (3, 2)):
        expected[a, b] = expected[b, a] = 1.0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, out.T)


def test_adjacency_edge_list_without_cost_column(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("from,to\n0,2\n")
    out = load_adjacency(path, 3)
    assert out[0, 2] == out[2, 0] == 1.0 and out.sum() == 2.0


def test_adjacency_edge_list_cost_and_gaussian(tmp_path):
    path = _edge_file(tmp_path)
    cost = load_adjacency(path, 4, weighting="cost")
    expected = np.zeros((4, 4), np.float32)
    for (a, b), c in zip(((0, 1), (1, 2), (3, 2)), (1.0, 2.0, 3.0)):
        expected[a, b] = expected[b, a] = c
    np.testing.assert_array_equal(cost, expected)
    # costs 1, 2, 3: population std sqrt(2/3), so weight = exp(-1.5 c^2)
    gauss = load_adjacency(path, 4, weighting="gaussian")
    hand = {(0, 1): math.exp(-1.5), (1, 2): math.exp(-6.0), (3, 2): math.exp(-13.5)}
    assert math.exp(-1.5) == pytest.approx(0.22313016)
    expected = np.zeros((4, 4), np.float32)
    for (a, b), w in hand.items():
        expected[a, b] = expected[b, a] = w
    np.testing.assert_allclose(gauss, expected, rtol=1e-5, atol=0)


def test_adjacency_bad_weighting(tmp_path):
    path = _edge_file(tmp_path)
    _raises(path, "weighting", load_adjacency, path, 4, weighting="inverse")


def test_adjacency_edge_ids_through_txt_beside(tmp_path):
    path = tmp_path / "PEMS03.csv"
    path.write_text("from,to,distance\n317842,400001,2.5\n400002,318120,4.0\n")
    (tmp_path / "PEMS03.txt").write_text("317842\n318120\n400001\n400002\n")
    out = load_adjacency(path, 4, weighting="cost")
    expected = np.zeros((4, 4), np.float32)
    expected[0, 2] = expected[2, 0] = 2.5
    expected[3, 1] = expected[1, 3] = 4.0
    np.testing.assert_array_equal(out, expected)


def test_adjacency_edge_ids_through_explicit_array(tmp_path):
    path = tmp_path / "graph.csv"
    path.write_text("from,to,cost\n900,700,1\n800,900,1\n")
    out = load_adjacency(path, 3, ids=np.array([700, 800, 900]))
    expected = np.zeros((3, 3), np.float32)
    expected[2, 0] = expected[0, 2] = 1
    expected[1, 2] = expected[2, 1] = 1
    np.testing.assert_array_equal(out, expected)
    # a text id file given explicitly works too
    ids = tmp_path / "order.txt"
    ids.write_text("700\n800\n900\n")
    np.testing.assert_array_equal(load_adjacency(path, 3, ids=ids), expected)


def test_adjacency_id_list_length_mismatch(tmp_path):
    path = tmp_path / "graph.csv"
    path.write_text("from,to\n900,700\n")
    _raises(path, "3 ids.*N=4", load_adjacency, path, 4, ids=[700, 800, 900])


@pytest.mark.parametrize("case", ["npy", "npz", "ids"])
def test_adjacency_unreadable_inputs_are_data_errors(tmp_path, case):
    if case == "ids":
        path = tmp_path / "g.csv"
        path.write_text("from,to\n10,11\n")
        (tmp_path / "g.txt").write_text("10\nabc\n")
    else:
        path = tmp_path / f"g.{case}"
        path.write_text("not an array")
    _raises(path, ".", load_adjacency, path, 2)


# ---------------------------------------------------------------------------------------------
# 3. errors


def test_error_missing_files(tmp_path):
    missing = tmp_path / "nope.npz"
    _raises(missing, "not found", load_series, missing)
    _raises(missing, "not found", load_adjacency, missing, 3)


def test_error_unknown_suffix(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_text("x")
    _raises(path, "unknown format '.parquet'", load_series, path)
    _raises(path, "unknown adjacency format", load_adjacency, path, 3)


def test_error_unknown_npz_key(tmp_path):
    path = tmp_path / "k.npz"
    np.savez(path, speed=_values(3, 2), flow=_values(3, 2))
    message = _raises(path, "no array 'data'", load_series, path)
    assert "speed" in message and "flow" in message
    message = _raises(path, "no array 'occupancy'", load_series, path, key="occupancy")
    assert "speed" in message and "flow" in message
    adj = tmp_path / "adj.npz"
    np.savez(adj, weights=np.eye(2))
    assert "weights" in _raises(adj, "no adjacency array", load_adjacency, adj, 2)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5)])
def test_error_wrong_rank(tmp_path, shape):
    path = tmp_path / "rank.npz"
    np.savez(path, data=np.ones(shape, np.float32))
    _raises(path, r"\[T, N\] or \[T, N, F\]", load_series, path)


def test_error_adjacency_size_in_npz(tmp_path):
    path = tmp_path / "adj.npz"
    np.savez(path, data=_values(4, 3), adj=np.eye(4))
    _raises(path, r"adjacency is \[4, 4\].*N=3", load_series, path)


def test_error_adjacency_size_via_load_adjacency(tmp_path):
    npy = tmp_path / "a.npy"
    np.save(npy, np.eye(3))
    _raises(npy, r"adjacency is \[3, 3\].*N=4", load_adjacency, npy, 4)
    dense = tmp_path / "a.csv"
    dense.write_text("0,1\n1,0\n")
    _raises(dense, r"adjacency is \[2, 2\].*N=3", load_adjacency, dense, 3)


def test_error_adjacency_negative_or_nan(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.array([[0, -1], [1, 0]], np.float32))
    _raises(path, "non-negative", load_adjacency, path, 2)
    np.save(path, np.array([[0, np.nan], [1, 0]], np.float32))
    _raises(path, "finite", load_adjacency, path, 2)


def test_a_series_with_no_valid_reading_is_an_error(tmp_path):
    path = tmp_path / "dead.npz"
    np.savez(path, data=np.zeros((5, 4), np.float32))
    load_series(path)
    _raises(path, "no node has a valid reading", load_series, path, zeros_missing=True)
    np.savez(path, data=np.full((5, 4), np.nan, np.float32))
    _raises(path, "no node has a valid reading", load_series, path)


def test_error_inf_values(tmp_path):
    data = _values(4, 2)
    data[1, 1] = np.inf
    path = tmp_path / "inf.npz"
    np.savez(path, data=data)
    _raises(path, "inf", load_series, path)
    csv = tmp_path / "inf.csv"
    csv.write_text("a,b\n1,-inf\n2,3\n")
    _raises(csv, "inf", load_series, csv)


@pytest.mark.parametrize("text, message", [
    ("a,b,c\n1,2,3\n4,5\n", r"different numbers of columns \[2, 3\]"),
    ("a,b\n1,2\n3,fast\n", "non-numeric"),
    ("", "empty"),
    ("a,b\n", "no data rows"),
])
def test_error_bad_csv(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    _raises(path, message, load_series, path)


def test_error_bad_timestamps_and_count(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, data=_values(3, 2), timestamps=np.array(["monday", "tuesday", "wednesday"]))
    _raises(path, "ISO", load_series, path)
    np.savez(path, data=_values(3, 2), timestamps=np.array(["2020-01-01", "2020-01-02"]))
    _raises(path, "2 timestamps for 3 steps", load_series, path)


def test_error_bad_features(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, data=_values(3, 2, 2))
    _raises(path, "features", load_series, path, features=[2])
    _raises(path, "features", load_series, path, features=[])


def test_error_corrupt_npz_and_h5(tmp_path):
    npz = tmp_path / "bad.npz"
    npz.write_bytes(b"this is not a zip archive")
    _raises(npz, "not a NumPy .npz zip archive", load_series, npz)
    npz.write_bytes(b"PK\x03\x04 and then a truncated archive")
    _raises(npz, "not a readable .npz", load_series, npz)
    h5 = tmp_path / "bad.h5"
    h5.write_bytes(b"this is not hdf5")
    _raises(h5, "not a readable HDF5", load_series, h5)


def test_error_edge_endpoint_out_of_range(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("from,to,cost\n0,1,1\n2,5,1\n")
    _raises(path, r"endpoints \[5\] outside 0\.\.3", load_adjacency, path, 4)
    path.write_text("from,to,cost\n-1,1,1\n")
    _raises(path, r"endpoints \[-1\]", load_adjacency, path, 4)


def test_error_edge_id_not_in_list(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("from,to,cost\n700,999,1\n")
    _raises(path, r"\[999\] are not in the id list", load_adjacency, path, 2, ids=[700, 800])


def test_error_non_numeric_edge(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("from,to,cost\n0,one,1\n")
    _raises(path, "non-numeric edge", load_adjacency, path, 2)


def _series_file(tmp_path, values: np.ndarray, name: str = "s.npz") -> SensorSeries:
    path = tmp_path / name
    np.savez(path, data=values)
    return load_series(path)


def test_error_too_few_steps(tmp_path):
    series = _series_file(tmp_path, _values(20, 2))
    _raises(series.source, "leave no train window of 12 \\+ 6", prepare, series, 12, 6)
    _raises(series.source, "leave no", prepare, series, 100, 1)


@pytest.mark.parametrize("split", [(0.7, 0.3), (0.5, 0.3, 0.3), (0.0, 0.5, 0.5), (0.9, 0.2, -0.1)])
def test_error_bad_split(tmp_path, split):
    series = _series_file(tmp_path, _values(100, 2))
    _raises(series.source, "split", prepare, series, 4, 2, split=split)


def test_error_bad_target_feature(tmp_path):
    series = _series_file(tmp_path, _values(100, 2, 2))
    _raises(series.source, "target feature 2", prepare, series, 4, 2, target_feature=2)


# ---------------------------------------------------------------------------------------------
# 4. prepare: split, scaler, windows

T, N, F, L, H = 50, 3, 2, 4, 3  # 50 * 0.7 = 35, 50 * 0.8 = 40: exact in floating point


def _prep_values(seed: int = 1) -> np.ndarray:
    v = _values(T, N, F, seed=seed)
    v[3, 0, 0] = np.nan      # train
    v[10, 2, 1] = np.nan
    v[36, 1, 0] = np.nan     # val
    v[45, 2, 0] = np.nan     # test
    v[:, 1, 1] = 7.0         # a constant channel: std 1
    return v


@pytest.fixture
def split_data(tmp_path):
    series = _series_file(tmp_path, _prep_values())
    return prepare(series, L, H)


def test_prepare_boundaries(split_data):
    assert split_data.boundaries == (35, 40)
    assert split_data.target_feature == 0


def test_prepare_scaler_fitted_on_train_only(tmp_path, split_data):
    values = _prep_values()
    train = values[:35]
    mean = np.nanmean(train, axis=0)
    std = np.nanstd(train, axis=0)
    std[1, 1] = 1.0  # constant channel
    assert split_data.scaler.mean.shape == (N, F)
    np.testing.assert_array_equal(split_data.scaler.mean, mean)
    np.testing.assert_array_equal(split_data.scaler.std, std)
    # changing val / test values leaves the scaler alone; changing a train value does not
    changed = values.copy()
    changed[35:] = changed[35:] * 3 + 100
    other = prepare(_series_file(tmp_path, changed, "changed.npz"), L, H)
    np.testing.assert_array_equal(other.scaler.mean, split_data.scaler.mean)
    np.testing.assert_array_equal(other.scaler.std, split_data.scaler.std)
    changed[34, 0, 0] += 1000
    moved = prepare(_series_file(tmp_path, changed, "moved.npz"), L, H)
    assert moved.scaler.mean[0, 0] != split_data.scaler.mean[0, 0]
    mean_t, std_t = split_data.target_scale()
    np.testing.assert_array_equal(mean_t.numpy(), mean[:, 0])
    np.testing.assert_array_equal(std_t.numpy(), std[:, 0])


def test_scaler_dict_round_trip(split_data):
    from sthfast.data import Scaler

    back = Scaler.from_dict(split_data.scaler.to_dict())
    np.testing.assert_array_equal(back.mean, split_data.scaler.mean)
    np.testing.assert_array_equal(back.std, split_data.scaler.std)


def test_prepare_window_counts(split_data):
    assert len(split_data.train) == 35 - (L + H) + 1
    assert len(split_data.val) == 40 - 35 - H + 1
    assert len(split_data.test) == 50 - 40 - H + 1
    assert isinstance(split_data.train, WindowDataset)


def test_prepare_items_equal_direct_slices(split_data):
    values = _prep_values()
    scaler = split_data.scaler
    scaled = np.nan_to_num((values - scaler.mean) / scaler.std, nan=0.0).astype(np.float32)
    for name in ("train", "val", "test"):
        ds = getattr(split_data, name)
        for i in range(len(ds)):
            x, y, s = ds[i]
            assert x.shape == (L, N, F) and y.shape == (H, N) and x.dtype == torch.float32
            np.testing.assert_allclose(x.numpy(), scaled[s:s + L], rtol=0, atol=1e-6)
            assert not torch.isnan(x).any()
            np.testing.assert_array_equal(y.numpy(), values[s + L:s + L + H, :, 0])
    # the missing inputs are at 0 (the node's training mean), the missing targets stay NaN
    x, y, s = split_data.train[0]
    assert s == 0 and x[3, 0, 0] == 0.0
    assert split_data.test[len(split_data.test) - 1][2] == T - L - H
    x, y, s = split_data.test[5]
    assert s == 41 and x[0, 1, 0] != 0.0
    assert np.isnan(y[45 - (s + L), 2].item())          # step 45, node 2
    x, y, s = split_data.val[0]
    assert s == 31 and np.isnan(y[36 - (s + L), 1].item())


def test_prepare_targets_inside_their_split(split_data):
    first_val, first_test = split_data.boundaries
    limits = {"train": (0, first_val), "val": (first_val, first_test), "test": (first_test, T)}
    for name, (lo, hi) in limits.items():
        ds = getattr(split_data, name)
        starts = [ds[i][2] for i in range(len(ds))]
        assert starts == list(range(starts[0], starts[0] + len(ds)))
        for s in starts:
            assert lo <= s + L and s + L + H <= hi, (name, s)
        # every possible window is used: first target at lo (or L for train), last at hi - 1
        assert starts[0] + L == max(lo, L) and starts[-1] + L + H == hi


def test_prepare_windows_are_lazy(split_data):
    x0, y0, _ = split_data.train[0]
    x1, y1, _ = split_data.train[5]
    xt, yt, _ = split_data.test[1]
    ptr = split_data.train.scaled.untyped_storage().data_ptr()
    assert x0.untyped_storage().data_ptr() == x1.untyped_storage().data_ptr() == ptr
    assert xt.untyped_storage().data_ptr() == ptr
    assert y0.untyped_storage().data_ptr() == y1.untyped_storage().data_ptr() \
        == yt.untyped_storage().data_ptr()
    assert split_data.val.scaled is split_data.train.scaled is split_data.test.scaled
    assert split_data.train.scaled.shape == (T, N, F)


def test_prepare_target_feature(tmp_path):
    values = _prep_values()
    split = prepare(_series_file(tmp_path, values), L, H, target_feature=1)
    _, y, s = split.val[0]
    np.testing.assert_array_equal(y.numpy(), values[s + L:s + L + H, :, 1])
    assert split.target_scale()[1][1].item() == 1.0


@pytest.mark.parametrize("steps", [40, 90])
def test_prepare_boundaries_exact_fractions(tmp_path, steps):
    series = _series_file(tmp_path, _values(steps, 2))
    split = prepare(series, 2, 1)
    assert split.boundaries == (steps * 7 // 10, steps * 8 // 10)


# ---------------------------------------------------------------------------------------------
# 5. embedded dataset


def test_embedded_dataset():
    s = load_series("embedded")
    assert s.source == "embedded"
    assert s.values.shape == (2016, 207, 1) and s.values.dtype == np.float32
    assert s.timestamps.dtype == np.dtype("datetime64[s]")
    assert s.timestamps[0] == np.datetime64("2012-03-01T00:00:00")
    assert s.timestamps[1] - s.timestamps[0] == np.timedelta64(300, "s")
    assert s.adjacency.shape == (207, 207)
    assert np.isfinite(s.values).all()


def test_embedded_fingerprint():
    a, b = load_series("embedded"), load_series("embedded")
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64
    values = b.values.copy()
    values[1000, 100, 0] += 0.5
    changed = SensorSeries(values, "embedded")
    assert changed.fingerprint() != a.fingerprint()
    values[1000, 100, 0] -= 0.5
    assert SensorSeries(values, "embedded").fingerprint() == a.fingerprint()
    # the shape is part of the fingerprint
    assert SensorSeries(a.values.reshape(2016, 1, 207), "x").fingerprint() != a.fingerprint()


def test_csv_numeric_sensor_id_header_is_detected_or_stated(tmp_path):
    path = tmp_path / "los_speed.csv"                       # T-GCN's layout: sensor ids, then speeds
    path.write_text("773869,767541\n64.375,67.625\n62.667,68.556\n")
    s = load_series(path)
    assert s.values.shape == (2, 2, 1) and s.node_ids.tolist() == ["773869", "767541"]
    counts = tmp_path / "counts.csv"                        # integer ids above integer counts
    counts.write_text("101,102\n3,4\n5,6\n")
    assert load_series(counts).values.shape == (3, 2, 1)
    assert load_series(counts, header=True).values.shape == (2, 2, 1)
    assert load_series(path, header=False).values.shape == (3, 2, 1)


def test_unreadable_contents_name_the_file(tmp_path):
    bad = tmp_path / "latin.csv"
    bad.write_bytes("t\xe9mp,a\n1,2\n".encode("latin-1"))
    _raises(bad, "cannot be read", load_series, bad)
    objects = tmp_path / "objects.npz"
    np.savez(objects, data=np.array([[1, "a"]], dtype=object))
    _raises(objects, "objects.npz", load_series, objects)


def test_nodes_unseen_in_training_are_kept_with_a_warning_and_the_pooled_scale(tmp_path):
    from sthfast.data import DataWarning

    values = 10 + np.random.default_rng(0).random((100, 4)).astype(np.float32)
    values[:80, 1] = np.nan                                 # node 1 only reports in val / test
    values[:, 3] = 0.0                                      # node 3 is dead once zeros are missing
    series = load_series(_write_npz(tmp_path, values), zeros_missing=True)
    with pytest.warns(DataWarning, match=r"2 of 4 node\(s\) have no valid reading in the training split \(steps "
                                         r"0..69\): \[1, 3\]"):
        data = prepare(series, 4, 2)
    train = values[:70, [0, 2]]
    assert np.allclose(data.scaler.mean[[1, 3], 0], train.mean(), atol=1e-5)     # the other nodes' pooled scale
    assert np.allclose(data.scaler.std[[1, 3], 0], train.std(), atol=1e-5)
    x, y, _ = data.test.batch(torch.arange(len(data.test)))
    assert torch.isfinite(x).all() and torch.isnan(y[..., 3]).all() and torch.isfinite(y[..., 1]).all()
    from sthfast.baselines import SeasonalAverage

    assert torch.isfinite(SeasonalAverage(data).forecast_by_step).all()


def _write_npz(tmp_path, values):
    path = tmp_path / "unseen.npz"
    np.savez(path, data=values)
    return path


# ---------------------------------------------------------------------------------------------
# 5. calendar channels


def test_calendar_from_timestamps_and_from_step_index():
    from sthfast.data.calendar import calendar

    hours = np.datetime64("2024-01-03T05:00") + np.arange(60) * np.timedelta64(1, "h")   # a Wednesday
    values = _values(60, 2)[:, :, None]
    cal = calendar(SensorSeries(values, "hourly", hours.astype("datetime64[s]")))
    assert cal.per_day == 24
    assert cal.day_slot[0] == 5 and cal.weekday[0] == 2 and cal.day_slot[19] == 0 and cal.weekday[19] == 3
    plain = calendar(SensorSeries(values, "plain"), steps_per_day=24)   # step 0 is Monday midnight
    assert plain.per_day == 24 and plain.day_slot[29] == 5 and plain.weekday[29] == 1
    np.testing.assert_allclose(cal.features(("time_of_day", "day_of_week"))[19], [0.0, 3 / 7])
    with pytest.raises(ValueError, match="unknown time features"):
        cal.features(("hour",))


def test_prepare_appends_time_features_after_the_scaled_series(tmp_path, split_data):
    times = np.datetime64("2024-01-01T00:00") + np.arange(T) * np.timedelta64(30, "m")   # a Monday
    series = SensorSeries(_prep_values(), "with-times", times.astype("datetime64[s]"))
    data = prepare(series, L, H, time_features=("day_of_week", "time_of_day"))
    x, y, s = data.val[2]
    assert x.shape == (L, N, F + 2)
    np.testing.assert_array_equal(x[..., :F].numpy(), split_data.val[2][0].numpy())   # scaler unchanged
    steps = s + np.arange(L)
    expected_day = (steps // 48) / 7.0
    expected_time = (steps % 48) / 48.0
    for node in range(N):                                                  # the same for every node
        np.testing.assert_allclose(x[:, node, F].numpy(), expected_day, rtol=1e-6)
        np.testing.assert_allclose(x[:, node, F + 1].numpy(), expected_time, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), split_data.val[2][1].numpy())


def test_numpy_files_that_are_not_what_their_name_says_get_a_message_without_allow_pickle(tmp_path):
    from sthfast.data import load_adjacency

    fake = tmp_path / "speeds.npz"
    fake.write_text("time,node0\n0,1.5\n")
    with pytest.raises(DataError, match=r"speeds.npz: not a NumPy .npz zip archive of .npy arrays \(np.savez\): "
                                        r"it starts with b'time' \(a text or CSV file renamed") as err:
        load_series(fake)
    assert "allow_pickle" not in str(err.value)
    objects = tmp_path / "objects.npz"
    np.savez(objects, data=np.array([[1.0, None]], dtype=object))
    with pytest.raises(DataError, match="objects.npz: an array holds Python objects .pickled., which sthfast does not"):
        load_series(objects)
    adjacency = tmp_path / "adj.npy"
    adjacency.write_text("0,1\n1,0\n")
    with pytest.raises(DataError, match=r"adj.npy: not a NumPy .npy file \(np.save\)"):
        load_adjacency(adjacency, 2)


def test_units_from_the_file_the_embedded_data_and_the_flag(tmp_path):
    from sthfast import TrainConfig

    values = np.ones((10, 3), np.float32)
    np.savez(tmp_path / "with.npz", data=values, units=np.array("veh/5 min"))
    np.savez(tmp_path / "without.npz", data=values)
    assert load_series(tmp_path / "with.npz").units == "veh/5 min"
    assert load_series(tmp_path / "without.npz").units is None
    assert load_series("embedded").units == "mph"
    assert load_series("embedded").select_nodes([0, 1]).units == "mph"
    assert TrainConfig(data=str(tmp_path / "with.npz"), units="vehicles").read_series().units == "vehicles"
    np.savez(tmp_path / "bad.npz", data=values, units=np.array([1.0, 2.0]))
    with pytest.raises(DataError, match=r"bad.npz: 'units' must be one string"):
        load_series(tmp_path / "bad.npz")
