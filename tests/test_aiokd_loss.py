"""The fused AIO-KD loss against its autograd transcription, and both against the definitions."""

import pytest
import torch
import torch.nn.functional as F

from aiokd.config import load_config
from aiokd.distill.aiokd_loss import (
    LossSettings,
    aiokd_loss,
    aiokd_loss_reference,
    detaching_gates,
    pair_weights,
)
from aiokd.distill.objective import Objective
from aiokd.model.transformer import Transformer


def direct_kl(p_logits, q_logits):
    """KL(P || Q) summed over tokens, straight from the definition."""
    p = F.softmax(p_logits, -1)
    return (p * (F.log_softmax(p_logits, -1) - F.log_softmax(q_logits, -1))).sum()


def direct_ce(logits, gold, epsilon):
    """fairseq's label-smoothed CE (the reference token gets 1 - eps, every other eps / (V - 1))
    is PyTorch's (every token gets eps' / V on top of (1 - eps') on the reference) with
    eps' = eps V / (V - 1)."""
    v = logits.shape[-1]
    return F.cross_entropy(logits, gold, label_smoothing=epsilon * v / (v - 1), reduction="sum")


def gradients(fn, logits):
    leaves = [x.clone().requires_grad_() for x in logits]
    terms = fn(leaves[0] * 1.0, [x * 1.0 for x in leaves[1:]])
    (1.7 * terms.loss).backward()
    return terms, [x.grad for x in leaves]


SETTINGS = [
    LossSettings(0.1, 5.5, beta, eta, detach, mode)
    for beta, mode in [(0.0, "no_weight"), (0.5, "no_weight"), (0.5, "full"),
                       (0.5, "detaching"), (0.5, "none")]
    for eta in (1e-6, 1.02, 1e6)          # every gate shut, some shut, every gate open
    for detach in (True, False)
]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("settings", SETTINGS, ids=str)
def test_fused_loss_equals_the_reference_in_value_terms_and_gradients(k, settings, exp_kernel):
    torch.manual_seed(k)
    logits = [3 * torch.randn(9, 13, dtype=torch.float64) for _ in range(k + 1)]
    gold = torch.randint(0, 13, (9,))
    expected, expected_grads = gradients(
        lambda t, s: aiokd_loss_reference(t, s, gold, settings), logits)
    found, found_grads = gradients(lambda t, s: aiokd_loss(t, s, gold, settings), logits)
    for name in ("loss", "ce", "teacher_nll", "kd", "ml"):
        assert torch.allclose(getattr(found, name), getattr(expected, name), rtol=1e-12), name
    assert torch.equal(found.gates, expected.gates)
    for a, b in zip(found_grads, expected_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("loss", [aiokd_loss, aiokd_loss_reference])
def test_terms_and_gates_are_their_definitions(loss):
    torch.manual_seed(0)
    logits = [torch.randn(6, 10, dtype=torch.float64) for _ in range(3)]
    gold = torch.randint(0, 10, (6,))
    s = LossSettings(0.1, 2.0, 0.5, 1.1, True, "no_weight")
    terms = loss(logits[0], logits[1:], gold, s)
    ce = torch.stack([direct_ce(x, gold, 0.1) for x in logits])
    assert torch.allclose(terms.ce, ce)
    assert torch.allclose(terms.teacher_nll, F.cross_entropy(logits[0], gold, reduction="sum"))
    assert torch.allclose(terms.kd, (direct_kl(logits[0], logits[1])
                                     + direct_kl(logits[0], logits[2])) / 2)
    better, worse = (1, 2) if ce[1] <= ce[2] else (2, 1)
    assert torch.allclose(terms.ml, direct_kl(logits[better], logits[worse]))
    assert terms.gates.tolist() == [float(c <= 1.1 * ce[0]) for c in ce[1:]]
    assert torch.allclose(terms.loss, ce.sum() + 2.0 * terms.kd + 0.5 * terms.ml)


@pytest.mark.parametrize("loss", [aiokd_loss, aiokd_loss_reference])
@pytest.mark.parametrize("k", [2, 3])
def test_full_mutual_learning_is_the_mean_over_ordered_pairs(loss, k):
    """``full``: every student learns from every other, ``L_ml`` the mean of the ``K(K-1)``
    ordered KL terms (the reference's normalisation)."""
    torch.manual_seed(k)
    logits = [torch.randn(5, 8, dtype=torch.float64) for _ in range(k + 1)]
    gold = torch.randint(0, 8, (5,))
    terms = loss(logits[0], logits[1:], gold, LossSettings(0.1, 1.0, 0.5, 1.1, True, "full"))
    ordered = [direct_kl(logits[i], logits[j]) for i in range(1, k + 1)
               for j in range(1, k + 1) if i != j]
    assert len(ordered) == k * (k - 1)
    assert torch.allclose(terms.ml, sum(ordered) / len(ordered))


def test_detaching_gates_open_exactly_when_the_ratio_is_at_most_eta():
    teacher_ce = torch.tensor(10.0)
    student_ce = torch.tensor([10.9, 11.0, 11.2, 30.0, 5.0])
    assert detaching_gates(student_ce, teacher_ce, 1.1).tolist() == [1, 1, 0, 0, 1]


@pytest.mark.parametrize("ce_i, ce_j, mode, eta, expected", [
    (1.0, 2.0, "no_weight", 1.5, [1, 0, 1, 1]),   # i is better: KL(P_i || P_j)
    (2.0, 1.0, "no_weight", 1.5, [0, 1, 1, 1]),
    (1.0, 1.0, "no_weight", 1.5, [1, 0, 1, 1]),   # a tie goes to i
    (1.0, 2.0, "full", 1.5, [1, 1, 1, 1]),
    (1.0, 2.0, "detaching", 1.5, [1, 0, 0, 1]),   # CE_j / CE_i = 2 >= eta: the better i detached
    (1.0, 2.0, "detaching", 3.0, [1, 0, 1, 1]),
    (2.0, 1.0, "detaching", 1.5, [0, 1, 1, 0]),
])
def test_pair_weights_pick_the_better_student_and_its_detaching(ce_i, ce_j, mode, eta, expected):
    found = pair_weights(torch.tensor(ce_i), torch.tensor(ce_j), mode, eta)
    assert found.tolist() == expected


def assert_overwriting_changes_nothing(found, expected, expected_grad, dtype):
    """``found``: ``(loss, weight gradient)`` without and with ``overwrite``, equal to each other
    and, up to the rounding of ``dtype`` logits, to the float64 reference's."""
    assert torch.equal(found[0][0], found[1][0]) and torch.equal(found[0][1], found[1][1])
    tolerance = 1e-9 if dtype == torch.float64 else 3e-2  # bfloat16 logits: 8-bit mantissas
    assert torch.allclose(found[0][0].double(), expected, rtol=tolerance)
    error = (found[0][1].double() - expected_grad).abs().max()
    assert error <= tolerance * expected_grad.abs().max()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_many_row_blocks_and_overwriting_give_the_same_gradient(dtype, exp_kernel):
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
    logits = [F.linear(h.to(dtype).double(), rounded) for h in hidden]
    expected = aiokd_loss_reference(logits[0], logits[1:], gold, s).loss
    expected.backward()
    assert_overwriting_changes_nothing(found, expected, rounded.grad, dtype)


@pytest.mark.parametrize("loss", [aiokd_loss, aiokd_loss_reference])
def test_bfloat16_logits_get_float32_terms_and_bfloat16_gradients(loss):
    torch.manual_seed(5)
    logits = [torch.randn(7, 11).to(torch.bfloat16).requires_grad_() for _ in range(3)]
    gold = torch.randint(0, 11, (7,))
    s = LossSettings(0.1, 5.5, 0.5, 1.1, True, "no_weight")
    terms = loss(logits[0], logits[1:], gold, s)
    terms.loss.backward()
    reference = [x.detach().double().requires_grad_() for x in logits]
    aiokd_loss_reference(reference[0], reference[1:], gold, s).loss.backward()
    assert terms.loss.dtype == terms.ce.dtype == terms.kd.dtype == torch.float32
    for x, r in zip(logits, reference, strict=True):
        assert x.grad.dtype == torch.bfloat16
        assert torch.allclose(x.grad.double(), r.grad, atol=2e-2)


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


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("eta", [1e-6, 1e6])  # every student detached / none
def test_training_with_the_reference_loss_gives_the_same_loss_and_gradients(stage, eta):
    """``distill.loss=reference`` changes how the objective computes its loss, not the loss."""
    found = []
    for loss in ("fused", "reference"):
        cfg = load_config("tiny", overrides=[
            "model.vocab_size=40", "model.d_model=16", "model.ffn_dim=32", "model.heads=2",
            "model.dropout=0.0", f"distill.eta={eta}", "distill.k=3", f"distill.loss={loss}"])
        torch.manual_seed(0)
        src, target = torch.randint(4, 40, (3, 6)), torch.randint(4, 40, (3, 5))
        target[1, 3:] = cfg.model.pad_id
        prev = torch.cat([torch.full((3, 1), cfg.model.bos_id), target[:, :-1]], dim=1)
        model = Transformer(cfg.model).double()
        value, stats = Objective(model, cfg)(src, prev, target, [(2, 2), (6, 3), (4, 4)], stage)
        value.backward()
        found.append((value.detach(), stats, [p.grad for p in model.parameters()]))
    (fused, fused_stats, fused_grads), (reference, reference_stats, reference_grads) = found
    assert torch.allclose(fused, reference, rtol=1e-12)
    for key, value in fused_stats.items():
        assert torch.allclose(value, reference_stats[key], rtol=1e-12), key
    for a, b in zip(fused_grads, reference_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def _batch(cfg):
    torch.manual_seed(0)
    src, target = torch.randint(4, 40, (3, 6)), torch.randint(4, 40, (3, 5))
    target[1, 3:] = cfg.model.pad_id
    prev = torch.cat([torch.full((3, 1), cfg.model.bos_id), target[:, :-1]], dim=1)
    return src, prev, target


SEPARATE = ["model.vocab_size=40", "model.d_model=16", "model.ffn_dim=32", "model.heads=2",
            "model.dropout=0.3", "distill.k=3", "distill.reuse_prefix=false"]


def test_separate_passes_give_every_sampled_student_its_own_pass_and_noise():
    """``reuse_prefix=false`` is the reference criterion: teacher and each sampled student, a
    teacher-sized one and a repeated draw included, run their own forward pass (own dropout),
    then the AIO-KD loss of those logits."""
    cfg = load_config("tiny", overrides=SEPARATE)
    src, prev, target = _batch(cfg)
    mask = target != cfg.model.pad_id
    students = [(6, 6), (2, 2), (2, 2)]
    model = Transformer(cfg.model).double().train()
    torch.manual_seed(5)
    found, _ = Objective(model, cfg)(src, prev, target, students, stage=2)
    torch.manual_seed(5)
    logits = [model(src, prev, *s, select=mask) for s in [(6, 6), *students]]
    settings = LossSettings(0.1, cfg.distill.alpha, cfg.distill.beta, cfg.distill.eta)
    expected = aiokd_loss_reference(logits[0], logits[1:], target[mask], settings)
    assert torch.allclose(found, expected.loss, rtol=1e-12)
    assert direct_kl(logits[0], logits[1]) > 1e-6          # the sampled 6-6: dropout noise
    assert not torch.equal(logits[2], logits[3])             # 2-2 drawn twice: two passes


def test_the_shared_pass_makes_a_sampled_teacher_sized_student_the_teacher():
    cfg = load_config("tiny", overrides=[*SEPARATE[:-1], "distill.reuse_prefix=true"])
    src, prev, target = _batch(cfg)
    model = Transformer(cfg.model).double().train()
    torch.manual_seed(5)
    _, stats = Objective(model, cfg)(src, prev, target, [(6, 6)], stage=1)
    assert stats["kd"] == 0


@pytest.mark.parametrize("ml_stage, ml_in_stage_1", [(2, False), (1, True)])
def test_mutual_learning_starts_in_the_stage_asked_for(ml_stage, ml_in_stage_1):
    cfg = load_config("tiny", overrides=[*SEPARATE[:5], f"distill.ml_stage={ml_stage}",
                                         "distill.ml_mode=full"])
    src, prev, target = _batch(cfg)
    model = Transformer(cfg.model).double().eval()
    _, first = Objective(model, cfg)(src, prev, target, [(2, 2), (4, 3)], stage=1)
    _, second = Objective(model, cfg)(src, prev, target, [(2, 2), (4, 3)], stage=2)
    assert bool(first["ml"] > 0) == ml_in_stage_1 and second["ml"] > 0
