"""`STHSepNet`: the temporal stream (pooled series through a LoRA-adapted LLM) and the spatial stream
(adaptive graph + hypergraph MTGNN) fused by a learned gate; the README says where it departs from
the authors' code."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from . import checkpoint
from .config import STHSepNetConfig
from .nn.calendar import CalendarSlots, SeasonalResidual, TimeEmbedding
from .nn.fusion import FUSION_MODULES
from .nn.identity_head import IdentityHead
from .nn.spatial import SpatialStream
from .nn.temporal import TemporalStream
from .profile_stages import stage


class STHSepNet(nn.Module):
    """STH-SepNet. ``forward(x)``: ``x[B, T, N]`` or ``x[B, T, N, F]`` (values scaled per node)
    -> ``[B, pred_len, N]``.

    Args:
        config: the hyper-parameters.
        adjacency: ``[N, N]`` weights, required for ``graph='static'`` and ignored otherwise;
            row v lists the nodes v reads from. Dense (numpy or torch) or sparse (a torch sparse
            tensor, or a scipy.sparse matrix): the model keeps only the edges, so a large
            network's adjacency never needs to be dense.
    """

    def __init__(self, config: STHSepNetConfig, adjacency: Tensor | np.ndarray | None = None):
        super().__init__()
        if not isinstance(config, STHSepNetConfig):
            raise TypeError(f"config must be an STHSepNetConfig, got {type(config).__name__}")
        self.config = c = copy.deepcopy(config)   # the model's own: later edits to config change nothing
        static = _check_adjacency(adjacency, c.num_nodes) if c.graph == "static" and c.uses_spatial else None
        self.temporal = TemporalStream(c) if c.uses_llm else None
        self.spatial = SpatialStream(c, static) if c.uses_spatial else None
        self.fusion = FUSION_MODULES[c.fusion](c) if c.fusion in FUSION_MODULES else None
        slots = CalendarSlots(c) if c.uses_calendar else None
        self.seasonal = SeasonalResidual(c, slots) if c.seasonal_residual else None
        self.time_embedding = TimeEmbedding(c, slots) if c.time_embedding_dim else None
        self.identity_head = IdentityHead(c, slots) if c.identity_head_dim else None
        self.slots = slots
        self.register_buffer("clamp_min", torch.full((c.num_nodes,), -torch.inf))
        self.register_buffer("clamp_max", torch.full((c.num_nodes,), torch.inf))

    @classmethod
    def from_checkpoint(cls, folder) -> "STHSepNet":
        """The model saved in a checkpoint folder (or a run folder's best checkpoint); its scaler and
        training metadata are in ``sthfast.checkpoint.load_checkpoint(folder, STHSepNet)[1]``."""
        return checkpoint.load_checkpoint(folder, cls)[0]

    def set_clamp_range(self, low: Tensor | np.ndarray, high: Tensor | np.ndarray) -> None:
        """Per-node output bounds ``[N]`` (in the model's scaled units), used when ``config.clamp``."""
        for name, value in (("clamp_min", low), ("clamp_max", high)):
            value = torch.as_tensor(value, dtype=self.clamp_min.dtype)
            if value.shape != (self.config.num_nodes,):
                raise ValueError(f"{name} must have shape [{self.config.num_nodes}], got {list(value.shape)}")
            getattr(self, name).copy_(value)

    def set_seasonal_profile(self, profile: Tensor | np.ndarray) -> None:
        """The per-node seasonal profile ``[slots, N]`` in the model's scaled units that
        ``config.seasonal_residual`` forecasts the deviation from; ``slots`` is ``7 * slots_per_day``
        with a weekday channel, else ``slots_per_day``. Row ``s`` is week slot ``s``: weekday
        (0 = the day_of_week channel's 0) times slots_per_day plus the time-of-day slot."""
        if self.seasonal is None:
            raise ValueError("the model has no seasonal profile: build it with seasonal_residual=True")
        profile = torch.as_tensor(profile, dtype=self.seasonal.profile.dtype)
        if profile.shape != self.seasonal.profile.shape:
            raise ValueError(f"profile must have shape {list(self.seasonal.profile.shape)}, got {list(profile.shape)}")
        if not torch.isfinite(profile).all():
            raise ValueError("profile must be finite (fill slots never seen in training)")
        self.seasonal.profile.copy_(profile)

    def forward(self, x: Tensor) -> Tensor:
        """``x[B, T, N]`` or ``[B, T, N, F]`` -> ``[B, pred_len, N]``. An empty batch (B = 0) gives
        an empty output that is not attached to the parameters (there is nothing to learn from)."""
        with stage("input_checks"):
            x = self._check_input(x)                                   # [B, T, N, F]
        c = self.config
        if x.shape[0] == 0:
            return x.new_zeros(0, c.pred_len, c.num_nodes)
        last = self.slots.last(x) if self.slots is not None else None      # [B] week slot
        if self.seasonal is not None:
            x = self.seasonal.remove(x, last)
        y_time = y_space = None
        if self.temporal is not None:
            with stage("temporal_stream"):
                y_time = self.temporal(x)                                  # [B, H, N]
        if self.spatial is not None:
            spatial_in = x if self.time_embedding is None else \
                torch.cat([x, self.time_embedding(last).to(x.dtype)], dim=-1)        # [B, T, N, F + 2d]
            y_space = self.spatial(spatial_in)                                       # [B, H, N]
            if self.identity_head is not None:
                with stage("identity_head"):
                    y_space = y_space + self.identity_head(x[..., c.target_feature], last).to(y_space.dtype)
        with stage("fusion"):
            if self.fusion is not None:
                y = self.fusion(y_time, y_space)
            else:
                y = y_time.contiguous() if y_space is None else y_space
        if self.seasonal is not None:
            y = self.seasonal.restore(y, last)
        if c.clamp:
            y = torch.maximum(torch.minimum(y, self.clamp_max), self.clamp_min)
        return y

    def _check_input(self, x: Tensor) -> Tensor:
        c = self.config
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
        if x.dim() == 3:
            x = x.unsqueeze(-1)
        if x.dim() != 4:
            raise ValueError(f"input must be [B, T, N] or [B, T, N, F], got shape {list(x.shape)}")
        _, t, n, f = x.shape
        if t != c.seq_len:
            raise ValueError(f"input has T={t} time steps, the model expects seq_len={c.seq_len}")
        if n != c.num_nodes:
            raise ValueError(f"input has N={n} nodes, the model expects num_nodes={c.num_nodes}")
        if f != c.in_features:
            raise ValueError(f"input has F={f} features, the model expects in_features={c.in_features}")
        if c.check_inputs and not torch.isfinite(x).all():
            raise ValueError("input contains NaN or inf: mask or fill missing values before the model")
        return x

    def parameter_counts(self) -> dict[str, int]:
        """Total, trainable and LoRA parameter counts."""
        params = list(self.named_parameters())
        return {"total": sum(p.numel() for _, p in params),
                "trainable": sum(p.numel() for _, p in params if p.requires_grad),
                "lora": sum(p.numel() for name, p in params if "lora_" in name)}


def _check_adjacency(adjacency, num_nodes: int) -> Tensor:
    """The adjacency as a coalesced sparse COO tensor ``[N, N]`` without zero entries."""
    if adjacency is None:
        raise ValueError("graph='static' needs an adjacency: STHSepNet(config, adjacency=A)")
    if hasattr(adjacency, "tocoo"):                                     # scipy.sparse
        coo = adjacency.tocoo()
        adjacency = _sparse(torch.as_tensor(np.stack([coo.row, coo.col]), dtype=torch.long),
                            torch.as_tensor(coo.data), coo.shape)
    a = adjacency if isinstance(adjacency, Tensor) else torch.as_tensor(np.asarray(adjacency))
    if a.shape != (num_nodes, num_nodes):
        raise ValueError(f"adjacency must be [{num_nodes}, {num_nodes}], got {list(a.shape)}")
    a = (a.to_sparse_coo() if a.layout != torch.strided else a.to_sparse()).coalesce()
    a = a.to(torch.get_default_dtype())
    values = a.values()
    if not torch.isfinite(values).all() or (values < 0).any():
        raise ValueError("adjacency must be finite and non-negative")
    keep = values != 0
    return _sparse(a.indices()[:, keep], values[keep], a.shape)


def _sparse(index: Tensor, values: Tensor, shape) -> Tensor:
    """A coalesced sparse COO tensor; an index outside ``shape`` is a ``ValueError``."""
    try:
        return torch.sparse_coo_tensor(index, values, tuple(shape), check_invariants=True).coalesce()
    except RuntimeError as err:
        raise ValueError(f"adjacency: {err}") from None
