"""Forward + backward of the whole model at the paper's size (N = 207, T = 48 -> 48, B = 32), on
the active backend, per stream. Reproduce with:

    python -m pytest benchmarks/test_model_step.py --benchmark-json=benchmarks/model_step.json
"""

import pytest
import torch
from conftest import peak_rss_mib

from sthfast import STHSepNet, STHSepNetConfig


@pytest.mark.parametrize("pass_", ["forward", "forward_backward"])
@pytest.mark.parametrize("fusion", ["gate", "spatial_only", "temporal_only"])
def test_model_step(benchmark, fusion, pass_):
    torch.manual_seed(0)
    config = STHSepNetConfig(num_nodes=207, seq_len=48, pred_len=48, fusion=fusion)
    model = STHSepNet(config)
    x = torch.randn(32, 48, 207)

    def forward():
        with torch.no_grad():
            model(x)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()

    benchmark.pedantic(forward if pass_ == "forward" else forward_backward, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(process_peak_rss_mib=round(peak_rss_mib(), 1),
                                torch_threads=torch.get_num_threads(), backend=config.backend,
                                **model.parameter_counts())
