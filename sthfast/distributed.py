"""Several processes under ``torchrun``: PyTorch's DistributedDataParallel (DDP), one process per
device, NCCL between GPUs and gloo between CPUs.

torchrun starts P processes and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each;
:func:`start` reads them and joins the process group (with a timeout, so that a stuck rank fails
the job instead of hanging it). Every step's global batch (``--batch-size``) is split into P
equal shards, one per rank (:meth:`Ranks.shard_batch`); DDP averages the ranks' gradients, and
:meth:`Ranks.loss_denominator` makes that average the gradient of the global batch's masked loss.
In one process (no torchrun, or P = 1) a :class:`Ranks` is the identity.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .train_config import DIST_BACKENDS

DDP = torch.nn.parallel.DistributedDataParallel
# every rank builds the same buffers from the data: DDP need not broadcast them at every step
# (torch >= 2.13 names the flag forward_sync_buffers; broadcast_buffers warns there)
NO_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                  else {"broadcast_buffers": False})


@dataclass(frozen=True)
class Launch:
    """What torchrun tells a process: its rank among ``world_size`` and on its machine."""

    rank: int
    world_size: int
    local_rank: int


def resolve_device(name: str) -> torch.device:
    """The device a ``--device`` value names: ``'auto'`` is CUDA where available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but no CUDA device is available")
    return device


def launched(env: dict[str, str] | None = None) -> Launch | None:
    """The torchrun variables of ``env`` (default ``os.environ``), or None outside torchrun."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    try:
        launch = Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
    except (KeyError, ValueError):
        raise ValueError("WORLD_SIZE is set but RANK / LOCAL_RANK are missing or not integers: start the "
                         "processes with torchrun") from None
    if not 0 <= launch.rank < launch.world_size:
        raise ValueError(f"RANK={launch.rank} is not in [0, WORLD_SIZE={launch.world_size})")
    return launch


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of the process ``local_rank`` of a machine: ``cuda:LOCAL_RANK`` for a CUDA run
    (which must not name another index), the CPU for a CPU run."""
    if device.type != "cuda":
        return device
    if device.index is not None and device.index != local_rank:
        raise ValueError(f"device={str(device)!r}: under torchrun each process uses cuda:LOCAL_RANK "
                         f"(here cuda:{local_rank}); pass --device cuda or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f"LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s): start at "
                         f"most {count} process(es) per machine (--nproc-per-node)")
    return torch.device("cuda", local_rank)


def choose_backend(backend: str, device: torch.device) -> str:
    """``backend`` ('auto': NCCL on CUDA, gloo on CPUs), checked against ``device``."""
    if backend not in DIST_BACKENDS:
        raise ValueError(f"dist_backend={backend!r} is not one of {list(DIST_BACKENDS)}")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"dist_backend='nccl' runs between CUDA devices only, and this run's device is "
                         f"{device}: use --dist-backend gloo (or auto) on CPUs")
    available = dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()
    if not available:
        raise ValueError(f"dist_backend={backend!r}: this torch was built without {backend}")
    return backend


def check_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {world_size} processes: "
                         f"--batch-size is the global batch, split evenly across them (use a multiple of "
                         f"{world_size})")


def start(device: torch.device, backend: str = "auto", timeout_s: float = 600.0,
          batch_size: int | None = None) -> "Ranks":
    """This process' :class:`Ranks`: under torchrun with more than one process, the process group
    joined (unless the caller already joined one) on the rank's device; else one process on
    ``device``. ``batch_size``: the global batch, which the processes must divide."""
    launch = launched()
    if launch is None or launch.world_size == 1:
        return Ranks(device=device)
    if batch_size is not None:
        check_batch(batch_size, launch.world_size)
    device = rank_device(device, launch.local_rank)
    backend = choose_backend(backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return Ranks(launch.rank, launch.world_size, device, owns_group)


@dataclass(frozen=True)
class Ranks:
    """This process among the ranks of a run (``world_size`` 1: a single process)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder and prints (rank 0)."""
        return self.rank == 0

    def part(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of ``indices [W]`` (sizes differ by at most one)."""
        return indices.tensor_split(self.world_size)[self.rank] if self.active else indices

    def shard_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's equal shard of the global ``batch [B]`` of window indices: ``(indices [S],
        padding [S] bool)``, ``S = ceil(B / P)``. A batch that P does not divide (an epoch's last)
        is padded with repeats of its first window, flagged in ``padding``: their targets must
        count nowhere, so that every rank runs one forward and backward per step and the shards'
        gradients add up to the global batch's."""
        size = -(-len(batch) // self.world_size)
        padded = torch.cat([batch, batch[:1].expand(size * self.world_size - len(batch))])
        padding = torch.arange(len(padded)) >= len(batch)
        mine = slice(self.rank * size, (self.rank + 1) * size)
        return padded[mine], padding[mine]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (a copy; on ``values``' device)."""
        if not self.active:
            return values
        total = values.to(self.device, copy=True)
        dist.all_reduce(total)
        return total.to(values.device)

    def loss_denominator(self, valid: torch.Tensor) -> torch.Tensor | None:
        """What the masked loss of this rank's shard divides its error sum by: the valid targets of
        the whole global batch over P, so that DDP's mean of the ranks' gradients is the gradient
        of the global batch's loss even when the shards hold different numbers of valid targets
        (None in one process: the batch's own count)."""
        if not self.active:
            return None
        return self.sum(valid.sum().double()).clamp_min(1).float() / self.world_size

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.active:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def check_same(self, what: str, value: Any) -> None:
        """Fail on every rank unless every rank has the same ``value``."""
        values = self.gather(value)
        if any(v != values[0] for v in values):
            raise ValueError(f"the processes disagree on {what}: {values} by rank; on several machines "
                             "every machine must see the same data and the same --out folder")

    def seed_own_stream(self, seed: int, *salt: int) -> None:
        """Give ranks > 0 random streams of their own (dropout), derived from ``seed``; rank 0 keeps
        the single-process stream."""
        if self.rank > 0:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank, *salt]).generate_state(1)[0]))

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` under DDP (the same parameters), or itself in one process. ``static_graph``:
        the same parameters take part in every step, and those that never do (a stream switched
        off) are allowed."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids, static_graph=True, **NO_BUFFER_SYNC)

    @contextlib.contextmanager
    def quiet(self):
        """On ranks > 0, no printed progress and no warnings (rank 0 prints them once); errors
        still surface on every rank."""
        if self.is_main:
            yield
            return
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield

    def close(self) -> None:
        """Leave the process group, if :func:`start` joined it. Drop the DDP model first: a gloo
        group freed last by DDP's reducer joins its worker threads holding the GIL, which
        deadlocks when a worker still has to free a tensor of a collective that just finished."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
