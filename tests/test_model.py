"""Building blocks of the Transformer."""
from __future__ import annotations

import pytest
import torch

from aiokd.model import dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_zeroes_a_fraction_p_and_rescales_the_rest(dtype):
    torch.manual_seed(0)
    x = torch.ones(200_000, dtype=dtype, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    assert y.dtype == dtype
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.005
    kept = y[y != 0].float()
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.7), rtol=1e-2, atol=0)
    assert abs(y.float().mean().item() - 1.0) < 0.01
    y.float().sum().backward()
    assert torch.equal(x.grad, y.detach())  # d y_i / d x_i = m_i / (1 - p) = y_i / x_i


def test_dropout_is_the_identity_when_not_training_or_p_is_zero():
    x = torch.randn(10, 7)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0, training=True) is x


def test_dropout_masks_are_reproducible_from_the_seed():
    x = torch.randn(1000)
    torch.manual_seed(3)
    a = dropout(x, 0.5, training=True)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.5, training=True))
