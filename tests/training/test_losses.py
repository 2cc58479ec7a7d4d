"""Losses against hand-written formulas: BCE, soft-target CE (and its mixup identity), EfficientAT distillation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tagger.augment import apply_mix, draw_spec_mixup, mix_known, mix_targets
from tagger.errors import TaggerError
from tagger.training.losses import distillation_loss, label_loss, soft_targets, training_loss


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_soft_targets_one_hot_and_multi_hot():
    assert soft_targets(torch.tensor([2, 0]), 3).tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    multi = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    out = soft_targets(multi, 3)
    assert out.dtype == torch.float32 and out.tolist() == [[1.0, 0.0, 1.0]]
    with pytest.raises(TaggerError, match="multi-hot"):
        soft_targets(torch.zeros(2, 4), 3)


def test_bce_matches_the_formula():
    logits, targets = randn(4, 5), torch.sigmoid(randn(4, 5, seed=1))
    p = torch.sigmoid(logits)
    expect = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    torch.testing.assert_close(label_loss(logits, targets, "bce"), expect)


def test_ce_matches_cross_entropy_and_soft_targets():
    logits = randn(6, 4)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    torch.testing.assert_close(label_loss(logits, soft_targets(labels, 4).double(), "ce"),
                               F.cross_entropy(logits, labels))
    probs = torch.softmax(randn(6, 4, seed=1), dim=1)
    expect = -(probs * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(label_loss(logits, probs, "ce"), expect)
    with pytest.raises(TaggerError, match="'focal'"):
        label_loss(logits, probs, "focal")


def test_ce_on_mixed_one_hots_is_the_mixed_ce():
    """PaSST ESC-50: CE(mixed y) = lam * CE(y) + (1 - lam) * CE(y[perm]), per example."""
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    plan = draw_spec_mixup(8, "perm", 0.3, np.random.default_rng(4))
    logits = randn(8, 5)
    y = soft_targets(labels, 5).double()
    mixed = label_loss(logits, mix_targets(y, plan), "ce")
    lam = plan.lam.double()
    per = F.cross_entropy(logits, labels, reduction="none")
    per_partner = F.cross_entropy(logits, labels[plan.second], reduction="none")
    torch.testing.assert_close(mixed, (lam * per + (1 - lam) * per_partner).mean())


def test_distillation_matches_formula_and_ignores_rows_without_teacher():
    logits, teacher = randn(4, 3), randn(4, 3, seed=1) * 3
    has = torch.tensor([True, False, True, False])
    teacher[1] = float("nan")  # a missing entry may hold anything
    temperature = 2.0
    logits.requires_grad_(True)
    loss = distillation_loss(logits, torch.sigmoid(teacher / temperature), has)
    rows = [0, 2]
    expect = F.binary_cross_entropy_with_logits(logits[rows], torch.sigmoid(teacher[rows] / temperature))
    torch.testing.assert_close(loss, expect)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert bool((logits.grad[[1, 3]] == 0).all()) and bool((logits.grad[rows] != 0).all())


def test_single_label_distillation_is_cross_entropy_to_the_teacher_softmax():
    logits, teacher = randn(5, 4), randn(5, 4, seed=1) * 2
    has = torch.tensor([True, True, False, True, True])
    soft = torch.softmax(teacher, dim=1)
    loss = distillation_loss(logits, soft, has, "ce")
    rows = [0, 1, 3, 4]
    expect = -(soft[rows] * torch.log_softmax(logits[rows], 1)).sum(1).mean()
    torch.testing.assert_close(loss, expect)
    # Hinton's KL up to the teacher's entropy: a student equal to the teacher has zero gradient
    student = teacher.clone().requires_grad_(True)
    distillation_loss(student, soft, has, "ce").backward()
    torch.testing.assert_close(student.grad, torch.zeros_like(student.grad))
    total, parts = training_loss(logits, soft, "ce", soft, has, kd_lambda=0.0)
    torch.testing.assert_close(total, expect)


def test_distillation_without_any_teacher_is_zero_with_grad():
    logits = randn(3, 4).requires_grad_(True)
    loss = distillation_loss(logits, torch.zeros(3, 4), torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 4, dtype=torch.float64))


def test_distillation_mixes_soft_targets_not_logits():
    """EfficientAT mixes sigmoid(teacher / T) with the partner's; a mixed row needs both teachers."""
    plan = draw_spec_mixup(4, "perm", 0.3, np.random.default_rng(0))
    teacher = randn(4, 3, seed=2) * 4
    logits = randn(4, 3, seed=3)
    has = torch.ones(4, dtype=torch.bool)
    expect = F.binary_cross_entropy_with_logits(logits, apply_mix(torch.sigmoid(teacher), plan))
    torch.testing.assert_close(distillation_loss(logits, *mix_known(torch.sigmoid(teacher), has, plan)), expect)
    missing = torch.tensor([True, True, True, False])
    partner_has = missing[plan.first] & missing[plan.second]
    per_row = F.binary_cross_entropy_with_logits(logits, apply_mix(torch.sigmoid(teacher), plan),
                                                 reduction="none").mean(1)
    torch.testing.assert_close(distillation_loss(logits, *mix_known(torch.sigmoid(teacher), missing, plan)),
                               per_row[partner_has].mean())


def test_training_loss_combines_label_and_kd():
    logits, targets = randn(5, 3), (randn(5, 3, seed=7) > 0).double()
    teacher = randn(5, 3, seed=5)
    label = label_loss(logits, targets, "bce")
    alone, parts = training_loss(logits, targets, "bce")
    torch.testing.assert_close(alone, label)
    assert list(parts) == ["label_loss"] and parts["label_loss"].item() == pytest.approx(label.item())
    soft = torch.sigmoid(teacher)
    kd = distillation_loss(logits, soft, torch.ones(5, dtype=torch.bool))
    total, parts = training_loss(logits, targets, "bce", teacher=soft, kd_lambda=0.1)
    torch.testing.assert_close(total, 0.1 * label + 0.9 * kd)
    assert parts["label_loss"].item() == pytest.approx(label.item())
    assert parts["kd_loss"].item() == pytest.approx(kd.item())
    only_label, _ = training_loss(logits, targets, "bce", teacher=soft, kd_lambda=1.0)
    torch.testing.assert_close(only_label, label)


def test_gradients_flow_to_the_logits():
    for kind in ("bce", "ce"):
        logits = randn(4, 6).requires_grad_(True)
        targets = soft_targets(torch.tensor([0, 5, 2, 2]), 6).double()
        loss, _ = training_loss(logits, targets, kind, teacher=torch.sigmoid(randn(4, 6, seed=9)),
                                has_teacher=torch.tensor([True, True, False, True]), kd_lambda=0.5)
        loss.backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
        # A gradient step lowers the loss.
        with torch.no_grad():
            stepped = logits - 0.1 * logits.grad
        lower, _ = training_loss(stepped, targets, kind, teacher=torch.sigmoid(randn(4, 6, seed=9)),
                                 has_teacher=torch.tensor([True, True, False, True]), kd_lambda=0.5)
        assert lower < loss
