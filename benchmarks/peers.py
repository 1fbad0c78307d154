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


# BasicTS's traffic recipe for STID: Adam, masked MAE on the original scale, batch 32, at most 100
# epochs (BasicTS's default), early stopping after 10 epochs without a better validation MAE
# (BasicTS's EarlyStopping callback's default patience)
RECIPE = dict(lr=2e-3, weight_decay=1e-4, batch=32, max_epochs=100, patience=10)


def stid_model(num_nodes: int, input_len: int, output_len: int, steps_per_day: int = STEPS_PER_DAY):
    """STID in BasicTS's traffic configuration: 3 residual MLP layers, 32-wide series, node,
    time-of-day and day-of-week embeddings."""
    from basicts.models.STID import STID, STIDConfig

    return STID(STIDConfig(input_len=input_len, output_len=output_len, num_features=num_nodes, num_layers=3,
                           input_hidden_size=32, spatial_hidden_size=32, tid_hidden_size=32, diw_hidden_size=32,
                           if_time_in_day=True, if_day_in_week=True, num_time_in_day=steps_per_day,
                           num_day_in_week=7))


def stid(num_nodes: int, length: int):
    """``(model, forward)``: STID for ``length -> length`` steps over ``num_nodes`` series and
    ``forward(x [B, length, N, 1]) -> [B, length, N]`` with the calendar inputs it needs (the
    time of day and day of week of each step, as BasicTS feeds them: fractions in [0, 1))."""
    model = stid_model(num_nodes, length, length)

    def forward(x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(length, dtype=torch.float32)
        calendar = torch.stack([steps % STEPS_PER_DAY / STEPS_PER_DAY,
                                steps // STEPS_PER_DAY % 7 / 7], -1)            # [length, 2]
        return model(x[..., 0], calendar.expand(x.shape[0], -1, -1))

    return model, forward


class WindowForecaster(torch.nn.Module):
    """STID over sthfast's windows (:func:`sthfast.data.prepare` with the calendar channels
    ``time_of_day, day_of_week`` last): ``x [B, T, N, F]`` -> the scaled forecast ``[B, H, N]``, so
    that :func:`sthfast.evaluation.evaluate_windows` evaluates it as it does our model."""

    def __init__(self, stid_module: torch.nn.Module, target: int):
        super().__init__()
        self.stid, self.target = stid_module, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stid(x[..., self.target], x[:, :, 0, -2:])


def train_epoch(forecaster: WindowForecaster, optimizer, data, zeros_missing: bool,
                generator: torch.Generator) -> float:
    """One epoch of BasicTS's recipe over ``data``'s training windows (shuffled by ``generator``):
    the masked MAE of the forecast on the original scale. Returns the mean batch loss."""
    from sthfast.metrics import masked_loss, valid_mask

    mean, std = data.target_scale()
    forecaster.train()
    losses = []
    for batch in torch.randperm(len(data.train), generator=generator).split(RECIPE["batch"]):
        x, y, _ = data.train.batch(batch)
        loss = masked_loss(forecaster(x) * std + mean, y, valid_mask(y, zeros_missing), "mae")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)
