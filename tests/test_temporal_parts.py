"""Pieces of the temporal stream that have a closed form: prompt statistics, reprogramming, regional
groups."""

import pytest
import torch

from sthfast.nn.temporal import NUM_STATS, Reprogramming, series_statistics


def test_series_statistics_by_hand():
    t = torch.arange(12, dtype=torch.float64)
    series = torch.stack([torch.sin(2 * torch.pi * t / 4), t])   # period 4, and a ramp
    stats = series_statistics(series)
    assert stats.shape == (2, NUM_STATS)
    torch.testing.assert_close(stats[1, :4], torch.tensor([0.0, 11.0, 5.0, 11.0], dtype=torch.float64))
    lags = (stats[0, 4:] * 12).round().long().tolist()
    assert lags[0] == 0 and set(lags[1:3]) == {4, 8}              # autocorrelation peaks at the period
    short = series_statistics(torch.tensor([[1.0, 3.0]]))
    assert short.shape == (1, NUM_STATS) and torch.equal(short[0, 6:], torch.zeros(3))


def test_reprogramming_attends_to_prototypes():
    torch.manual_seed(0)
    layer = Reprogramming(d_model=4, n_heads=2, d_keys=3, d_llm=6, dropout=0.0)
    target, protos = torch.randn(5, 7, 4), torch.randn(10, 6)
    out = layer(target, protos)
    assert out.shape == (5, 7, 6)
    q = layer.query(target).view(5, 7, 2, 3).transpose(1, 2)
    k = layer.key(protos).view(10, 2, 3).transpose(0, 1)
    v = layer.value(protos).view(10, 2, 3).transpose(0, 1)
    att = torch.softmax(q @ k.transpose(-1, -2).unsqueeze(0) / 3 ** 0.5, -1) @ v.unsqueeze(0)
    torch.testing.assert_close(out, layer.out(att.transpose(1, 2).reshape(5, 7, 6)))


def test_temporal_groups_one_dominant_group_is_the_global_trend_and_groups_learn(small_config):
    from sthfast import STHSepNet

    torch.manual_seed(0)
    one = STHSepNet(small_config()).eval()
    grouped = STHSepNet(small_config(temporal_groups=3)).eval()
    missing, unexpected = grouped.load_state_dict(one.state_dict(), strict=False)
    assert missing == ["temporal.group_logits"] and not unexpected
    x = torch.randn(2, 12, 11, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        grouped.temporal.group_logits.copy_(torch.tensor([60.0, 0.0, 0.0]).expand(11, 3))
        torch.testing.assert_close(grouped.temporal(x), one.temporal(x), rtol=1e-5, atol=1e-6)
        grouped.temporal.group_logits.normal_()
        regional = grouped.temporal(x)                                       # [B, H, N]
    assert regional.shape == (2, 6, 11) and not torch.allclose(regional[..., 0], regional[..., 1])
    grouped.train()
    grouped(x).pow(2).mean().backward()
    assert grouped.temporal.group_logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temporal_groups=0 must be >= 1"):
        small_config(temporal_groups=0)
