"""Building blocks of the model and of its training step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aiokd.config import load_config
from aiokd.distill.objective import validation_nll
from aiokd.model.kernels import DROPOUT_BITS, attention_products, dropout, exp, logsumexp
from aiokd.model.transformer import Transformer
from aiokd.train.optimizer import scale_and_clip_gradients
from tests.conftest import TINY_MODEL


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


@pytest.mark.parametrize("p", [0.1, 0.25, 0.6])
def test_dropout_rate_is_p_rounded_to_the_mask_resolution_and_neighbours_are_independent(p):
    """Four mask bits of a position come from one 64-bit draw: neighbours must still be
    independent, and the kept scale must use the rounded rate (E[y] = x exactly)."""
    torch.manual_seed(1)
    x = torch.ones(400_000, dtype=torch.float64)
    y = dropout(x, p, training=True)
    levels = 1 << DROPOUT_BITS
    rate = round(p * levels) / levels
    assert abs(rate - p) <= 0.5 / levels
    assert set(y.unique().tolist()) == {0.0, 1 / (1 - rate)}
    dropped = y == 0
    assert abs(dropped.double().mean().item() - rate) < 0.004
    for shift in (1, 2, 3, 4):
        both = (dropped[shift:] & dropped[:-shift]).double().mean().item()
        assert abs(both - rate * rate) < 0.004, shift


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


@pytest.mark.parametrize("case", ["padding", "causal", "none"])
def test_attention_products_equal_scaled_dot_product_attention(case):
    """Values and gradients in float64, against PyTorch's kernel."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 6, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    mask = torch.ones(3, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., 4:] = False
    mask[2, ..., 1:] = False
    mask = mask if case == "padding" else None
    causal = case == "causal"
    found = attention_products(q, k, v, mask, causal, 0.0)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    torch.testing.assert_close(found, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(found)
    grads = torch.autograd.grad((found * weights).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_attention_products_in_bf16_keep_the_softmax_in_float32():
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 2, 9, 16) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    found = attention_products(*(t.bfloat16() for t in (q, k, v)), None, True, 0.0)
    assert found.dtype == torch.bfloat16
    torch.testing.assert_close(found.float(), expected, rtol=0.02, atol=0.02)


def test_exponentials_of_either_kernel_equal_torchs(exp_kernel):
    """Within ``(1 + |x|) u`` relatively (``u`` 1e-7 in float32, 1e-15 in float64), into a new
    tensor or in place, and ``logsumexp`` without overflow on logits of +-1e4."""
    torch.manual_seed(0)
    x = torch.cat([(20 * torch.randn(6, 500)).clamp(-80, 80), torch.full((1, 500), -1e4),
                   torch.full((1, 500), 1e4)])
    x[-1, 7] = 1e4 + 3.0
    for dtype, u in ((torch.float32, 1e-7), (torch.float64, 1e-15)):
        values = x.to(dtype)
        small, expected = values[:6], values[:6].exp()
        bound = (1 + small.abs()) * u * expected
        assert ((exp(small) - expected).abs() <= bound).all()
        in_place = small.clone()
        assert exp(in_place, out=in_place) is in_place
        assert ((in_place - expected).abs() <= bound).all()
        lse = torch.empty(len(values), dtype=dtype)
        assert logsumexp(values, out=lse) is lse
        torch.testing.assert_close(lse, torch.logsumexp(values, dim=-1), rtol=10 * u, atol=0)


@pytest.mark.parametrize("max_norm", [0.0, 0.05, 1e6])
def test_gradient_scaling_and_clipping_in_one_pass_equals_scale_then_clip(max_norm):
    cfg = load_config("tiny", overrides=[*TINY_MODEL, "model.vocab_size=50"])
    torch.manual_seed(0)
    models = [Transformer(cfg.model) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for model in models:
        torch.manual_seed(1)
        for p in model.parameters():
            p.grad = 3 * torch.randn_like(p)
    grads = [p.grad for p in models[0].parameters()]
    torch._foreach_mul_(grads, 0.01)
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(models[0].parameters(), max_norm)
    scale_and_clip_gradients(models[1], 0.01, max_norm)
    for expected, found in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(found.grad, expected.grad)


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_validation_nll_is_each_students_own_token_nll(reuse_prefix):
    """The shared pass, projected block by block, against each student run on its own."""
    torch.manual_seed(0)
    cfg = load_config("tiny", overrides=[*TINY_MODEL, "model.vocab_size=50"]).model
    model = Transformer(cfg).eval()
    src = torch.randint(4, cfg.vocab_size, (3, 7))
    prev_tgt = torch.randint(4, cfg.vocab_size, (3, 5))
    target = torch.randint(4, cfg.vocab_size, (3, 5))
    target[0, 3:] = cfg.pad_id
    students = [(2, 2), (3, 1), (3, 3), (1, 1)]
    found = validation_nll(model, src, prev_tgt, target, students, reuse_prefix)
    mask = target != cfg.pad_id
    expected = torch.stack([
        F.cross_entropy(model(src, prev_tgt, *student)[mask], target[mask], reduction="sum")
        for student in students])
    assert torch.allclose(found, expected, rtol=1e-5)


def test_compiled_layers_give_the_eager_logits_and_gradients():
    """``compile_layers`` changes how the layers run, not what they compute or are named."""
    cfg = load_config("tiny", overrides=[*TINY_MODEL, "model.vocab_size=50", "model.dropout=0.0",
                                         "model.attention_dropout=0.0",
                                         "model.activation_dropout=0.0"]).model
    torch.manual_seed(0)
    eager = Transformer(cfg).train()
    compiled = Transformer(cfg).train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_layers()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    students = [(3, 3), (2, 1), (1, 1)]
    for batch, src_len, tgt_len in [(3, 7, 5), (4, 6, 9)]:  # two shapes: no recompile needed
        src = torch.randint(4, cfg.vocab_size, (batch, src_len))
        prev_tgt = torch.randint(4, cfg.vocab_size, (batch, tgt_len))
        logits = {}
        for model in (eager, compiled):
            model.zero_grad()
            logits[model] = model.forward_students(src, prev_tgt, students)
            sum(out.square().mean() for out in logits[model].values()).backward()
        for student in students:
            torch.testing.assert_close(logits[compiled][student], logits[eager][student])
        for expected, found in zip(eager.parameters(), compiled.parameters(), strict=True):
            torch.testing.assert_close(found.grad, expected.grad, rtol=1e-4, atol=1e-6)
