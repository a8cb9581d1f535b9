"""The fused Word-KD / Selective-KD loss against its autograd transcription, and both against the
definitions."""

import pytest
import torch
import torch.nn.functional as F

from aiokd.config import load_config
from aiokd.distill.objective import Objective
from aiokd.distill.word_kd_loss import word_kd_loss, word_kd_loss_reference
from aiokd.model.transformer import Transformer
from tests.test_aiokd_loss import assert_overwriting_changes_nothing, direct_ce


def direct_kl_per_token(teacher_logits, logits):
    """KL(P_T || P_S) of every token, straight from the definition, ``(N,)``."""
    q = F.softmax(teacher_logits, -1)
    return (q * (F.log_softmax(teacher_logits, -1) - F.log_softmax(logits, -1))).sum(-1)


def gradient(loss, logits, teacher_logits, gold, ratio):
    leaf = logits.clone().requires_grad_()
    teacher = teacher_logits.clone().requires_grad_()
    terms = loss(leaf * 1.0, teacher * 1.0, gold, 0.1, 5.5, ratio, overwrite=True)
    (1.7 * terms.loss).backward()
    assert teacher.grad is None  # the teacher is frozen
    return terms, leaf.grad


@pytest.mark.parametrize("ratio", [None, 0.5, 0.01, 1.0])
def test_fused_loss_equals_the_reference_in_value_terms_and_gradient(ratio, exp_kernel):
    torch.manual_seed(1)
    logits, teacher_logits = (3 * torch.randn(9, 13, dtype=torch.float64) for _ in range(2))
    gold = torch.randint(0, 13, (9,))
    expected, expected_grad = gradient(word_kd_loss_reference, logits, teacher_logits, gold,
                                       ratio)
    found, found_grad = gradient(word_kd_loss, logits, teacher_logits, gold, ratio)
    for name in ("loss", "ce", "nll", "kd"):
        assert torch.allclose(getattr(found, name), getattr(expected, name), rtol=1e-12), name
    assert torch.allclose(found_grad, expected_grad, atol=1e-12)


@pytest.mark.parametrize("loss", [word_kd_loss, word_kd_loss_reference])
def test_terms_are_their_definitions(loss):
    torch.manual_seed(2)
    logits, teacher_logits = (torch.randn(6, 10, dtype=torch.float64) for _ in range(2))
    gold = torch.randint(0, 10, (6,))
    kl = direct_kl_per_token(teacher_logits, logits)
    nll = F.cross_entropy(logits, gold, reduction="none")
    word = loss(logits, teacher_logits, gold, 0.1, 2.0)
    assert torch.allclose(word.ce, direct_ce(logits, gold, 0.1))
    assert torch.allclose(word.nll, nll.sum())
    assert torch.allclose(word.kd, kl.sum())
    assert torch.allclose(word.loss, word.ce + 2.0 * kl.sum())
    hardest = nll.topk(3).indices  # Selective-KD, half the tokens: the student's hardest three
    assert torch.allclose(loss(logits, teacher_logits, gold, 0.1, 2.0, 0.5).kd, kl[hardest].sum())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_many_row_blocks_and_overwriting_give_the_same_gradient(dtype, exp_kernel):
    """A vocabulary of 2^15 makes blocks of a few rows (the last one short); with ``overwrite``
    the gradient reaches the projection through its logits' own buffer."""
    torch.manual_seed(4)
    hidden, teacher_hidden = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 3)
    weight = torch.randn(2**15, 3, dtype=torch.float64).requires_grad_()
    teacher_logits = F.linear(teacher_hidden, torch.randn(2**15, 3)).to(dtype)
    gold = torch.tensor([7, 2**15 - 1, 0, 99, 7, 5, 6, 8, 9])
    found = []
    for overwrite in (False, True):
        logits = F.linear(hidden.to(dtype), weight.to(dtype))
        terms = word_kd_loss(logits, teacher_logits, gold, 0.1, 5.5, overwrite=overwrite)
        terms.loss.backward()
        found.append((terms.loss.detach(), weight.grad))
        weight.grad = None
    rounded = weight.detach().to(dtype).double().requires_grad_()
    expected = word_kd_loss_reference(F.linear(hidden.to(dtype).double(), rounded),
                                      teacher_logits.double(), gold, 0.1, 5.5).loss
    expected.backward()
    assert_overwriting_changes_nothing(found, expected, rounded.grad, dtype)


@pytest.mark.parametrize("method", ["word-kd", "selective-kd"])
def test_training_with_the_reference_loss_gives_the_same_loss_and_gradients(method):
    """``distill.loss=reference`` changes how a KD baseline computes its loss, not the loss."""
    found = []
    for loss in ("fused", "reference"):
        cfg = load_config("tiny", overrides=[
            "model.vocab_size=40", "model.d_model=16", "model.ffn_dim=32", "model.heads=2",
            "model.dropout=0.0", "model.enc_layers=2", "model.dec_layers=2",
            f"distill.method={method}", "distill.teacher=unused", "distill.student=2-2",
            f"distill.loss={loss}"])
        torch.manual_seed(0)
        src, target = torch.randint(4, 40, (3, 6)), torch.randint(4, 40, (3, 5))
        target[1, 3:] = cfg.model.pad_id
        prev = torch.cat([torch.full((3, 1), cfg.model.bos_id), target[:, :-1]], dim=1)
        model = Transformer(cfg.model).double()
        teacher = Transformer(load_config("tiny", overrides=[
            "model.vocab_size=40", "model.d_model=16", "model.ffn_dim=32", "model.heads=2",
            "model.dropout=0.0"]).model).double()
        value, stats = Objective(model, cfg, teacher)(src, prev, target, [], 1)
        value.backward()
        found.append((value.detach(), stats, [p.grad for p in model.parameters()]))
        assert all(p.grad is None for p in teacher.parameters())
    (fused, fused_stats, fused_grads), (reference, reference_stats, reference_grads) = found
    assert torch.allclose(fused, reference, rtol=1e-12)
    assert fused_stats.keys() == reference_stats.keys() == {"nll", "ce", "kd"}
    for key, value in fused_stats.items():
        assert torch.allclose(value, reference_stats[key], rtol=1e-12), key
    for a, b in zip(fused_grads, reference_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
