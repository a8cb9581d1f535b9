"""Each term of the AIO-KD objective against a direct computation on tiny tensors."""


import pytest
import torch
import torch.nn.functional as F

from aiokd.config import load_config
from aiokd.distill.losses import (
    kl_divergence,
    label_smoothed_nll,
    label_smoothed_nll_from_logits,
    row_blocks,
    selective_kd_mask,
    token_nll,
    token_nll_from_hidden,
    token_nll_from_logits,
)
from aiokd.distill.objective import Objective
from aiokd.model.transformer import Transformer


@pytest.fixture(autouse=True)
def float64_by_default():
    """Exact comparisons in double precision, restored afterwards for the other test files."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def direct_kl(p_logits, q_logits):
    """KL(P || Q) summed over tokens, straight from the definition."""
    p = F.softmax(p_logits, -1)
    return (p * (F.log_softmax(p_logits, -1) - F.log_softmax(q_logits, -1))).sum()


def test_label_smoothed_nll_matches_definition():
    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    target = torch.tensor([0, 3, 6, 2, 2])
    lprobs = F.log_softmax(logits, -1)
    loss, nll = label_smoothed_nll(lprobs, target, 0.1)
    v = logits.shape[-1]
    expected_nll = -lprobs[torch.arange(5), target].sum()
    # fairseq: the target gets 1 - eps + eps/(V-1) in total... written out per class:
    q = torch.full((5, v), 0.1 / (v - 1))
    q[torch.arange(5), target] += 1 - 0.1 - 0.1 / (v - 1)
    expected = -(q * lprobs).sum()
    assert torch.allclose(nll, expected_nll)
    assert torch.allclose(loss, expected)


def test_label_smoothed_nll_gradient_matches_definition():
    torch.manual_seed(1)
    logits = torch.randn(6, 9, requires_grad=True)
    target = torch.tensor([0, 8, 3, 3, 5, 1])
    loss, _ = label_smoothed_nll(F.log_softmax(logits, -1), target, 0.1)
    (2.5 * loss).backward()
    ours, logits.grad = logits.grad, None
    q = torch.full((6, 9), 0.1 / 8)
    q[torch.arange(6), target] += 1 - 0.1 - 0.1 / 8
    (2.5 * -(q * F.log_softmax(logits, -1)).sum()).backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_label_smoothed_nll_from_logits_equals_it_on_log_softmax(epsilon, exp_kernel):
    torch.manual_seed(2)
    logits = (10 * torch.randn(6, 9)).requires_grad_()
    target = torch.tensor([0, 8, 3, 3, 5, 1])
    loss, nll = label_smoothed_nll_from_logits(logits, target, epsilon)
    (-1.5 * loss).backward()
    fused_grad, logits.grad = logits.grad, None
    expected_loss, expected_nll = label_smoothed_nll(F.log_softmax(logits, -1), target, epsilon)
    (-1.5 * expected_loss).backward()
    assert torch.allclose(loss, expected_loss) and torch.allclose(nll, expected_nll)
    assert torch.allclose(fused_grad, logits.grad, atol=1e-12)
    assert not nll.requires_grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_label_smoothed_nll_from_logits_over_many_row_blocks_and_overwriting(dtype, exp_kernel):
    """A vocabulary of 2^17 makes blocks of 2 rows (the last one short); with ``overwrite`` the
    gradient reaches the projection through the logits' own buffer."""
    torch.manual_seed(4)
    hidden, weight = torch.randn(5, 3), torch.randn(2**17, 3).requires_grad_()
    target = torch.tensor([7, 2**17 - 1, 0, 99, 7])
    grads = []
    for overwrite in (False, True):
        logits = F.linear(hidden.to(dtype), weight.to(dtype))
        loss, nll = label_smoothed_nll_from_logits(logits, target, 0.1, overwrite=overwrite)
        loss.backward()
        grads.append(weight.grad)
        weight.grad = None
    expected, expected_nll = label_smoothed_nll(F.log_softmax(F.linear(hidden, weight), -1),
                                                target, 0.1)
    expected.backward()
    tolerance = 1e-9 if dtype == torch.float64 else 1e-2
    assert torch.allclose(loss.double(), expected, rtol=tolerance)
    assert torch.allclose(nll.double(), expected_nll, rtol=tolerance)
    assert torch.equal(grads[0], grads[1])
    assert torch.allclose(grads[0].double(), weight.grad, atol=tolerance)


def test_token_nll_from_hidden_projects_block_by_block():
    """A vocabulary of 2^20 makes blocks of 2 rows of the 5 (the last one short)."""
    torch.manual_seed(5)
    hidden, weight = torch.randn(5, 3), torch.randn(2**20, 3)
    target = torch.tensor([3, 2**20 - 1, 0, 12345, 3])
    blocks = []

    def project(rows):
        blocks.append(len(rows))
        return F.linear(rows, weight)

    nll = token_nll_from_hidden(hidden, project, target, 2**20)
    assert blocks == [2, 2, 1]
    assert torch.allclose(nll, token_nll(F.log_softmax(F.linear(hidden, weight), -1), target))


def test_from_logits_losses_work_in_float32_on_bfloat16_logits(exp_kernel):
    torch.manual_seed(3)
    logits = torch.randn(5, 11, dtype=torch.float32).to(torch.bfloat16).requires_grad_()
    target = torch.tensor([1, 2, 3, 4, 10])
    loss, _ = label_smoothed_nll_from_logits(logits, target, 0.1)
    loss.backward()
    reference = logits.detach().float().requires_grad_()
    expected, _ = label_smoothed_nll(F.log_softmax(reference, -1), target, 0.1)
    expected.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(logits.grad.float(), reference.grad, atol=1e-2)
    assert torch.allclose(token_nll_from_logits(logits.detach(), target),
                          token_nll(F.log_softmax(reference.detach(), -1), target), atol=1e-5)


def test_label_smoothing_zero_is_cross_entropy():
    logits = torch.randn(4, 6)
    target = torch.tensor([1, 2, 3, 4])
    loss, nll = label_smoothed_nll(F.log_softmax(logits, -1), target, 0.0)
    assert torch.allclose(loss, F.cross_entropy(logits, target, reduction="sum"))
    assert torch.allclose(loss, nll)


def test_kl_divergence_matches_definition():
    p, q = torch.randn(4, 9), torch.randn(4, 9)
    got = kl_divergence(F.log_softmax(p, -1), F.log_softmax(q, -1))
    assert torch.allclose(got, direct_kl(p, q))


def test_selective_kd_mask_keeps_hardest_tokens():
    nll = torch.tensor([0.1, 3.0, 0.5, 2.0])
    assert selective_kd_mask(nll, 0.5).tolist() == [False, True, False, True]


def tiny_setup(**overrides):
    values = {"model.vocab_size": 30, "model.d_model": 16, "model.ffn_dim": 32, "model.heads": 2,
              "model.enc_layers": 3, "model.dec_layers": 3, "model.dropout": 0.0,
              "distill.min_enc": 1, "distill.min_dec": 1, **overrides}
    cfg = load_config("tiny", overrides=[f"{k}={v}" for k, v in values.items()])
    torch.manual_seed(0)
    model = Transformer(cfg.model).double()
    src = torch.randint(4, 30, (3, 5))
    target = torch.randint(4, 30, (3, 4))
    target[0, 3] = 0
    prev = torch.cat([torch.full((3, 1), 2), target[:, :-1]], dim=1)
    return cfg, model, src, prev, target


@pytest.mark.parametrize("stage", [1, 2])
def test_objective_is_the_sum_of_its_terms(stage):
    cfg, model, src, prev, target = tiny_setup()
    students = [(1, 1), (3, 2)]
    loss, stats = Objective(model, cfg)(src, prev, target, students, stage)
    mask = target != 0
    gold = target[mask]
    lp = {s: F.log_softmax(model(src, prev, *s)[mask], -1) for s in [(3, 3), *students]}
    ce = {s: label_smoothed_nll(lp[s], gold, 0.1)[0] for s in lp}
    kd = sum(kl_divergence(lp[(3, 3)], lp[s]) for s in students) / 2
    expected = ce[(3, 3)] + ce[(1, 1)] + ce[(3, 2)] + cfg.distill.alpha * kd
    if stage == 2:
        better, worse = sorted(students, key=lambda s: ce[s].item())
        expected = expected + cfg.distill.beta * kl_divergence(lp[better], lp[worse])
    assert torch.allclose(loss.double(), expected.double(), rtol=1e-5)


def test_prefix_reuse_equals_separate_passes_in_gradient():
    cfg, model, src, prev, target = tiny_setup()
    students = [(1, 1), (3, 2), (2, 2)]
    grads = []
    for reuse in (True, False):
        cfg.distill.reuse_prefix = reuse
        model.zero_grad()
        loss, _ = Objective(model, cfg)(src, prev, target, students, 2)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


def test_detached_student_sends_no_kd_gradient_to_teacher_only_layers():
    """With every student detached and alpha large, the teacher-only top layers' gradient is the
    teacher CE gradient alone."""
    cfg, model, src, prev, target = tiny_setup(**{"distill.eta": 1e-6})
    top = model.decoder[2]
    students = [(3, 1)]
    model.zero_grad()
    Objective(model, cfg)(src, prev, target, students, 1)[0].backward()
    with_kd = [p.grad.clone() for p in top.parameters()]
    cfg.distill.alpha = 0.0
    model.zero_grad()
    Objective(model, cfg)(src, prev, target, students, 1)[0].backward()
    for a, b in zip(with_kd, [p.grad for p in top.parameters()], strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_row_blocks_fit_a_cpu_cache_and_few_launches_on_an_accelerator():
    """The AIO-KD loss of a 4096-token batch, 8000 types, teacher and three students: on a CPU
    blocks of 8 rows (1 MiB of float32), on a GPU two blocks; either way every row once."""
    for device, count in (("cpu", 512), ("cuda", 2)):
        blocks = row_blocks(4096, 4 * 8000, torch.device(device))
        assert len(blocks) == count
        assert [i for rows in blocks for i in range(4096)[rows]] == list(range(4096))
