"""The fused AIO-KD loss against the objective written out term by term with autograd."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from aiokd.distill.aiokd_loss import LossSettings, aiokd_loss


def direct_kl(p_logits, q_logits):
    """KL(P || Q) summed over tokens, straight from the definition."""
    p = F.softmax(p_logits, -1)
    return (p * (F.log_softmax(p_logits, -1) - F.log_softmax(q_logits, -1))).sum()


def direct_ce(logits, gold, epsilon):
    """Label-smoothed CE: the reference gets 1 - eps, every other token eps / (V - 1)."""
    n, v = logits.shape
    q = torch.full((n, v), epsilon / (v - 1), dtype=logits.dtype)
    q[torch.arange(n), gold] = 1 - epsilon
    return -(q * F.log_softmax(logits, -1)).sum()


def direct_objective(logits, gold, s: LossSettings):
    """``L`` of the paper with detaching written as ``.detach()`` of the target side, the gates
    and the better student of each pair decided in Python."""
    teacher, students = logits[0], logits[1:]
    ce = [direct_ce(x, gold, s.epsilon) for x in logits]
    value = [c.item() for c in ce]
    loss = sum(ce)
    kd = 0
    for k, student in enumerate(students, start=1):
        open_ = not s.detach or value[k] <= s.eta * value[0]
        kd = kd + direct_kl(teacher if open_ else teacher.detach(), student)
    loss = loss + s.alpha * kd / len(students)
    if s.beta == 0 or s.ml_mode == "none" or len(students) < 2:
        return loss
    pairs = list(itertools.combinations(range(1, len(logits)), 2))
    ml = 0
    for i, j in pairs:
        if s.ml_mode == "full":
            ml = ml + direct_kl(logits[i], logits[j]) + direct_kl(logits[j], logits[i])
            continue
        better, worse = (i, j) if value[i] <= value[j] else (j, i)
        target = logits[better]
        if s.ml_mode == "detaching" and value[worse] >= s.eta * value[better]:
            target = target.detach()
        ml = ml + direct_kl(target, logits[worse])
    return loss + s.beta * ml / len(pairs)


def gradients(fn, logits):
    leaves = [x.clone().requires_grad_() for x in logits]
    value = fn(leaves)
    (1.7 * value).backward()
    return value.detach(), [x.grad for x in leaves]


SETTINGS = [
    LossSettings(0.1, 5.5, beta, eta, detach, mode)
    for beta, mode in [(0.0, "no_weight"), (0.5, "no_weight"), (0.5, "full"),
                       (0.5, "detaching"), (0.5, "none")]
    for eta in (1e-6, 1.02, 1e6)          # every gate shut, some shut, every gate open
    for detach in (True, False)
]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("settings", SETTINGS, ids=str)
def test_value_and_gradients_match_the_objective_written_out(k, settings):
    torch.manual_seed(k)
    logits = [3 * torch.randn(9, 13, dtype=torch.float64) for _ in range(k + 1)]
    gold = torch.randint(0, 13, (9,))
    expected, expected_grads = gradients(lambda x: direct_objective(x, gold, settings), logits)
    found, found_grads = gradients(
        lambda x: aiokd_loss(x[0] * 1.0, [y * 1.0 for y in x[1:]], gold, settings).loss, logits)
    assert torch.allclose(found, expected, rtol=1e-12)
    for a, b in zip(found_grads, expected_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_terms_and_gates():
    torch.manual_seed(0)
    logits = [torch.randn(6, 10, dtype=torch.float64) for _ in range(3)]
    gold = torch.randint(0, 10, (6,))
    s = LossSettings(0.1, 2.0, 0.5, 1.1, True, "no_weight")
    terms = aiokd_loss(logits[0], logits[1:], gold, s)
    ce = torch.stack([direct_ce(x, gold, 0.1) for x in logits])
    assert torch.allclose(terms.ce, ce)
    assert torch.allclose(terms.teacher_nll, F.cross_entropy(logits[0], gold, reduction="sum"))
    assert torch.allclose(terms.kd, (direct_kl(logits[0], logits[1])
                                     + direct_kl(logits[0], logits[2])) / 2)
    better, worse = (1, 2) if ce[1] <= ce[2] else (2, 1)
    assert torch.allclose(terms.ml, direct_kl(logits[better], logits[worse]))
    assert terms.gates.tolist() == [float(c <= 1.1 * ce[0]) for c in ce[1:]]
    assert torch.allclose(terms.loss, ce.sum() + 2.0 * terms.kd + 0.5 * terms.ml)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_many_row_blocks_and_overwriting_give_the_same_gradient(dtype):
    """A vocabulary of 2^15 and three models make blocks of 2 rows (the last one short); with
    ``overwrite`` each gradient reaches the projection through its logits' own buffer."""
    torch.manual_seed(4)
    hidden = [torch.randn(5, 3, dtype=torch.float64) for _ in range(3)]
    weight = torch.randn(2**15, 3, dtype=torch.float64).requires_grad_()
    gold = torch.tensor([7, 2**15 - 1, 0, 99, 7])
    s = LossSettings(0.1, 5.5, 0.5, 1.1, True, "no_weight")
    found = []
    for overwrite in (False, True):
        logits = [F.linear(h.to(dtype), weight.to(dtype)) for h in hidden]
        terms = aiokd_loss(logits[0], logits[1:], gold, s, overwrite=overwrite)
        terms.loss.backward()
        found.append((terms.loss.detach(), weight.grad))
        weight.grad = None
    # the reference sees the same (rounded) inputs, in float64
    rounded = weight.detach().to(dtype).double().requires_grad_()
    expected = direct_objective([F.linear(h.to(dtype).double(), rounded) for h in hidden], gold, s)
    expected.backward()
    assert torch.equal(found[0][0], found[1][0]) and torch.equal(found[0][1], found[1][1])
    tolerance = 1e-9 if dtype == torch.float64 else 3e-2  # bfloat16 logits: 8-bit mantissas
    assert torch.allclose(found[0][0].double(), expected, rtol=tolerance)
    error = (found[0][1].double() - rounded.grad).abs().max()
    assert error <= tolerance * rounded.grad.abs().max()


def test_bfloat16_logits_get_float32_terms_and_bfloat16_gradients():
    torch.manual_seed(5)
    logits = [torch.randn(7, 11).to(torch.bfloat16).requires_grad_() for _ in range(3)]
    gold = torch.randint(0, 11, (7,))
    s = LossSettings(0.1, 5.5, 0.5, 1.1, True, "no_weight")
    terms = aiokd_loss(logits[0], logits[1:], gold, s)
    terms.loss.backward()
    reference = [x.detach().float().requires_grad_() for x in logits]
    direct_objective(reference, gold, s).backward()
    assert terms.loss.dtype == torch.float32
    for x, r in zip(logits, reference, strict=True):
        assert x.grad.dtype == torch.bfloat16
        assert torch.allclose(x.grad.float(), r.grad, atol=2e-2)


def test_a_student_drawn_twice_gets_both_gradients_even_when_overwriting():
    torch.manual_seed(6)
    teacher, student = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 9,
                                                                          dtype=torch.float64)
    gold = torch.randint(0, 9, (4,))
    s = LossSettings(0.1, 5.5, 0.5, 1.1, True, "no_weight")
    grads = []
    for twice in (True, False):
        leaf = student.clone().requires_grad_()
        shared = leaf * 1.0
        students = [shared, shared] if twice else [leaf * 1.0, leaf * 1.0]
        aiokd_loss(teacher, students, gold, s, overwrite=True).loss.backward()
        grads.append(leaf.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-12)
