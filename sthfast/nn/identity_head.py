"""The identity head (``identity_head_dim``): what STID (Shao et al., CIKM 2022) showed an MLP can
forecast from a node's identity, its whole input window and the time of day and day of week,
added to the spatial stream's forecast. The graph and hypergraph propagations then model what
these do not: how the neighbours move together."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import STHSepNetConfig
from .calendar import CalendarSlots


class _ResidualLayer(nn.Module):
    """``h + W2 dropout(relu(W1 h))``, as STID's encoder layers."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.inner(h)


class IdentityHead(nn.Module):
    """``forward(target [B, T, N], last [B]) -> [B, H, N]``: per node, the window ``target[:, :, n]``
    embedded by a linear layer, the node's learned embedding and the time-of-day and day-of-week
    embeddings of the last input step's slot (``last``, :meth:`CalendarSlots.last`), concatenated,
    then three residual MLP layers and a linear read-out to the horizon; weights shared across
    nodes but for the ``[N, d]`` node embedding."""

    LAYERS = 3

    def __init__(self, c: STHSepNetConfig, slots: CalendarSlots):
        super().__init__()
        d = c.identity_head_dim
        self.slots = slots
        self.window = nn.Linear(c.seq_len, d)
        self.node = nn.Parameter(torch.empty(c.num_nodes, d))
        self.time_of_day = nn.Embedding(slots.per_day, d)
        self.day_of_week = nn.Embedding(7, d) if slots.dow is not None else None
        for table in (self.node, self.time_of_day.weight, *(() if self.day_of_week is None
                                                             else (self.day_of_week.weight,))):
            nn.init.xavier_uniform_(table)
        width = d * (4 if self.day_of_week is not None else 3)
        self.layers = nn.Sequential(*(_ResidualLayer(width, c.dropout) for _ in range(self.LAYERS)))
        self.out = nn.Linear(width, c.pred_len)

    def forward(self, target: Tensor, last: Tensor) -> Tensor:
        b, _, n = target.shape
        parts = [self.window(target.transpose(1, 2)), self.node.unsqueeze(0).expand(b, -1, -1)]   # [B, N, d] each
        calendar = [self.time_of_day(last % self.slots.per_day)]
        if self.day_of_week is not None:
            calendar.append(self.day_of_week(last // self.slots.per_day))
        parts += [e.unsqueeze(1).expand(-1, n, -1) for e in calendar]
        h = torch.cat([p.to(parts[0].dtype) for p in parts], -1)                                 # [B, N, width]
        return self.out(self.layers(h)).transpose(1, 2)                                           # [B, H, N]
