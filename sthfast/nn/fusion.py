"""Fusion of the temporal trend ``y_time[B, H, N]`` and the spatial forecast ``y_space[B, H, N]``.

All variants but ``dense_gate`` share their weights across nodes (O(N) parameters through the node
embedding only), so they scale to thousands of nodes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import STHSepNetConfig


def start_gate(last: nn.Linear, share: float) -> None:
    """Shift the bias of a gate's last layer by ``logit(share)``, so that the temporal stream's share
    ``sigmoid(.)`` starts around ``share`` (0.5 leaves PyTorch's initialisation as it is)."""
    with torch.no_grad():
        last.bias.add_(math.log(share / (1 - share)))


class NodeGate(nn.Module):
    """``gate = sigmoid(MLP([y_time_n; y_space_n; e_n]))`` per node over the horizon features,
    weights shared across nodes; ``Y = gate * y_time + (1 - gate) * y_space``."""

    def __init__(self, c: STHSepNetConfig):
        super().__init__()
        self.node_embedding = nn.Embedding(c.num_nodes, c.node_emb_dim)
        self.mlp = nn.Sequential(nn.Linear(2 * c.pred_len + c.node_emb_dim, c.gate_hidden), nn.ReLU(),
                                 nn.Linear(c.gate_hidden, c.pred_len))
        start_gate(self.mlp[-1], c.gate_init)

    def forward(self, y_time: Tensor, y_space: Tensor) -> Tensor:
        b, _, n = y_time.shape
        emb = self.node_embedding.weight.unsqueeze(0).expand(b, n, -1)           # [B, N, d]
        feats = torch.cat([y_time.transpose(1, 2), y_space.transpose(1, 2), emb], -1)  # [B, N, 2H+d]
        gate = torch.sigmoid(self.mlp(feats)).transpose(1, 2)                     # [B, H, N]
        return gate * y_time + (1 - gate) * y_space


class DenseGate(nn.Module):
    """The authors' gate: ``sigmoid(Linear(2N -> N))`` over the node axis at every horizon step,
    O(N^2) parameters. Kept for faithful comparisons only."""

    def __init__(self, c: STHSepNetConfig):
        super().__init__()
        self.linear = nn.Linear(2 * c.num_nodes, c.num_nodes)
        start_gate(self.linear, c.gate_init)

    def forward(self, y_time: Tensor, y_space: Tensor) -> Tensor:
        gate = torch.sigmoid(self.linear(torch.cat([y_time, y_space], dim=-1)))  # [B, H, N]
        return gate * y_time + (1 - gate) * y_space


class AttentionFusion(nn.Module):
    """Per node, attention over the two streams: the query is the node embedding, the keys are the
    two forecasts embedded; ``Y = sum_s softmax_s(q . k_s / sqrt(h)) y_s``."""

    def __init__(self, c: STHSepNetConfig):
        super().__init__()
        self.node_embedding = nn.Embedding(c.num_nodes, c.node_emb_dim)
        self.query = nn.Linear(c.node_emb_dim, c.gate_hidden)
        self.key = nn.Linear(c.pred_len, c.gate_hidden)
        self.scale = c.gate_hidden ** -0.5

    def forward(self, y_time: Tensor, y_space: Tensor) -> Tensor:
        streams = torch.stack([y_time, y_space], dim=-1)                          # [B, H, N, 2]
        keys = self.key(streams.permute(0, 2, 3, 1))                              # [B, N, 2, h]
        query = self.query(self.node_embedding.weight)                            # [N, h]
        weights = torch.softmax((keys @ query.unsqueeze(-1)).squeeze(-1) * self.scale, -1)  # [B, N, 2]
        return (streams * weights.unsqueeze(1)).sum(-1)                           # [B, H, N]


class LSTMFusion(nn.Module):
    """Per node, an LSTM reads ``(y_time[h], y_space[h])`` along the horizon and a linear layer
    emits ``Y[h]``; weights shared across nodes."""

    def __init__(self, c: STHSepNetConfig):
        super().__init__()
        self.lstm = nn.LSTM(2, c.gate_hidden, batch_first=True)
        self.out = nn.Linear(c.gate_hidden, 1)

    def forward(self, y_time: Tensor, y_space: Tensor) -> Tensor:
        b, h, n = y_time.shape
        seq = torch.stack([y_time, y_space], -1).permute(0, 2, 1, 3).reshape(b * n, h, 2)
        out = self.out(self.lstm(seq)[0]).view(b, n, h)                            # [B, N, H]
        return out.transpose(1, 2)


FUSION_MODULES = {"gate": NodeGate, "dense_gate": DenseGate, "attention": AttentionFusion,
                  "lstm": LSTMFusion}
