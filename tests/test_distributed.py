"""Training in several processes under torchrun (PyTorch DDP, gloo on the CPU): the refusals at
the edge, without processes; then, with two processes (slow): the parameters of one process with
the same global batch, rank-0-only outputs, checkpoints moving between one and two processes, and
a rank killed mid-epoch, after which --resume ends where an uninterrupted run does.

Run as a script (``torchrun ... tests/test_distributed.py [--kill-at N] train ...``) this file is
sthfast's command line with two test hooks: ranks > 0 fail if they write a run file, and with
``--kill-at N`` rank 1 SIGKILLs itself in its N-th training step."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sthfast import TrainConfig, distributed, evaluate
from sthfast.cli import main
from sthfast.distributed import Ranks
from sthfast.metrics import masked_loss
from sthfast.plots import PLOTS

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", "localhost:0"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
TIMEOUT_S = 240


def test_torchrun_variables_are_read():
    assert distributed.launched({}) is None
    assert distributed.launched({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == distributed.Launch(1, 2, 1)
    with pytest.raises(ValueError, match="RANK / LOCAL_RANK are missing"):
        distributed.launched({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match=r"RANK=2 is not in \[0, WORLD_SIZE=2\)"):
        distributed.launched({"RANK": "2", "WORLD_SIZE": "2"})


def test_refusals_under_torchrun(tiny_backbones, tmp_path, monkeypatch, capsys):
    """What a user gets wrong is refused before any process group is joined, on every rank."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    flags = ["train", "--data", "embedded", "--backbone", tiny_backbones["bert"], "--device", "cpu",
             "--out", str(tmp_path / "run")]
    assert main(flags + ["--batch-size", "5"]) == 2
    error = capsys.readouterr().err
    assert "batch_size=5 is not divisible by the 2 processes: --batch-size is the global batch" in error
    assert main(flags + ["--dist-backend", "nccl"]) == 2
    assert "dist_backend='nccl' runs between CUDA devices only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="each process uses cuda:LOCAL_RANK"):
        distributed.rank_device(torch.device("cuda", 1), local_rank=0)
    assert distributed.rank_device(torch.device("cpu"), local_rank=1) == torch.device("cpu")
    with pytest.raises(ValueError, match="dist_backend='mpi'"):
        TrainConfig(dist_backend="mpi")
    with pytest.raises(ValueError, match="dist_timeout=0"):
        TrainConfig(dist_timeout=0)


def test_shards_cover_the_global_batch_once():
    batch = torch.tensor([7, 3, 9, 1, 4])
    shards = [Ranks(rank, 2).shard_batch(batch) for rank in (0, 1)]
    assert [len(idx) for idx, _ in shards] == [3, 3]                     # equal: one step per rank
    real = torch.cat([idx[~pad] for idx, pad in shards])
    assert real.tolist() == batch.tolist() and sum(int(pad.sum()) for _, pad in shards) == 1
    single, pad = Ranks().shard_batch(batch)
    assert single.tolist() == batch.tolist() and not pad.any()
    parts = [Ranks(rank, 3).part(torch.arange(7)) for rank in range(3)]
    assert torch.cat(parts).tolist() == list(range(7))


def test_shard_losses_over_the_global_count_add_up_to_the_global_loss():
    """Two shards with 3 and 1 valid targets: each divides by the global count over P = 2 (what
    ``loss_denominator`` all-reduces), so that the mean of the two is the global batch's loss."""
    pred, target = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 0.0, 0.0, float("nan")])
    valid = torch.isfinite(target)
    whole = masked_loss(pred, target, valid, "mae")
    halves = [masked_loss(pred[s], target[s], valid[s], "mae", denominator=torch.tensor(3 / 2))
              for s in (slice(0, 2), slice(2, 4))]
    assert (halves[0] + halves[1]).item() / 2 == pytest.approx(whole.item())
    assert whole.item() == pytest.approx(2.0)


# -- two processes ------------------------------------------------------------------------------

def _gappy_series(path: Path) -> Path:
    """400 steps of 8 nodes, 30 % missing at random and half the nodes missing for the first 120
    steps, so that the ranks' shards hold different numbers of valid targets; 257 training windows,
    so that an epoch of global batches of 8 ends with a batch of one (padded under DDP)."""
    rng = np.random.default_rng(0)
    values = (5 + np.sin(np.arange(400) / 10)[:, None] + rng.random((400, 8))).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    values[:120, :4] = np.nan
    np.savez(path, data=values)
    return path


@pytest.fixture(scope="module")
def dropout_free_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random BERT without dropout: one process and two then draw no random
    numbers at all, so that their parameters can be compared."""
    import transformers as tf

    path = tmp_path_factory.mktemp("bert0")
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                           vocab_size=100, num_hidden_layers=2, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    tf.AutoModel.from_config(config).save_pretrained(path)
    return str(path)


def _flags(data: Path, backbone: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--backbone", backbone, "--out", str(out), "--layers", "1",
            "--conv-channels", "8", "--residual-channels", "8", "--skip-channels", "8", "--end-channels", "8",
            "--node-emb-dim", "8", "--d-ff", "16", "--gate-hidden", "8", "--subgraph-size", "5",
            "--protocol", "standard", "--batch-size", "8", "--eval-batch-size", "128", "--threads", "1",
            "--device", "cpu", *extra]


def _run(command: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess:
    """``command`` to its end; on a timeout, it and every process it started are killed."""
    with subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            out, err = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"hung for {TIMEOUT_S} s: {command}\n{(out + err)[-4000:]}")
    done = subprocess.CompletedProcess(command, process.returncode, out, err)
    assert (done.returncode == 0) == expect_ok, f"exit {done.returncode}:\n{(out + err)[-4000:]}"
    return done


def _one(flags: list[str]) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "sthfast", *flags])


def _two(flags: list[str], *hooks: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2`` of sthfast through this file's hooks (ranks > 0 write nothing)."""
    return _run([*TORCHRUN, __file__, *hooks, *flags], expect_ok)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    meta = json.loads((run / "checkpoint/last/meta.json").read_text())
    return load_file(str(run / "checkpoint/last" / meta["files"]["weights"]))


def _assert_same_parameters(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:            # the clamp range holds infinities: equal ones compare equal
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=atol, equal_nan=True, msg=key)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_and_two(dropout_free_bert, tmp_path_factory):
    """One epoch of one process and of two processes (with plots) from the same seed."""
    root = tmp_path_factory.mktemp("ddp")
    data = _gappy_series(root / "gappy.npz")
    one, two = root / "one", root / "two"
    # float32: the two runs split the batch into other matrix shapes, whose bfloat16 roundings differ
    extra = ("--epochs", "1", "--dropout", "0", "--lora-dropout", "0", "--no-bf16")
    _one(_flags(data, dropout_free_bert, one, *extra, "--no-plots"))
    printed = _two(_flags(data, dropout_free_bert, two, *extra)).stdout
    return data, one, two, printed


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_global_batch(one_and_two):
    data, one, two, printed = one_and_two
    _assert_same_parameters(one, two, atol=1e-6)
    (a,), (b,) = _log(one), _log(two)
    for key in ("train_loss", "val_mae", "val_rmse", "val_mape"):      # the whole validation split
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    sa, sb = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert (sa["world_size"], sb["world_size"]) == (1, 2)
    for name in ("model", "last_value", "linear"):
        assert sb["test"][name]["all"]["mae"] == pytest.approx(sa["test"][name]["all"]["mae"], rel=1e-5)
    # rank 0 alone wrote (the hooks fail any other rank that writes) and printed
    for name in ("metrics.json", "log.jsonl", "config.json", *PLOTS):
        assert (two / name).is_file(), name
    assert printed.count("epoch 1: train loss") == 1 and printed.count("test metrics") == 1


@pytest.mark.slow
def test_checkpoints_move_between_one_and_two_processes(one_and_two, dropout_free_bert, tmp_path):
    """A DDP checkpoint evaluates in one process to rank 0's test figures; a single-process run
    resumes under DDP and a DDP run in one process, and both then train epoch 2 alike."""
    data, one, two, _ = one_and_two
    tested = json.loads((two / "metrics.json").read_text())["test"]
    again = evaluate(two)["model"]
    for horizon, figures in tested["model"].items():
        assert again[horizon] == pytest.approx(figures, rel=1e-6), horizon
    one_then_two, two_then_one = tmp_path / "one_then_two", tmp_path / "two_then_one"
    shutil.copytree(one, one_then_two)
    shutil.copytree(two, two_then_one)
    extra = ("--epochs", "2", "--dropout", "0", "--lora-dropout", "0", "--no-plots", "--resume", "--no-bf16")
    _two(_flags(data, dropout_free_bert, one_then_two, *extra))
    _one(_flags(data, dropout_free_bert, two_then_one, *extra))
    assert [r["epoch"] for r in _log(one_then_two)] == [r["epoch"] for r in _log(two_then_one)] == [1, 2]
    _assert_same_parameters(one_then_two, two_then_one, atol=1e-5)


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_and_resume_ends_as_an_uninterrupted_run(tiny_backbones, tmp_path):
    """With dropout (every rank its own random stream, restored on resume): rank 1 SIGKILLed in
    epoch 2 stops the job (torchrun tears rank 0 down, no hang); --resume from the epoch 1
    checkpoint ends with the metrics and history of the uninterrupted run."""
    data = _gappy_series(tmp_path / "gappy.npz")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    extra = ("--epochs", "2", "--max-batches", "6", "--no-plots")
    _two(_flags(data, tiny_backbones["bert"], whole, *extra))
    killed = _two(_flags(data, tiny_backbones["bert"], broken, *extra), "--kill-at", "9", expect_ok=False)
    assert "Signal 9 (SIGKILL) received by PID" in killed.stderr
    assert json.loads((broken / "checkpoint/last/meta.json").read_text())["epoch"] == 1
    assert not (broken / "metrics.json").exists()
    _two(_flags(data, tiny_backbones["bert"], broken, *extra, "--resume"))
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (whole, broken))
    assert a["test"] == b["test"]
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("train_seconds", "samples_per_s")} for r in h]
    assert strip(a["history"]) == strip(b["history"])


def child(argv: list[str]) -> int:
    """sthfast's command line in a torchrun process, with the test hooks of the module docstring."""
    import sthfast.checkpoint
    import sthfast.plots
    import sthfast.training

    rank = int(os.environ["RANK"])
    kill_at = math.inf
    if argv[:1] == ["--kill-at"]:
        kill_at, argv = int(argv[1]), argv[2:]
    real_write, real_loss, steps = sthfast.checkpoint.atomic_write, sthfast.training.masked_loss, [0]

    def rank0_write(path, write):
        if rank != 0:
            raise AssertionError(f"rank {rank} wrote {path}")
        real_write(path, write)

    def loss(*args, **kwargs):
        steps[0] += 1
        if rank == 1 and steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_loss(*args, **kwargs)

    sthfast.checkpoint.atomic_write = sthfast.plots.atomic_write = rank0_write
    sthfast.training.masked_loss = loss
    return main(argv)


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
