"""Learning-rate factors as pure functions of the optimizer step, so a resumed run gets exactly the same lr.

The trainer sets lr = optim.lr * lr_factor(config.schedule, step, steps_per_epoch, epochs) before each step.
"""

from __future__ import annotations

import bisect
import math

from tagger.errors import TaggerError
from tagger.training.config import ScheduleConfig

__all__ = ["SCHEDULES", "describe", "lr_factor"]

SCHEDULES = ("constant", "step", "exp-warmup-linear-down", "cosine", "htsat")

# AST/PSLA reset the lr only when global_step % 50 == 0 during warmup.
_WARMUP_STAIR = 50
# MultiStepLR milestones in AST/PSLA are range(start, 1000, every).
_LAST_MILESTONE = 1000
# HTS-AT's hard-coded floor after the last lr_scheduler_epoch boundary (higher than its 0.02 step before it).
_HTSAT_TAIL_FLOOR = 0.03
_HTSAT_TAIL_DECAY = 0.98


def _warmup(steps: int, step: int) -> float:
    """AST/PSLA staircase: lr jumps to (step // 50 * 50) / steps every 50 steps, from 0 at step 0."""
    if steps <= 0 or step > steps:
        return 1.0
    stair = _WARMUP_STAIR if steps >= _WARMUP_STAIR else 1
    return (step // stair * stair) / steps


def _multistep(config: ScheduleConfig, epoch: int) -> float:
    """MultiStepLR(milestones=range(decay_start, 1000, decay_every)) after `epoch` scheduler steps."""
    if config.decay_every <= 0:
        raise TaggerError(f"schedule.decay_every={config.decay_every} must be > 0")
    milestones = range(config.decay_start, _LAST_MILESTONE, config.decay_every)
    passed = bisect.bisect_right(milestones, epoch)  # milestones m <= epoch
    return config.decay_factor ** passed


def _exp_warmup_linear_down(config: ScheduleConfig, epoch: float) -> float:
    """PaSST/EfficientAT: exponential ramp-up (epoch clipped at 0.5), flat, linear ramp down to last_lr_value."""
    length = config.warmup_len
    rampup = 1.0
    if epoch < length:
        phase = 1.0 - min(max(epoch, 0.5), length) / length
        rampup = math.exp(-5.0 * phase * phase)
    start, down, last = config.ramp_down_start, config.ramp_down_len, config.last_lr_value
    if epoch <= start:
        rampdown = 1.0
    elif epoch - start < down:
        rampdown = last + (1.0 - last) * (down - epoch + start) / down
    else:
        rampdown = last
    return rampup * rampdown


def _cosine(config: ScheduleConfig, epoch: float, total_epochs: int) -> float:
    """Linear warmup from 0, then a half cosine from 1 to min_lr_ratio at the last epoch."""
    warm = config.warmup_epochs
    if warm > 0 and epoch < warm:
        return epoch / warm
    span = total_epochs - warm
    progress = 1.0 if span <= 0 else min(max((epoch - warm) / span, 0.0), 1.0)
    low = config.min_lr_ratio
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _htsat(config: ScheduleConfig, epoch: int) -> float:
    """The official HTS-AT LambdaLR, generalised from its hard-coded 3 to n = len(lr_rate).

    Epochs e < n warm up with lr_rate[e]. Later, with k = bisect_left(lr_scheduler_epoch, e) (boundaries are
    inclusive ends), the factor is lr_rate[-1 - k], i.e. lr_rate read backwards; once k >= n (past the last
    boundary when both lists have n entries) it is max(lr_rate[0] * 0.98**e, 0.03). The defaults give
    0.02, 0.05, 0.1 (epochs 0-2), 0.1 (3-10), 0.05 (11-20), 0.02 (21-30), 0.03 (after 30).
    """
    rates, bounds = config.lr_rate, config.lr_scheduler_epoch
    if not rates or len(rates) != len(bounds):
        raise TaggerError(f"schedule.lr_rate {rates} and schedule.lr_scheduler_epoch {bounds} must be non-empty "
                          f"lists of the same length")
    if epoch < len(rates):
        return rates[epoch]
    k = bisect.bisect_left(bounds, epoch)
    if k >= len(rates):
        return max(rates[0] * _HTSAT_TAIL_DECAY ** epoch, _HTSAT_TAIL_FLOOR)
    return rates[-1 - k]


def lr_factor(config: ScheduleConfig, step: int, steps_per_epoch: int, total_epochs: int) -> float:
    """The factor on optim.lr at 0-based optimizer step `step` of the whole run: warmup(step) * shape(epoch).

    With unit "epoch" the shape changes at epoch boundaries (the official per-epoch schedulers); with "step" it
    follows the fractional epoch step / steps_per_epoch. "step" and "htsat" are tables over whole epochs and
    always use the completed-epoch count.
    """
    if steps_per_epoch <= 0:
        raise TaggerError(f"steps_per_epoch={steps_per_epoch} must be > 0")
    if step < 0:
        raise TaggerError(f"step={step} must be >= 0")
    if config.unit == "epoch":
        epoch: float = step // steps_per_epoch
    elif config.unit == "step":
        epoch = step / steps_per_epoch
    else:
        raise TaggerError(f"schedule.unit={config.unit!r} must be epoch or step")
    whole = int(math.floor(epoch))
    kind = config.kind
    if kind == "constant":
        shape = 1.0
    elif kind == "step":
        shape = _multistep(config, whole)
    elif kind == "exp-warmup-linear-down":
        shape = _exp_warmup_linear_down(config, epoch)
    elif kind == "cosine":
        shape = _cosine(config, epoch, total_epochs)
    elif kind == "htsat":
        shape = _htsat(config, whole)
    else:
        raise TaggerError(f"schedule.kind={kind!r} must be one of {', '.join(SCHEDULES)}")
    return _warmup(config.warmup_steps, step) * shape


def describe(config: ScheduleConfig, steps_per_epoch: int, total_epochs: int) -> list[float]:
    """The factor at the first step of each epoch, for logs and docs."""
    return [lr_factor(config, epoch * steps_per_epoch, steps_per_epoch, total_epochs)
            for epoch in range(total_epochs)]
