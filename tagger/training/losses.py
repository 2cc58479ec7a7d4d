"""Training losses: BCE (multi-label), CE with soft targets (single-label), and EfficientAT-style distillation.

Targets are always float (B, C) so mixup can blend them for both tasks. Models whose official output is a
probability (PSLA, PANNs decision-level) already return log-odds as logits, so one logits-based loss serves all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tagger.errors import TaggerError

__all__ = [
    "LOSS_KINDS", "distillation_loss", "frame_loss", "label_loss", "soft_targets", "training_loss",
]

LOSS_KINDS = ("bce", "ce")


def soft_targets(targets: Tensor, num_classes: int) -> Tensor:
    """Float (B, C) targets: multi-hot rows stay, class indices (B,) become one-hot."""
    if targets.dim() == 1 and not targets.is_floating_point():
        return F.one_hot(targets.long(), num_classes).float()
    if targets.dim() == 2 and targets.shape[1] == num_classes:
        return targets.float()
    raise TaggerError(f"targets of shape {tuple(targets.shape)} and dtype {targets.dtype} are neither class "
                      f"indices (B,) nor (B, {num_classes}) multi-hot rows")


def label_loss(logits: Tensor, targets: Tensor, kind: str) -> Tensor:
    """Mean BCE-with-logits over all elements, or batch-mean cross-entropy against probability targets.

    CE is linear in the target, so CE on mixed one-hots equals lam * CE(y) + (1 - lam) * CE(y[perm]) (PaSST ESC-50).
    """
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    if kind == "ce":
        return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    raise TaggerError(f"loss kind {kind!r} must be one of {', '.join(LOSS_KINDS)}")


def distillation_loss(logits: Tensor, soft: Tensor, has_teacher: Tensor, kind: str = "bce") -> Tensor:
    """KD against soft teacher targets, averaged over rows that have a teacher: BCE-with-logits as EfficientAT and
    CED distil tags, or for a single-label run (`kind="ce"`) cross-entropy, Hinton's KL up to the teacher's entropy.

    `soft` are probabilities (sigmoid, or softmax for "ce", of teacher / T), already mixed like the batch. Rows
    without a teacher contribute nothing; with none at all the result is a zero that still carries a gradient, so
    every rank of a distributed run backpropagates through the same graph.
    """
    has = has_teacher.to(device=logits.device, dtype=torch.bool)
    soft = torch.where(has[:, None], soft.to(device=logits.device, dtype=logits.dtype), 0.0)
    if kind == "ce":
        per_row = -(soft * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    else:
        per_row = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").mean(dim=-1)
    # A weighted mean rather than `if has.any()` and per_row[has]: no host sync (a GPU step never waits here).
    weight = has.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def training_loss(logits: Tensor, targets: Tensor, kind: str, teacher: Tensor | None = None,
                  has_teacher: Tensor | None = None, kd_lambda: float = 0.1) -> tuple[Tensor, dict[str, float]]:
    """The loss to backpropagate and its parts (detached tensors: reading them is a host sync, left to logging).

    Without a teacher it is the label loss; with one (soft targets, `augment.mix_known` mixes them),
    kd_lambda * label + (1 - kd_lambda) * distillation. `targets` and `teacher` are already mixed by the caller.
    """
    label = label_loss(logits, targets, kind)
    if teacher is None:
        return label, {"label_loss": label.detach()}
    if has_teacher is None:
        has_teacher = torch.ones(teacher.shape[0], dtype=torch.bool, device=teacher.device)
    kd = distillation_loss(logits, teacher, has_teacher, kind)
    total = kd_lambda * label + (1.0 - kd_lambda) * kd
    return total, {"label_loss": label.detach(), "kd_loss": kd.detach()}


def frame_loss(frame_logits: Tensor, frame_targets: Tensor, has_frames: Tensor) -> Tensor:
    """Strong-label loss: BCE-with-logits over every frame and class, averaged over the rows that have strong labels.

    Like `distillation_loss`, rows without strong labels weigh 0 (no host sync), and a batch without any gives a
    zero that still carries a gradient.
    """
    if frame_logits.shape != frame_targets.shape:
        raise TaggerError(f"frame output {tuple(frame_logits.shape)} and frame targets {tuple(frame_targets.shape)} "
                          "differ in shape; the model's frame output must have one row per front-end frame")
    has = has_frames.to(device=frame_logits.device, dtype=frame_logits.dtype)
    targets = frame_targets.to(device=frame_logits.device, dtype=frame_logits.dtype)
    per_row = F.binary_cross_entropy_with_logits(frame_logits, targets, reduction="none").mean(dim=(1, 2))
    return (per_row * has).sum() / has.sum().clamp(min=1.0)
