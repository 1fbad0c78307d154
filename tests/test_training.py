"""The main job end to end on the embedded data with a tiny model: CLI outputs, evaluate, predict,
refusals, an exact resume after SIGKILL, and Ctrl-C / SIGTERM that say how to resume."""

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sthfast import STHSepNet, TrainConfig, evaluate, predict, train
from sthfast.cli import main
from sthfast.plots import PLOTS


def tiny_flags(backbone: str) -> list[str]:
    """A model small enough that an epoch over a few batches of LOS-LOOP takes about a second."""
    return ["--backbone", backbone, "--layers", "1", "--conv-channels", "8", "--residual-channels", "8",
            "--skip-channels", "8", "--end-channels", "8", "--node-emb-dim", "8", "--d-ff", "16",
            "--gate-hidden", "8", "--subgraph-size", "5", "--protocol", "standard", "--batch-size", "8",
            "--eval-batch-size", "128", "--threads", "1"]


@pytest.fixture(scope="module")
def trained_run(tiny_backbones, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    # the seasonal residual (auto turns it off on LOS-LOOP 12 -> 12) for its calendar channels
    code = main(["train", "--data", "embedded", "--epochs", "2", "--max-batches", "3", "--out", str(out),
                 "--seasonal-residual"] + tiny_flags(tiny_backbones["bert"]))
    assert code == 0
    return out


def test_train_writes_every_output(trained_run, capsys):
    out = trained_run
    for name in ("metrics.json", "log.jsonl", "config.json", *PLOTS, "checkpoint/best/meta.json",
                 "checkpoint/last/meta.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    best, last = (json.loads((out / f"checkpoint/{d}/meta.json").read_text()) for d in ("best", "last"))
    assert set(best["files"]) == {"weights"} and set(last["files"]) == {"weights", "trainer_state"}
    for d, meta in (("best", best), ("last", last)):
        present = {p.name for p in (out / "checkpoint" / d).iterdir()}
        assert present == {"meta.json", *meta["files"].values()}    # older generations are gone
        assert Path(meta["train_config"]["data"]) == Path("embedded") and meta["backbone_fingerprint"]
    assert last["files"]["weights"].endswith(".safetensors") and last["files"]["trainer_state"].endswith(".pt")
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["protocol"] == "standard" and summary["seq_len"] == 12 and summary["zeros_missing"]
    assert set(summary["test"]) == {"model", "last_value", "seasonal_average", "linear", "model_beats", "margins"}
    assert set(summary["test"]["model"]) == {"all", "h3", "h6", "h12"}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["samples_per_s"] > 0 for r in log)
    # the frozen backbone is not copied into the checkpoint, LoRA adapters are
    from safetensors.torch import load_file

    keys = load_file(str(out / "checkpoint/best" / best["files"]["weights"]))
    assert any("lora_B" in k for k in keys) and not any(k.endswith("word_embeddings.weight") for k in keys)


def test_evaluate_reproduces_the_test_metrics(trained_run, capsys):
    summary = json.loads((trained_run / "metrics.json").read_text())
    result = evaluate(trained_run)
    for name in ("model", "last_value", "linear"):
        assert result[name]["all"]["mae"] == pytest.approx(summary["test"][name]["all"]["mae"], rel=1e-5)
    assert main(["evaluate", "--checkpoint", str(trained_run)]) == 0
    table = capsys.readouterr().out
    assert "seasonal_average" in table and "h12" in table


def test_evaluate_uses_the_checkpoint_scaler(trained_run, tmp_path):
    from sthfast.data import load_embedded

    arrays = load_embedded()
    changed = arrays["data"].copy()
    changed[:1000] *= 2.0                       # the training part only: a refitted scaler would differ
    other = tmp_path / "changed.npz"
    np.savez(other, data=changed, timestamps=arrays["timestamps"])
    same, moved = evaluate(trained_run), evaluate(trained_run, data=str(other))
    assert moved["model"]["all"]["mae"] == pytest.approx(same["model"]["all"]["mae"], rel=1e-6)
    assert moved["linear"]["all"]["mae"] != pytest.approx(same["linear"]["all"]["mae"], rel=1e-3)


def test_predict_forecasts_after_the_end(trained_run, tmp_path, capsys):
    target = tmp_path / "forecast.npz"
    assert main(["predict", "--checkpoint", str(trained_run), "--data", "embedded", "--out", str(target)]) == 0
    with np.load(target) as z:
        assert z["forecast"].shape == (12, 207) and np.isfinite(z["forecast"]).all()
        assert str(z["forecast_timestamps"][0]) == "2012-03-08T00:00:00"
    assert main(["predict", "--checkpoint", str(trained_run), "--data", "embedded", "--out",
                 str(tmp_path / "all.npz"), "--all-windows"]) == 0
    with np.load(tmp_path / "all.npz") as z:
        assert z["window_forecasts"].shape == (2016 - 12 + 1, 12, 207)
        np.testing.assert_allclose(z["window_forecasts"][-1], z["forecast"], rtol=1e-5)


def test_from_checkpoint(trained_run):
    model = STHSepNet.from_checkpoint(trained_run)
    c = model.config      # the seasonal residual reads two calendar channels
    assert (c.num_nodes, c.in_features, c.seasonal_residual) == (207, 3, True)
    assert model(torch.zeros(2, 12, 207, 3)).shape == (2, 12, 207)


def test_the_calendar_of_other_data_must_match_the_models(trained_run, tmp_path, capsys):
    from sthfast.data import load_series

    series = load_series("embedded")
    bare = tmp_path / "no_times.npz"
    np.savez(bare, data=series.values[:, :, 0])
    assert main(["predict", "--checkpoint", str(trained_run), "--data", str(bare),
                 "--out", str(tmp_path / "f.npz")]) == 2
    assert "reads its calendar channels from timestamps; " in capsys.readouterr().err
    coarse = tmp_path / "ten_minutes.npz"
    stamps = np.datetime64("2012-03-01T00:00") + np.arange(series.num_steps) * np.timedelta64(10, "m")
    np.savez(coarse, data=series.values[:, :, 0], timestamps=stamps.astype(str))
    assert main(["evaluate", "--checkpoint", str(trained_run), "--data", str(coarse)]) == 2
    err = capsys.readouterr().err
    assert "the model's calendar has 288 steps per day; " in err and "ten_minutes.npz has 144" in err


def test_refusals(trained_run, tiny_backbones, tmp_path, capsys):
    flags = tiny_flags(tiny_backbones["bert"])
    assert main(["train", "--data", "embedded", "--out", str(trained_run)] + flags) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--data", "embedded", "--out", str(trained_run), "--resume", "--epochs", "3",
                 "--max-batches", "3"] + flags + ["--hyper-k", "2"]) == 2
    assert "different model config (fields ['hyper_k'])" in capsys.readouterr().err
    other = tmp_path / "other.npz"
    np.savez(other, data=np.random.default_rng(0).random((300, 5)).astype(np.float32))
    assert main(["evaluate", "--checkpoint", str(trained_run), "--data", str(other)]) == 2
    assert "the checkpoint is for N=207" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path)]) == 2
    assert "no checkpoint here" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(trained_run), "--device", "gpu"]) == 2
    assert "device='gpu' is not a device" in capsys.readouterr().err
    assert main(["train", "--data", "embedded", "--out", str(trained_run), "--resume", "--max-batches", "3",
                 "--lr", "0.5"] + flags) == 2
    assert "other training settings (fields ['lr'])" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "r")] + flags) == 2
    assert "missing.npz: file not found" in capsys.readouterr().err


def test_flags_are_the_config_fields(capsys):
    import dataclasses

    from sthfast import STHSepNetConfig
    from sthfast.cli import build_parser
    from sthfast.train_config import DATA_FIELDS

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train_parser._actions}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    fields |= {f.name for f in dataclasses.fields(STHSepNetConfig)} - set(DATA_FIELDS)
    assert fields <= dests
    help_text = train_parser.format_help()
    assert "--hyper-k" in help_text and "nearest neighbours" in help_text


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tiny_backbones, tmp_path):
    flags = ["-m", "sthfast.cli", "train", "--data", "embedded", "--epochs", "3", "--max-batches", "12",
             "--no-plots"] + tiny_flags(tiny_backbones["bert"])
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run([sys.executable, *flags, "--out", str(whole)], check=True, env=env, capture_output=True)

    process = subprocess.Popen([sys.executable, *flags, "--out", str(broken)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = broken / "checkpoint" / "last" / "meta.json"
    deadline = time.time() + 300
    while not meta.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed mid-way"
    process.send_signal(signal.SIGKILL)        # during epoch 2: the last checkpoint is epoch 1
    process.wait()
    assert json.loads(meta.read_text())["epoch"] == 1 and not (broken / "metrics.json").exists()
    subprocess.run([sys.executable, *flags, "--out", str(broken), "--resume"], check=True, env=env,
                   capture_output=True)

    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, broken))
    assert a["test"] == b["test"]
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("train_seconds", "samples_per_s")} for r in h]
    assert strip(a["history"]) == strip(b["history"])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_names_its_checkpoint_and_the_resume_command(tiny_backbones, tmp_path, signum):
    """Ctrl-C or SIGTERM mid-run: no traceback, one line naming the last checkpoint and the command
    that continues, exit 128 + signal; that command then continues the run (here with fewer
    epochs: a run of 50 leaves no chance of ending before the signal, however loaded the machine)."""
    out = tmp_path / "run"
    flags = ["train", "--data", "embedded", "--epochs", "50", "--max-batches", "12", "--no-plots",
             "--out", str(out)] + tiny_flags(tiny_backbones["bert"])
    process = subprocess.Popen([sys.executable, "-m", "sthfast.cli", *flags], env=dict(os.environ, HF_HUB_OFFLINE="1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    meta = out / "checkpoint" / "last" / "meta.json"
    deadline = time.time() + 300
    while not meta.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(signum)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signum
    assert "Traceback" not in stderr
    stopped = [line for line in stderr.splitlines() if line.startswith("sthfast train: stopped by")]
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    epoch = json.loads(meta.read_text())["epoch"]
    assert 1 <= epoch < 50 and len(stopped) == 1 and stopped[0].startswith(
        f"sthfast train: stopped by {name}; the last checkpoint, {meta.parent}, holds epoch {epoch}; continue with: ")
    command = shlex.split(stopped[0].split("continue with: ")[1])
    assert command[0] == "sthfast" and command[1:] == flags + ["--resume"]
    command[command.index("--epochs") + 1] = str(epoch + 1)             # one more epoch, then the test
    assert main(command[1:]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, epoch + 2)) and (out / "metrics.json").is_file()


def _tiny_train(tiny_backbones, out, model_overrides=None, **train_fields):
    tc = TrainConfig(data="embedded", protocol="standard", max_batches=1, batch_size=4, out=str(out),
                     threads=1, **{"plots": False, **train_fields})
    return train(tc, **{"backbone": tiny_backbones["bert"], "layers": 1, "conv_channels": 8, "residual_channels": 8,
                        "skip_channels": 8, "end_channels": 8, "node_emb_dim": 8, "d_ff": 16,
                        "fusion": "spatial_only", **(model_overrides or {})})


def test_early_stopping_best_checkpoint_and_milestones(tiny_backbones, tmp_path, monkeypatch):
    import sthfast.training as training
    from sthfast.metrics import ForecastMetrics

    scripted = iter([3.0, 2.0, 2.5, 2.6, 1.0])
    real = training.evaluate_windows

    def scripted_val(model, dataset, data, zeros_missing, batch_size, device, baselines=None, **kw):
        if baselines is not None:                       # the final test evaluation is real
            return real(model, dataset, data, zeros_missing, batch_size, device, baselines, **kw)
        metrics = ForecastMetrics(dataset.pred_len)
        metrics.update(torch.full((1, dataset.pred_len, 1), next(scripted)), torch.zeros(1, dataset.pred_len, 1))
        return {"metrics": {"model": metrics}, "predictions": None}

    monkeypatch.setattr(training, "evaluate_windows", scripted_val)
    summary = _tiny_train(tiny_backbones, tmp_path / "es", epochs=5, patience=2, milestones="1,3",
                          lr_gamma=0.5, lr=0.01)
    assert summary["epochs_run"] == 4 and summary["best_epoch"] == 2   # two epochs worse than 2.0
    assert json.loads((tmp_path / "es/checkpoint/best/meta.json").read_text())["epoch"] == 2
    assert [r["lr"] for r in summary["history"]] == pytest.approx([0.005, 0.005, 0.0025, 0.0025])


def test_diverged_training_is_a_clear_error(tiny_backbones, tmp_path, monkeypatch):
    from sthfast.metrics import ForecastMetrics

    monkeypatch.setattr(ForecastMetrics, "result",
                        lambda self, horizons=(): {"all": {"mae": float("nan"), "rmse": 0.0, "mape": 0.0}})
    with pytest.raises(ValueError, match="validation MAE is nan after epoch 1: training diverged"):
        _tiny_train(tiny_backbones, tmp_path / "nan", epochs=1)


def test_masked_losses_ignore_missing_targets():
    from sthfast.metrics import masked_loss, valid_mask

    pred = torch.tensor([[1.0, 2.0, 3.0]])
    target = torch.tensor([[2.0, float("nan"), 0.0]])
    assert masked_loss(pred, target, valid_mask(target, False)).item() == pytest.approx((1 + 9) / 2)
    assert masked_loss(pred, target, valid_mask(target, True)).item() == pytest.approx(1.0)
    assert masked_loss(pred, target, valid_mask(target, False), "mae").item() == pytest.approx((1 + 3) / 2)
    assert masked_loss(pred, target, valid_mask(target, True), "mae").item() == pytest.approx(1.0)
    # Huber: squared / 2 below delta, delta * (|e| - delta / 2) above; here errors 1 and 3 (valid)
    assert masked_loss(pred, target, valid_mask(target, False), "huber", 2.0).item() == pytest.approx((0.5 + 2 * 2) / 2)
    assert masked_loss(pred, target, valid_mask(target, False), "huber", 4.0).item() == pytest.approx((0.5 + 4.5) / 2)
    with pytest.raises(ValueError, match="loss='quantile'"):
        TrainConfig(loss="quantile")
    with pytest.raises(ValueError, match="huber_delta=0"):
        TrainConfig(loss="huber", huber_delta=0)


def test_auto_loss_is_mae_on_the_embedded_speeds_and_is_recorded(tiny_backbones, tmp_path):
    """With the zeros kept as readings (the paper protocol's way), so that the rule sees them."""
    mse = _tiny_train(tiny_backbones, tmp_path / "mse", epochs=1, loss="mse", zeros_missing=False)
    auto = _tiny_train(tiny_backbones, tmp_path / "auto", epochs=1, zeros_missing=False)
    mae = _tiny_train(tiny_backbones, tmp_path / "mae", epochs=1, loss="mae", zeros_missing=False)
    assert auto["history"][0]["train_loss"] == mae["history"][0]["train_loss"] != mse["history"][0]["train_loss"]
    saved = json.loads((tmp_path / "auto/checkpoint/last/meta.json").read_text())
    assert saved["train_config"]["loss"] == auto["loss"] == "mae"


@pytest.mark.filterwarnings("ignore:counts. 1 of 5 node")
def test_auto_loss_is_huber_where_most_varying_nodes_are_mostly_zero():
    """30 training steps: node 0 reads 0 at 20 of them, node 1 at 10; node 2 is always 0, node 3
    has no reading, node 4 is always 5 (these three are left out). One of the two varying nodes
    is mostly zero: a half is not more than half, so MAE; the validation and test steps do not
    count; node 1 at 0 for 15 steps is not mostly zero, for 16 it is."""
    from sthfast.auto_rules import chosen_loss, mostly_zero_nodes
    from sthfast.data import SensorSeries, prepare
    from sthfast.metrics import masked_loss
    from sthfast.training import resolved_loss

    values = np.ones((60, 5, 1), dtype=np.float32)
    values[:, 0], values[::3, 0], values[:30:3, 1] = 0, 1, 0
    values[:, 2], values[:, 3], values[:, 4] = 0, np.nan, 5
    values[30:, 1] = 0                                        # after the training split
    tc = TrainConfig(split="0.5,0.25,0.25")

    def share_and_loss(config=tc):
        train_target = prepare(SensorSeries(values.copy(), "counts"), 2, 2, config.split_fractions()).train_target()
        share = mostly_zero_nodes(train_target)
        assert resolved_loss(config, train_target) == (chosen_loss(share) if config.loss == "auto" else config.loss)
        return share, resolved_loss(config, train_target)

    assert share_and_loss() == (0.5, "mae")
    values[:30, 1] = np.where(np.arange(30) < 15, 0, 1)[:, None]
    assert share_and_loss() == (0.5, "mae")
    values[15, 1] = 0
    assert share_and_loss() == (1.0, "huber")
    assert share_and_loss(dataclasses.replace(tc, loss="mse"))[1] == "mse"
    with pytest.raises(ValueError, match="kind='auto' is not 'mae', 'mse' or 'huber'"):
        masked_loss(torch.zeros(2), torch.zeros(2), torch.ones(2, dtype=torch.bool), "auto")


def test_resume_keeps_what_auto_chose_when_the_run_started(tiny_backbones, tmp_path):
    """A run on mostly-zero counts started with MAE and without the seasonal residual (as the rules
    of earlier versions might choose) resumes under the default 'auto' of both with them, not with
    the Huber loss and the residual that the rules pick there now."""
    rng = np.random.default_rng(0)
    data = tmp_path / "counts.npz"
    np.savez(data, data=rng.poisson(0.3, size=(120, 6)).astype(np.float32))
    tc = TrainConfig(data=str(data), protocol="standard", zeros_missing=False, max_batches=1, batch_size=4,
                     out=str(tmp_path / "run"), plots=False, threads=1, epochs=1, loss="mae", steps_per_day=6)
    model = dict(backbone=tiny_backbones["bert"], layers=1, conv_channels=8, residual_channels=8, skip_channels=8,
                 end_channels=8, node_emb_dim=8, d_ff=16, subgraph_size=3, fusion="spatial_only")
    assert train(tc, **model, seasonal_residual=False)["loss"] == "mae"
    fresh = train(dataclasses.replace(tc, loss="auto", out=str(tmp_path / "fresh")), **model)
    assert fresh["loss"] == "huber" and STHSepNet.from_checkpoint(tmp_path / "fresh").config.seasonal_residual
    resumed = train(dataclasses.replace(tc, loss="auto", epochs=2, resume=True), **model)
    assert resumed["loss"] == "mae" and resumed["epochs_run"] == 2
    assert not STHSepNet.from_checkpoint(tc.out).config.seasonal_residual


def test_python_api_train_with_time_features(tiny_backbones, tmp_path):
    tc = TrainConfig(data="embedded", protocol="standard", epochs=1, max_batches=1, batch_size=4,
                     out=str(tmp_path / "api"), plots=False, threads=1, time_features="time_of_day,day_of_week")
    summary = train(tc, backbone=tiny_backbones["bert"], layers=1, conv_channels=8, residual_channels=8,
                    skip_channels=8, end_channels=8, node_emb_dim=8, d_ff=16, fusion="spatial_only")
    assert summary["epochs_run"] == 1 and Path(tc.out, "metrics.json").is_file()
    model = STHSepNet.from_checkpoint(tc.out)
    assert model.config.in_features == 3                    # speed + the two calendar channels
    again = evaluate(tc.out)                                # the checkpoint rebuilds the same inputs
    assert again["model"]["all"]["mae"] == pytest.approx(summary["test"]["model"]["all"]["mae"], rel=1e-5)
    forecast = predict(tc.out, "embedded", tmp_path / "f.npz")["forecast"]
    assert forecast.shape == (12, 207) and np.isfinite(forecast).all()
    with pytest.raises(ValueError, match=r"\['num_nodes'\] are read from the data"):
        train(TrainConfig(out=str(tmp_path / "x")), num_nodes=5)
    with pytest.raises(ValueError, match="time_features='hour'"):
        TrainConfig(time_features="hour")
    with pytest.raises(ValueError, match="each at most once"):
        TrainConfig(time_features="time_of_day,time_of_day")


def test_compiled_training_equals_eager_training(tiny_backbones, tmp_path, monkeypatch):
    """``compile`` trains the compiled model (the same parameters) to the eager run's result. The
    compiler is swapped for ``aot_eager`` here (inductor: ``test_compile.py``)."""
    compiled = []
    real_compile = torch.compile

    def aot_eager(model):
        compiled.append(model)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", aot_eager)
    runs = {flag: _tiny_train(tiny_backbones, tmp_path / str(flag), epochs=1, compile=flag)
            for flag in (False, True)}
    assert len(compiled) == 1 and isinstance(compiled[0], STHSepNet)
    eager, fast = (runs[flag]["test"]["model"]["all"] for flag in (False, True))
    assert fast["mae"] == pytest.approx(eager["mae"], rel=1e-4)


def test_bf16_trains_on_the_cpu(tiny_backbones, tmp_path, monkeypatch):
    """``bf16`` autocasts the training forward on the CPU too (it used to be ignored there)."""
    seen = []
    real_autocast = torch.autocast

    def recording(device_type, **kwargs):
        seen.append((device_type, kwargs.get("dtype"), kwargs.get("enabled")))
        return real_autocast(device_type, **kwargs)

    monkeypatch.setattr(torch, "autocast", recording)
    summary = _tiny_train(tiny_backbones, tmp_path / "bf16", epochs=1, bf16=True)
    assert seen == [("cpu", torch.bfloat16, True)]
    assert np.isfinite(summary["test"]["model"]["all"]["mae"])


def test_bf16_default_is_on_only_for_bf16_cpus(monkeypatch):
    from sthfast import STHSepNetConfig, optional_deps
    from sthfast.optional_deps import Found
    from sthfast.training import use_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    long, short = STHSepNetConfig(seq_len=48), STHSepNetConfig(seq_len=12, patch_len=4, stride=2)
    for has in (True, False):
        monkeypatch.setattr(optional_deps, "probe", lambda name, has=has: Found(name, has and name == "cpu_bf16", ""))
        assert use_bf16(TrainConfig(), long, cpu) is has and use_bf16(TrainConfig(), short, cpu) is has
        assert not use_bf16(TrainConfig(), long, cuda)
        assert use_bf16(TrainConfig(bf16=True), short, cpu) and not use_bf16(TrainConfig(bf16=False), long, cpu)


def test_dead_nodes_are_kept_by_default_and_dropped_on_request(tiny_backbones, tmp_path):
    from sthfast.data import DataWarning

    rng = np.random.default_rng(0)
    values = (5 + np.sin(np.arange(400) / 10)[:, None] + rng.random((400, 6))).astype(np.float32)
    values[:, 2] = 0.0                       # a grid cell with no trips: dead once zeros are missing
    values[:300, 4] = np.nan                 # reports only in the test split
    path = tmp_path / "cells.npz"
    np.savez(path, data=values)
    small = dict(backbone=tiny_backbones["bert"], layers=1, conv_channels=8, residual_channels=8,
                 skip_channels=8, end_channels=8, node_emb_dim=8, d_ff=16, fusion="spatial_only")

    def run(name, **fields):
        tc = TrainConfig(data=str(path), protocol="standard", epochs=1, batch_size=8, plots=False, threads=1,
                         out=str(tmp_path / name), **fields)
        return train(tc, **small)

    with pytest.warns(DataWarning, match=r"\[2, 4\]"):
        kept_all = run("all")
    assert kept_all["num_nodes"] == 6 and np.isfinite(kept_all["test"]["model"]["all"]["mae"])
    dropped = run("dropped", drop_dead_nodes=True)
    assert dropped["num_nodes"] == 4
    meta = json.loads((tmp_path / "dropped/checkpoint/best/meta.json").read_text())
    assert meta["nodes"] == [0, 1, 3, 5]
    again = evaluate(tmp_path / "dropped")["model"]["all"]["mae"]
    assert again == pytest.approx(dropped["test"]["model"]["all"]["mae"])
    forecast = predict(tmp_path / "dropped", str(path), tmp_path / "f.npz")
    assert forecast["forecast"].shape == (12, 4) and forecast["nodes"].tolist() == [0, 1, 3, 5]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_run_files_honour_the_umask(tiny_backbones, tmp_path, umask, mode):
    """A colleague on the same server can read a run where the umask lets them (the atomic
    writer's temporary files are 0600)."""
    previous = os.umask(umask)
    try:
        _tiny_train(tiny_backbones, tmp_path / "run", epochs=1, plots=True)
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {"metrics.json", "log.jsonl", "config.json", "meta.json"} <= {p.name for p in files}
    assert any(p.suffix == ".png" for p in files) and any(p.suffix == ".safetensors" for p in files)
    assert {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files} == {
        str(p.relative_to(tmp_path)): oct(mode) for p in files}


def test_plots_read_in_units_and_time(tiny_backbones, tmp_path, monkeypatch):
    """Every value axis names the data's unit (here from --units), the horizon is in minutes (5-minute
    data), the forecast plot shows a typical and a hard window per node beside the best baseline,
    and the hypergraph plot shows memberships, weights and the effective order."""
    import sthfast.plots as plots

    figures = {}
    real_save = plots._save

    def keep(fig, path):
        figures[path.name] = [(ax.get_xlabel(), ax.get_ylabel(), ax.get_title(),
                               [line.get_label() for line in ax.get_lines()], ax.get_lines())
                              for ax in fig.axes if ax.get_visible() and ax.axison]
        real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    summary = _tiny_train(tiny_backbones, tmp_path / "run", {"hyper_order": "adaptive"}, epochs=1, plots=True,
                          units="veh/h")
    assert set(figures) == set(PLOTS)
    forecast = figures["forecast.png"]
    assert len(forecast) == 2 * plots.FORECAST_NODES
    best = min(("last_value", "seasonal_average", "linear"), key=lambda b: summary["test"][b]["all"]["mae"])
    for _, ylabel, title, labels, _ in forecast:
        assert ylabel == "veh/h" and "veh/h" in title and "forecast from 2012-03-" in title
        assert [label for label in labels if not label.startswith("_")] == ["input", "truth", "STH-SepNet", best]
    assert sum("typical window" in t for _, _, t, _, _ in forecast) == plots.FORECAST_NODES
    assert sum("hard window" in t for _, _, t, _, _ in forecast) == plots.FORECAST_NODES
    assert forecast[-1][0] == "minutes from the forecast start"
    (xlabel, ylabel, _, labels, lines), = figures["error_by_horizon.png"]
    assert (xlabel, ylabel) == ("forecast horizon (minutes ahead)", "test MAE (veh/h)")
    assert labels[0] == "STH-SepNet" and lines[0].get_xdata().tolist() == [5.0 * h for h in range(1, 13)]
    assert figures["training_curves.png"][1][1] == "validation MAE (veh/h)"
    hyper = [(x, t) for x, _, t, _, _ in figures["hypergraph.png"]]
    assert hyper[0][0] == "hyperedges a node belongs to" and hyper[1][0].startswith("membership weight")
    assert hyper[2][0].startswith("effective order") and "adaptive order" in hyper[2][1]
