"""The temporal stream: pooled series -> patches -> (reprogrammed) embeddings -> LLM with LoRA -> head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..config import STHSepNetConfig
from .backbone import Backbone, load_backbone
from .cache import TensorCache

NUM_LAGS = 5
NUM_STATS = 4 + NUM_LAGS  # min, max, median, trend, top lags


class Reprogramming(nn.Module):
    """Cross-attention of patch embeddings onto text prototypes (Time-LLM's reprogramming layer).

    ``target [B, L, d_model]`` attends to ``prototypes [S, d_llm]``; ``n_heads`` heads of width
    ``d_keys`` each; output ``[B, L, d_llm]``.
    """

    def __init__(self, d_model: int, n_heads: int, d_keys: int, d_llm: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.query = nn.Linear(d_model, d_keys * n_heads)
        self.key = nn.Linear(d_llm, d_keys * n_heads)
        self.value = nn.Linear(d_llm, d_keys * n_heads)
        self.out = nn.Linear(d_keys * n_heads, d_llm)

    def forward(self, target: Tensor, prototypes: Tensor) -> Tensor:
        b, length, _ = target.shape
        q = self.query(target).view(b, length, self.n_heads, -1).transpose(1, 2)  # [B, h, L, dk]
        k = self.key(prototypes).view(1, -1, self.n_heads, q.shape[-1]).transpose(1, 2)  # [1, h, S, dk]
        v = self.value(prototypes).view(1, -1, self.n_heads, q.shape[-1]).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1),
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).reshape(b, length, -1))  # [B, L, d_llm]


def series_statistics(series: Tensor) -> Tensor:
    """Per-series prompt statistics, vectorised: ``[B, T] -> [B, 9]``: min, max, median, trend (sum
    of first differences) and the top-5 autocorrelation lags divided by T (zeros if T < 5)."""
    t = series.shape[-1]
    spectrum = torch.fft.rfft(series, dim=-1)
    autocorr = torch.fft.irfft(spectrum * spectrum.conj(), n=t, dim=-1)  # [B, T]
    lags = autocorr.topk(min(NUM_LAGS, t), dim=-1).indices.to(series.dtype) / t
    lags = F.pad(lags, (0, NUM_LAGS - lags.shape[-1]))
    stats = [series.amin(-1), series.amax(-1), series.median(-1).values,
             series.diff(dim=-1).sum(-1) if t > 1 else series.new_zeros(series.shape[0])]
    return torch.cat([torch.stack(stats, -1), lags], dim=-1)


class TemporalStream(nn.Module):
    """``x[B, T, N, F]`` -> the trend of the target feature for every node ``[B, H, N]``: the
    backbone reads the target's node-averaged series (``temporal_groups = 1``, the paper: one
    global trend) or ``G`` regional series, each a learned soft-weighted average of the nodes
    (assignment ``softmax`` over groups per node), whose forecasts return to every node by the same
    weights. The other features inform the spatial stream only."""

    def __init__(self, config: STHSepNetConfig, backbone: Backbone | None = None):
        super().__init__()
        self.config = c = config
        bb = backbone or load_backbone(c.backbone, c.llm_layers, c.lora_rank, c.lora_alpha,
                                       c.lora_dropout, c.lora_target_modules, need_tokenizer=c.prompt)
        if c.d_ff > bb.d_llm:
            raise ValueError(f"d_ff={c.d_ff} exceeds the backbone width d_llm={bb.d_llm}")
        self.backbone, self.d_llm = bb.model, bb.d_llm
        self.num_layers = bb.num_layers
        if c.reprogramming:
            self.patch_embedding = nn.Linear(c.patch_len, c.d_model)
            self.prototype_map = nn.Linear(bb.word_embeddings.shape[0], c.num_prototypes)
            self.reprogramming = Reprogramming(c.d_model, c.n_heads, c.d_ff, bb.d_llm, c.dropout)
        else:
            self.patch_embedding = nn.Linear(c.patch_len, bb.d_llm)
        self.prototype_cache = TensorCache()
        if c.prompt:
            text = (f"Dataset description: {c.prompt_domain} Task description: forecast the next "
                    f"{c.pred_len} steps given the previous {c.seq_len} steps. Input statistics:")
            ids = bb.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            self.register_buffer("prompt_embeddings", bb.word_embeddings[ids].clone(), persistent=False)
            self.statistics_embedding = nn.Linear(NUM_STATS, bb.d_llm)
        self.embedding_dropout = nn.Dropout(c.dropout)
        if c.temporal_groups > 1:                   # random start: equal groups would stay equal
            self.group_logits = nn.Parameter(torch.randn(c.num_nodes, c.temporal_groups))
        self.head = nn.Sequential(nn.Flatten(-2), nn.Linear(c.d_ff * c.num_patches, c.pred_len),
                                  nn.Dropout(c.dropout))

    def prototypes(self) -> Tensor:
        """``[num_prototypes, d_llm]``: the learned linear map of the frozen word-embedding table.

        Computed once per forward when gradients are on (the map is trainable); cached while they
        are off, until the map's weights change (their version counter moves).
        """
        words = self.backbone.get_input_embeddings().weight            # [V, d_llm]
        m = self.prototype_map
        return self.prototype_cache.get((m.weight, m.bias, words), lambda: m(words.T).T,  # [S, d_llm]
                                        keep=not torch.is_grad_enabled())

    def forward(self, x: Tensor) -> Tensor:
        c = self.config
        target = x[..., c.target_feature:c.target_feature + 1]            # [B, T, N, 1]
        if c.temporal_groups == 1:
            return self._trend(target).unsqueeze(-1).expand(-1, -1, c.num_nodes)
        assign = torch.softmax(self.group_logits, dim=1).to(x.dtype)      # [N, G]
        share = assign / assign.sum(0)                                     # a weighted mean per group
        groups = torch.einsum("btn,ng->bgt", target[..., 0], share)         # [B, G, T]
        trend = self._trend(groups.reshape(-1, c.seq_len, 1, 1))           # [B G, H]
        return torch.einsum("bgh,ng->bhn", trend.view(x.shape[0], -1, c.pred_len), assign)

    def _trend(self, target: Tensor) -> Tensor:
        """The backbone's forecast of the node average of ``target [B, T, N, 1]``: ``[B, H]``."""
        c = self.config
        patches, mean, std = ops.pool_patch(target, c.patch_len, c.stride, normalize=c.revin,
                                            backend=c.backend)        # [B, 1, L, P], [B, 1]
        b, num_patches = patches.shape[0], patches.shape[2]
        tokens = self.patch_embedding(patches[:, 0])                  # [B, L, d]
        if c.reprogramming:
            tokens = self.reprogramming(tokens, self.prototypes())    # [B, L, d_llm]
        tokens = self.embedding_dropout(tokens)
        if c.prompt:
            # statistics of the normalised pooled series: the pooling is repeated here, outside
            # the pool_patch op, only when the (optional) prompt is on
            series = (target.mean(dim=(2, 3)) - mean) / std                     # [B, T]
            stats = self.statistics_embedding(series_statistics(series)).unsqueeze(1)  # [B, 1, d]
            prompt = self.prompt_embeddings.to(tokens.dtype).expand(b, -1, -1)
            tokens = torch.cat([prompt, stats, tokens], dim=1)
        hidden = self.backbone(inputs_embeds=tokens).last_hidden_state    # [B, *, d_llm]
        hidden = hidden[:, -num_patches:, : c.d_ff].transpose(1, 2)       # [B, d_ff, L]
        return self.head(hidden) * std + mean                              # [B, H]
