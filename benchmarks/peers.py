"""The peer model of the benchmarks: BasicTS's STID (Shao et al., CIKM 2022), the MLP that BasicTS
users pick for speed, built from the installed ``basicts`` package as BasicTS configures it for
traffic (3 residual MLP layers, 32-wide series / node / time-of-day / day-of-week embeddings).

BasicTS 1.1.0 pins ``transformers==4.40.1``, ``setuptools==59.5.0`` and ``tqdm==4.67.1``, which
would downgrade sthfast's stack, so it is installed without its pins: see :data:`INSTALL` (the
``bench`` extra holds the packages it imports)."""

from __future__ import annotations

import importlib.util

import torch

INSTALL = ('pip install -e ".[bench]" && pip install --no-deps basicts==1.1.0 easy-torch==1.3.3')
STEPS_PER_DAY = 288                      # 5-minute data, as METR-LA / PEMS


def have_basicts() -> bool:
    if importlib.util.find_spec("basicts") is None:
        return False
    try:
        import basicts.models.STID  # noqa: F401
    except ImportError:
        return False
    return True


def stid(num_nodes: int, length: int):
    """``(model, forward)``: STID for ``length -> length`` steps over ``num_nodes`` series and
    ``forward(x [B, length, N, 1]) -> [B, length, N]`` with the calendar inputs it needs (the
    time of day and day of week of each step, as BasicTS feeds them: fractions in [0, 1))."""
    from basicts.models.STID import STID, STIDConfig

    config = STIDConfig(input_len=length, output_len=length, num_features=num_nodes, num_layers=3,
                        input_hidden_size=32, spatial_hidden_size=32, tid_hidden_size=32,
                        diw_hidden_size=32, if_time_in_day=True, if_day_in_week=True,
                        num_time_in_day=STEPS_PER_DAY, num_day_in_week=7)
    model = STID(config)

    def forward(x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(length, dtype=torch.float32)
        calendar = torch.stack([steps % STEPS_PER_DAY / STEPS_PER_DAY,
                                steps // STEPS_PER_DAY % 7 / 7], -1)            # [length, 2]
        return model(x[..., 0], calendar.expand(x.shape[0], -1, -1))

    return model, forward
