"""``dropout``: the reference is torch's; the ``cpp`` path hashes a seed drawn from torch's
generator with each entry's index. Its masks are other draws of the same distribution, so the
tests check the distribution (the share kept, no pattern by position), the scaling, the backward
(the same mask), determinism under ``torch.manual_seed``, every dtype, eval mode and the edges."""

from __future__ import annotations

import pytest
import torch
from backend_cases import needs_cpp
from torch.autograd import gradcheck

from sthfast import ops


def _cpp(x, p=0.3, training=True):
    return ops.dropout(x, p, training, backend="cpp")


@needs_cpp
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keeps_one_minus_p_of_the_entries_scaled_and_no_position_pattern(p):
    torch.manual_seed(0)
    x = torch.rand(64, 32, 50, 13) + 1.0                              # no zero in x: a zero is a drop
    y = _cpp(x, p)
    kept = y != 0
    n = kept.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    flat = kept.flatten().float()
    for stride in (1, 2, 13, 650, 1 << 16):                        # neighbours are not alike
        both = (flat[:-stride] * flat[stride:]).mean().item()
        assert abs(both - (1 - p) ** 2) < 0.01, stride
    for dim in range(4):                                            # every position keeps its share
        share = kept.float().mean([d for d in range(4) if d != dim])
        assert (share - (1 - p)).abs().max().item() < 0.05, dim


@needs_cpp
def test_the_backward_applies_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(4, 5, 6, 7, requires_grad=True)
    w = torch.randn(4, 5, 6, 7)
    y = _cpp(x, 0.4)
    grad, = torch.autograd.grad((y * w).sum(), x)
    torch.testing.assert_close(grad, w * (y != 0) / 0.6)


@needs_cpp
def test_the_seed_comes_from_torch_and_fixes_the_mask_in_every_dtype():
    x = torch.rand(3, 4, 5, 6) + 1
    masks = []
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        torch.manual_seed(7)
        masks.append(_cpp(x.to(dtype)) != 0)
    assert all(torch.equal(m, masks[0]) for m in masks)
    torch.manual_seed(8)
    assert not torch.equal(_cpp(x) != 0, masks[0])
    assert not torch.equal(_cpp(x) != 0, _cpp(x) != 0)             # each call draws its own seed


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_eval_mode_and_the_edges(backend):
    x = torch.randn(2, 3, 4, 5)
    assert ops.dropout(x, 0.3, False, backend=backend) is x
    assert torch.equal(ops.dropout(x, 0.0, True, backend=backend), x)
    assert torch.equal(ops.dropout(x, 1.0, True, backend=backend), torch.zeros_like(x))
    assert ops.dropout(torch.empty(0, 3), 0.5, True, backend=backend).shape == (0, 3)
    with pytest.raises(ValueError, match=r"dropout probability p=1.5 must be in \[0, 1\]"):
        ops.dropout(x, 1.5, True, backend=backend)


@needs_cpp
def test_gradcheck_and_opcheck():
    torch.manual_seed(2)
    seed = torch.randint(-(2 ** 63), 2 ** 63 - 1, (), dtype=torch.int64)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: torch.ops.sthfast.hashed_dropout(t, 0.25, seed), (x,))
    torch.library.opcheck(torch.ops.sthfast.hashed_dropout, (x, 0.25, seed))
    permuted = x.detach().permute(2, 0, 1).requires_grad_()          # not contiguous: the fake's strides too
    torch.library.opcheck(torch.ops.sthfast.hashed_dropout, (permuted, 0.25, seed))


@needs_cpp
def test_the_scale_is_the_inverse_of_the_share_kept():
    """The hash drops floor(p 2^32) of 2^32 values: the scale is the inverse of the share it keeps,
    so the mean is unbiased even close to p = 1."""
    torch.manual_seed(3)
    p = 1 - 2 ** -20
    y = _cpp(torch.ones(1 << 22), p)
    kept_scale = y[y != 0].unique()
    assert kept_scale.numel() == 1 and kept_scale.item() == pytest.approx(2 ** 20, rel=1e-6)
