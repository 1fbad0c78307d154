"""What the model reads from the calendar channels of its input: the week slot of every step, a
per-node seasonal profile to forecast the deviation from (``seasonal_residual``), and learned
time-of-day / day-of-week embeddings (``time_embedding_dim``, as STID)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import STHSepNetConfig


class CalendarSlots(nn.Module):
    """Week slots decoded from the input's calendar channels (time of day as a fraction of the day,
    weekday / 7: :func:`sthfast.data.windows.model_inputs` writes them): ``day_of_week * slots_per_day
    + time_of_day_slot``, or the time-of-day slot alone without a weekday channel."""

    def __init__(self, c: STHSepNetConfig):
        super().__init__()
        self.per_day, self.tod, self.dow = c.slots_per_day, c.time_of_day_channel, c.day_of_week_channel
        self.num_slots = self.per_day * (7 if self.dow is not None else 1)
        # offsets of the input steps from the last one, and of the horizon's steps
        self.register_buffer("inputs_back", -torch.arange(c.seq_len - 1, -1, -1), persistent=False)
        self.register_buffer("ahead", torch.arange(1, c.pred_len + 1), persistent=False)

    def last(self, x: Tensor) -> Tensor:
        """``x [B, T, N, F]`` -> the last input step's slot ``[B]`` (int64). The channels must be
        float32 or wider: bfloat16 cannot tell 1/288 of a day apart."""
        step = x[:, -1, 0]                                                   # [B, F]
        slot = torch.round(step[:, self.tod].float() * self.per_day).long() % self.per_day
        if self.dow is not None:
            slot = slot + (torch.round(step[:, self.dow].float() * 7).long() % 7) * self.per_day
        return slot

    def around(self, last: Tensor, offsets: Tensor) -> Tensor:
        """Slots ``[B, len(offsets)]`` of the steps ``offsets`` after the last input step."""
        return (last[:, None] + offsets.to(last.device)) % self.num_slots


class SeasonalResidual(nn.Module):
    """The seasonal profile ``[slots, N]`` (scaled units; a buffer, saved with the model) that
    ``seasonal_residual`` subtracts from the target feature of the inputs and adds to the forecast."""

    def __init__(self, c: STHSepNetConfig, slots: CalendarSlots):
        super().__init__()
        self.slots, self.feature = slots, c.target_feature
        self.register_buffer("profile", torch.zeros(slots.num_slots, c.num_nodes))

    def remove(self, x: Tensor, last: Tensor) -> Tensor:
        """``x [B, T, N, F]`` with the profile at its steps taken off the target feature."""
        profile = self.profile[self.slots.around(last, self.slots.inputs_back)].to(x.dtype)   # [B, T, N]
        return torch.cat([x[..., :self.feature], (x[..., self.feature] - profile).unsqueeze(-1),
                          x[..., self.feature + 1:]], dim=-1)

    def restore(self, y: Tensor, last: Tensor) -> Tensor:
        """The forecast ``y [B, H, N]`` plus the profile at the horizon's steps (in float32 at least,
        also when ``y`` is bfloat16 under autocast)."""
        return y + self.profile[self.slots.around(last, self.slots.ahead)]


class TimeEmbedding(nn.Module):
    """Learned ``[slots_per_day, d]`` time-of-day and ``[7, d]`` day-of-week tables looked up at every
    input step: ``[B, T, N, 2 d]`` (``d`` without a weekday channel), the same for every node."""

    def __init__(self, c: STHSepNetConfig, slots: CalendarSlots):
        super().__init__()
        self.slots, self.num_nodes = slots, c.num_nodes
        self.time_of_day = nn.Embedding(slots.per_day, c.time_embedding_dim)
        self.day_of_week = nn.Embedding(7, c.time_embedding_dim) if slots.dow is not None else None
        for table in (self.time_of_day, self.day_of_week):
            if table is not None:
                nn.init.xavier_uniform_(table.weight)

    def forward(self, last: Tensor) -> Tensor:
        slots = self.slots.around(last, self.slots.inputs_back)             # [B, T]
        parts = [self.time_of_day(slots % self.slots.per_day)]
        if self.day_of_week is not None:
            parts.append(self.day_of_week(slots // self.slots.per_day))
        emb = torch.cat(parts, -1)                                          # [B, T, channels]
        return emb.unsqueeze(2).expand(-1, -1, self.num_nodes, -1)
