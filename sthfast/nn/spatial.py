"""The spatial stream: MTGNN skeleton (gated dilated inception convolutions, skips, residuals,
layer norm) whose per-layer spatial mixing is a learned blend of a first-order graph MixProp and
a hypergraph MixProp over KNN hyperedges of learned node features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..config import STHSepNetConfig
from ..profile_stages import stage
from .cache import TensorCache, frozen

KERNEL_SET = (2, 3, 6, 7)
KERNEL_SIZE = max(KERNEL_SET)


class DilatedInception(nn.Module):
    """Four dilated temporal convolutions (kernels 2, 3, 6, 7) cropped to the shortest, concatenated:
    ``[B, c_in, N, T] -> [B, c_out, N, T - dilation * 6]``."""

    def __init__(self, c_in: int, c_out: int, dilation: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out // len(KERNEL_SET), (1, k), dilation=(1, dilation))
                                   for k in KERNEL_SET)

    def forward(self, x: Tensor) -> Tensor:
        outs = [conv(x) for conv in self.convs]
        length = outs[-1].shape[-1]
        return torch.cat([o[..., -length:] for o in outs], dim=1)

    def taps(self) -> tuple[Tensor, Tensor]:
        """The four kernels as one ``[c_out, c_in, 1, 7]`` kernel and its bias ``[c_out]``: each
        kernel left-padded with zero taps (cropping to the shortest output aligns every kernel with
        the end of the 7-tap window), so one convolution gives :meth:`forward`'s output."""
        weight = torch.cat([F.pad(conv.weight, (KERNEL_SIZE - conv.kernel_size[1], 0)) for conv in self.convs])
        return weight, torch.cat([conv.bias for conv in self.convs])


def gated_inception(x: Tensor, filters: DilatedInception, gates: DilatedInception, fused: bool) -> Tensor:
    """``tanh(filters(x)) * sigmoid(gates(x))``, ``[B, c_in, N, T] -> [B, c_out, N, T - 6 dilation]``.

    ``fused`` runs one convolution whose output channels are both modules' eight kernels (7 taps
    each, see :meth:`DilatedInception.taps`) instead of eight: the same sums, in one pass over x.
    """
    if not fused:
        return torch.tanh(filters(x)) * torch.sigmoid(gates(x))
    (w_f, b_f), (w_g, b_g) = filters.taps(), gates.taps()
    out = F.conv2d(x, torch.cat([w_f, w_g]), torch.cat([b_f, b_g]), dilation=filters.convs[0].dilation)
    f, g = out.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class AdaptiveGraph(nn.Module):
    """Learned first-order graph: ``M_i = tanh(a Lin_i(E_i))``, top-``k`` per row of
    ``ReLU(tanh(a (M1 M2^T - M2 M1^T)))``."""

    def __init__(self, num_nodes: int, dim: int, k: int, alpha: float, backend: str):
        super().__init__()
        self.emb1, self.emb2 = nn.Embedding(num_nodes, dim), nn.Embedding(num_nodes, dim)
        self.lin1, self.lin2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k, self.alpha, self.backend = min(k, num_nodes), alpha, backend
        self.cache = TensorCache()                 # built once in eval mode without gradients

    def forward(self):
        return self.cache.get(self.parameters(), self._build, keep=frozen(self))

    def _build(self):
        with stage("graph_construction"):
            m1 = torch.tanh(self.alpha * self.lin1(self.emb1.weight))   # [N, d]
            m2 = torch.tanh(self.alpha * self.lin2(self.emb2.weight))
            return ops.adaptive_graph(m1, m2, self.k, self.alpha, backend=self.backend)


class KNNHypergraph(nn.Module):
    """Hyperedges = k-nearest-neighbour sets of node features ``Z = tanh(a Lin(E))`` (``[N, d]``), or,
    for ``dynamic``, ``Z_b = tanh(a (Lin(E) + Lin_x(x_b)))`` from each input window (``[B, N, d]``).

    ``binary`` keeps the authors' 0/1 incidence: then nothing differentiable depends on the
    embeddings, so they are frozen rather than left as parameters that never train.

    A shared hypergraph searches its neighbours every ``hyper_rebuild_every`` training steps; the
    lists and the step count are buffers (``neighbors [N, k]``, ``steps``), so a resumed run
    continues the same schedule. In eval mode without gradients it is built once (a
    :class:`~sthfast.nn.cache.TensorCache`).
    """

    def __init__(self, config: STHSepNetConfig, window: int):
        super().__init__()
        c = config
        self.mode, self.k, self.alpha = c.hypergraph, c.hyper_k, c.tanh_alpha
        self.temperature, self.backend = c.hyper_temperature, c.backend
        self.approximate, self.rebuild_every = c.neighbor_search == "approximate", c.hyper_rebuild_every
        if self.rebuild_every > 1:
            self.register_buffer("neighbors", torch.zeros(c.num_nodes, c.hyper_k, dtype=torch.long))
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.cache = TensorCache()
        if c.hyper_order == "adaptive":      # one learned temperature per hyperedge, from the shared one
            self.log_temperature = nn.Parameter(torch.full((c.num_nodes,), math.log(c.hyper_temperature)))
        self.embedding = nn.Embedding(c.num_nodes, c.node_emb_dim)
        self.linear = nn.Linear(c.node_emb_dim, c.node_emb_dim)
        if self.mode == "dynamic":
            self.window_linear = nn.Linear(c.spatial_in_features * window, c.node_emb_dim)
        if self.mode == "binary":
            self.requires_grad_(False)

    def node_features(self, x: Tensor) -> Tensor:
        """``x[B, F, N, T]`` -> ``Z``: ``[N, d]``, or ``[B, N, d]`` when dynamic."""
        z = self.linear(self.embedding.weight)                        # [N, d]
        if self.mode == "dynamic":
            z = z + self.window_linear(x.permute(0, 2, 1, 3).flatten(2))  # [B, N, d]
        return torch.tanh(self.alpha * z)

    def forward(self, x: Tensor):
        if self.mode == "dynamic":
            return self._build(x)
        return self.cache.get(self.parameters(), lambda: self._build(x), keep=frozen(self))

    def _build(self, x: Tensor):
        with stage("node_features"):
            z = self.node_features(x)
        with stage("neighbour_search"):
            neighbors = self._neighbors(z)
        with stage("hyperedge_structure"):
            return ops.knn_hypergraph(z, self.k, binary=self.mode == "binary",
                                      temperature=self.temperatures(), neighbors=neighbors,
                                      backend=self.backend)

    def temperatures(self) -> float | Tensor:
        """The membership temperature: the config's, or the learned one per hyperedge ``[N]``."""
        return self.log_temperature.exp() if hasattr(self, "log_temperature") else self.temperature

    def _neighbors(self, z: Tensor) -> Tensor:
        """``[..., N, k]`` hyperedge members, self first: searched now, or reused from the last
        search, which runs every ``rebuild_every`` training forward passes (with gradient
        accumulation, count the passes, not the optimizer steps)."""
        if self.rebuild_every == 1 or not self.training:
            return self._search(z)
        if int(self.steps) % self.rebuild_every == 0:
            self.neighbors.copy_(self._search(z))
        self.steps += 1
        return self.neighbors

    def _search(self, z: Tensor) -> Tensor:
        return ops.topk_neighbors(z, z, self.k, self_first=True, approximate=self.approximate,
                                  backend=self.backend)


class SpatialStream(nn.Module):
    """``x[B, T, N, F]`` -> ``[B, H, N]``.

    ``static_adjacency`` (a sparse COO ``[N, N]``, required when ``graph='static'``) is kept as
    two buffers, its edges ``static_index [2, E]`` and weights ``static_weight [E]``.
    """

    def __init__(self, config: STHSepNetConfig, static_adjacency: Tensor | None = None):
        super().__init__()
        self.config = c = config
        # every backend but the reference runs the fast skeleton (gated_inception, project): the
        # same parameters and sums, fewer and larger products
        self.fused = c.backend != "reference"
        de, layers = c.dilation_exponential, c.layers
        self.receptive_field = self._field(layers)
        self.window = max(c.seq_len, self.receptive_field)
        self.graph = None
        if c.graph == "adaptive":
            self.graph = AdaptiveGraph(c.num_nodes, c.node_emb_dim, c.subgraph_size, c.tanh_alpha, c.backend)
        elif c.graph == "static":
            self.register_buffer("static_index", static_adjacency.indices().clone())
            self.register_buffer("static_weight", static_adjacency.values().clone())
        self.static_cache = TensorCache()                              # the backend's form
        self.hypergraph = KNNHypergraph(c, self.window) if c.hypergraph != "none" else None
        both = c.graph != "none" and c.hypergraph != "none"
        self.branch_logit = nn.Parameter(torch.zeros(layers)) if both else None

        mix_in = c.conv_channels * (c.gcn_depth + 1)
        self.start = nn.Conv2d(c.spatial_in_features, c.residual_channels, 1)
        self.skip_in = nn.Conv2d(c.spatial_in_features, c.skip_channels, (1, self.window))
        self.filters, self.gates, self.skips, self.norms = (nn.ModuleList() for _ in range(4))
        self.graph_out, self.graph_in, self.hyper_mix, self.residual = (nn.ModuleList() for _ in range(4))
        for j in range(1, layers + 1):
            length = self.window - self._field(j) + 1                 # time steps after layer j
            dilation = de ** (j - 1)
            self.filters.append(DilatedInception(c.residual_channels, c.conv_channels, dilation))
            self.gates.append(DilatedInception(c.residual_channels, c.conv_channels, dilation))
            self.skips.append(nn.Conv2d(c.conv_channels, c.skip_channels, (1, length)))
            if c.graph != "none":
                self.graph_out.append(nn.Conv2d(mix_in, c.residual_channels, 1))  # MixProp with A
                self.graph_in.append(nn.Conv2d(mix_in, c.residual_channels, 1))   # MixProp with A^T
            if c.hypergraph != "none":
                self.hyper_mix.append(nn.Conv2d(mix_in, c.residual_channels, 1))
            if c.graph == "none" and c.hypergraph == "none":
                self.residual.append(nn.Conv2d(c.conv_channels, c.residual_channels, 1))
            self.norms.append(nn.LayerNorm([c.residual_channels, c.num_nodes, length]))
        self.skip_out = nn.Conv2d(c.residual_channels, c.skip_channels, (1, self.window - self.receptive_field + 1))
        self.end1 = nn.Conv2d(c.skip_channels, c.end_channels, 1)
        self.end2 = nn.Conv2d(c.end_channels, c.pred_len, 1)

    def _field(self, layers: int) -> int:
        """Receptive field of the first ``layers`` temporal convolution layers."""
        de = self.config.dilation_exponential
        if de > 1:
            return int(1 + (KERNEL_SIZE - 1) * (de ** layers - 1) / (de - 1))
        return layers * (KERNEL_SIZE - 1) + 1

    def forward(self, x: Tensor) -> Tensor:
        c = self.config
        inp = x.permute(0, 3, 2, 1)                                    # [B, F, N, T]
        if inp.shape[-1] < self.window:
            inp = F.pad(inp, (self.window - inp.shape[-1], 0))
        if c.graph == "static":
            with stage("graph_construction"):
                graph = self._static_graph()
        else:
            graph = self.graph() if self.graph else None
        hypergraph = self.hypergraph(inp) if self.hypergraph is not None else None
        with stage("input_convolutions"):
            h = self.start(inp)                                            # [B, C, N, T]
            skip = self.skip_in(ops.dropout(inp, c.dropout, self.training, backend=c.backend))  # [B, S, N, 1]
        for i in range(c.layers):
            residual = h
            with stage("temporal_convolutions"):
                h = gated_inception(h, self.filters[i], self.gates[i], self.fused)
                h = ops.dropout(h, c.dropout, self.training, backend=c.backend)
                skip = skip + self.skips[i](h)
            h = self._mix(i, h, graph, hypergraph)
            with stage("residual_and_norm"):
                h = self.norms[i](h + residual[..., -h.shape[-1]:])
        with stage("output_convolutions"):
            h = F.relu(self.skip_out(h) + skip)
            return self.end2(F.relu(self.end1(h))).squeeze(-1)             # [B, H, N]

    def _static_graph(self):
        """The fixed adjacency in the backend's form, built once per device, dtype and content
        version (building it costs a sort of the edges and a host sync)."""
        def build():
            n = self.config.num_nodes
            a = torch.sparse_coo_tensor(self.static_index, self.static_weight, (n, n), check_invariants=True)
            return ops.static_graph(a.coalesce(), backend=self.config.backend)

        return self.static_cache.get((self.static_weight, self.static_index), build)

    def _mix(self, i: int, h: Tensor, graph, hypergraph) -> Tensor:
        """Layer ``i``'s spatial mixing, ``g * graph + (1 - g) * hypergraph`` with learned ``g``:
        ``graph = graph_out(MixProp_A(h)) + graph_in(MixProp_A^T(h))``, ``hypergraph =
        hyper_mix(MixProp_H(h))`` (1x1 convolutions over the concatenated steps). The fast skeleton
        runs each MixProp with its convolution as one projected MixProp (``g`` folded into the
        weights), which ``cpp`` fuses so that the concatenated steps never reach memory."""
        c = self.config
        if graph is None and hypergraph is None:
            with stage("residual_and_norm"):
                return self.residual[i](h)
        g = torch.sigmoid(self.branch_logit[i]) if graph is not None and hypergraph is not None else None
        if self.fused:
            return self._projected_mix(i, h, graph, hypergraph, g)
        terms = []                                      # (1x1 convolution, propagated [B, C (D + 1), N, T])
        if graph is not None:
            with stage("graph_mixprop"):
                terms += [(conv, ops.graph_mixprop(h, graph, c.gcn_depth, c.prop_alpha, transpose=transpose,
                                                   backend=c.backend))
                          for conv, transpose in ((self.graph_out[i], False), (self.graph_in[i], True))]
        if hypergraph is not None:
            with stage("hypergraph_mixprop"):
                terms.append((self.hyper_mix[i], ops.hypergraph_mixprop(h, hypergraph, c.gcn_depth,
                                                                        c.prop_alpha, backend=c.backend)))
        with stage("mixprop_projection"):
            branches = [terms[0][0](terms[0][1]) + terms[1][0](terms[1][1])] if graph is not None else []
            branches += [terms[-1][0](terms[-1][1])] if hypergraph is not None else []
            return branches[0] if g is None else g * branches[0] + (1 - g) * branches[1]

    def _projected_mix(self, i: int, h: Tensor, graph, hypergraph, g: Tensor | None) -> Tensor:
        """:meth:`_mix` with projected MixProps: ``[B, C, N, T] -> [B, C_res, N, T]``."""
        c = self.config
        depth, alpha, backend = c.gcn_depth, c.prop_alpha, c.backend
        out = None
        if graph is not None:
            with stage("graph_mixprop"):
                for conv, transpose in ((self.graph_out[i], False), (self.graph_in[i], True)):
                    weight, bias = _scaled(conv, g)
                    y = ops.projected_graph_mixprop(h, graph, depth, alpha, weight, bias, transpose, backend=backend)
                    out = y if out is None else out + y
        if hypergraph is not None:
            with stage("hypergraph_mixprop"):
                weight, bias = _scaled(self.hyper_mix[i], None if g is None else 1 - g)
                y = ops.projected_hypergraph_mixprop(h, hypergraph, depth, alpha, weight, bias, backend=backend)
                out = y if out is None else out + y
        return out


def _scaled(conv: nn.Conv2d, scale: Tensor | None) -> tuple[Tensor, Tensor]:
    """A 1x1 convolution's weight as ``[C_out, C_in]`` and its bias, times ``scale`` (when given)."""
    weight, bias = conv.weight.view(conv.out_channels, -1), conv.bias
    return (weight, bias) if scale is None else (scale * weight, scale * bias)
