"""The authors' approach to the hypergraph, written by us from its description (DESIGN.md, "Authors'
code defects"), as the baseline the benchmarks compare with. It is not part of the package.

On every forward pass it:

1. computes the node features ``Z = tanh(a Lin(E))`` from the embeddings (torch) and moves them
   to CPU numpy;
2. finds each node's ``k`` nearest neighbours with scikit-learn's ``NearestNeighbors`` (the node
   itself first) on the CPU;
3. writes the binary incidence ``H [N, M]`` in a Python loop over the nodes, dropping hyperedges
   whose node set was already seen (a Python set of tuples), so that ``H`` has the hyperedges our
   reference builds with ``binary=True``;
4. runs a dense hypergraph convolution with attention (the form of PyG's ``HypergraphConv`` with
   ``use_attention=True``, one head) over every (sample, time step) slice of ``x [B, C, N, T]``,
   with its layer created inside the forward pass (fresh weights each call), as in their code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors
from torch import Tensor, nn


def knn_incidence(z: Tensor, k: int) -> Tensor:
    """Steps 1-3: ``z [N, d]`` -> binary ``H [N, M]`` (``M`` distinct hyperedges, in centre order)."""
    points = z.detach().cpu().numpy()
    _, neighbours = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points)
    n = points.shape[0]
    seen, columns = set(), []
    for centre in range(n):
        members = tuple(sorted(int(v) for v in neighbours[centre]))
        if members in seen:
            continue
        seen.add(members)
        column = np.zeros(n, dtype=np.float32)
        for v in members:
            column[v] = 1.0
        columns.append(column)
    return torch.from_numpy(np.stack(columns, axis=1)).to(z.device)


def hypergraph_attention_conv(x: Tensor, incidence: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Step 4: ``x [B, C, N, T]`` -> ``[B, C, N, T]``, dense over ``N x M`` for every slice.

    ``X' = D^-1 (H * alpha) B^-1 (H * alpha)^T (X Theta)``, with the hyperedge features the mean of
    their members and ``alpha[v, e]`` a softmax over the hyperedges of node ``v`` of
    ``LeakyReLU(a . [x_v Theta ; e_e])``.
    """
    b, c, n, t = x.shape
    theta = nn.Linear(c, c, bias=False).to(x.device, dtype)          # created per call, as theirs
    attention = nn.Linear(2 * c, 1, bias=False).to(x.device, dtype)
    h = incidence.to(dtype)
    slices = x.permute(0, 3, 2, 1).reshape(b * t, n, c).to(dtype)    # [S, N, C]
    xt = theta(slices)
    edge_deg = h.sum(0).clamp_min(1)                                 # [M]
    edges = (h.T @ xt) / edge_deg.unsqueeze(-1)                      # [S, M, C]
    a_node, a_edge = attention.weight[0, :c], attention.weight[0, c:]
    score = F.leaky_relu((xt @ a_node).unsqueeze(-1) + (edges @ a_edge).unsqueeze(-2), 0.2)  # [S, N, M]
    score = score.masked_fill(h == 0, float("-inf"))
    alpha = torch.softmax(score, dim=-1).nan_to_num(0.0) * h         # [S, N, M]
    node_deg = h.sum(1).clamp_min(1)                                 # [N]
    to_edges = (alpha.transpose(1, 2) @ xt) / edge_deg.unsqueeze(-1)  # [S, M, C]
    out = (alpha @ to_edges) / node_deg.unsqueeze(-1)                # [S, N, C]
    return out.reshape(b, t, n, c).permute(0, 3, 2, 1).to(x.dtype)


class AuthorsHypergraph(nn.Module):
    """The whole per-forward hypergraph stage of the authors' approach over ``x [B, C, N, T]``."""

    def __init__(self, num_nodes: int, dim: int = 40, k: int = 3, alpha: float = 3.0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.embedding = nn.Embedding(num_nodes, dim)
        self.linear = nn.Linear(dim, dim)
        self.k, self.alpha, self.dtype = k, alpha, dtype

    def forward(self, x: Tensor) -> Tensor:
        z = torch.tanh(self.alpha * self.linear(self.embedding.weight))
        return hypergraph_attention_conv(x, knn_incidence(z, self.k), self.dtype)
