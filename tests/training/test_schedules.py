"""Learning-rate factors against the official schedules' published values."""

from __future__ import annotations

import math

import pytest

from tagger.errors import TaggerError
from tagger.training.config import ScheduleConfig
from tagger.training.schedules import describe, lr_factor


def test_constant_is_one_everywhere():
    config = ScheduleConfig()
    assert describe(config, 10, 4) == [1.0] * 4
    assert lr_factor(config, 37, 10, 4) == 1.0


def test_ast_full_audioset_halving_log():
    config = ScheduleConfig(kind="step", decay_start=2, decay_every=1, decay_factor=0.5)
    lrs = [1e-5 * f for f in describe(config, 100, 5)]
    assert lrs == pytest.approx([1e-5, 1e-5, 5e-6, 2.5e-6, 1.25e-6], rel=1e-12)
    # Within an epoch the factor does not move, even when the unit is "step".
    stepwise = ScheduleConfig(kind="step", unit="step", decay_start=2, decay_every=1, decay_factor=0.5)
    assert lr_factor(stepwise, 399, 100, 5) == 0.25 and lr_factor(stepwise, 250, 100, 5) == 0.5


def test_step_decay_every_and_esc50():
    esc = ScheduleConfig(kind="step", decay_start=5, decay_every=1, decay_factor=0.85)
    assert describe(esc, 1, 8) == pytest.approx([1, 1, 1, 1, 1, 0.85, 0.85**2, 0.85**3])
    balanced = ScheduleConfig(kind="step", decay_start=10, decay_every=5, decay_factor=0.5)
    factors = describe(balanced, 1, 25)
    assert factors[9] == 1 and factors[10] == factors[14] == 0.5 and factors[15] == 0.25 and factors[24] == 0.125


def test_ast_warmup_staircase():
    config = ScheduleConfig(warmup_steps=1000)
    values = {step: lr_factor(config, step, 10_000, 5) for step in (0, 49, 50, 999, 1000, 1001)}
    assert values == {0: 0.0, 49: 0.0, 50: 0.05, 999: 0.95, 1000: 1.0, 1001: 1.0}
    # Warmup multiplies the epoch shape; short warmups use one-step stairs.
    decayed = ScheduleConfig(kind="step", decay_start=0, warmup_steps=1000)
    assert lr_factor(decayed, 500, 100, 10) == pytest.approx(0.5 * 0.5**6)
    short = ScheduleConfig(warmup_steps=10)
    assert [lr_factor(short, s, 100, 1) for s in (0, 3, 10, 11)] == [0.0, 0.3, 1.0, 1.0]


HTSAT_TABLE = [0.02, 0.05, 0.1] + [0.1] * 8 + [0.05] * 10 + [0.02] * 10 + [0.03] * 10


def test_htsat_table_every_epoch():
    assert len(HTSAT_TABLE) == 41  # epochs 0..40
    config = ScheduleConfig(kind="htsat")
    assert describe(config, 7, 41) == pytest.approx(HTSAT_TABLE, abs=1e-15)
    # Boundaries are inclusive ends: epoch 10 still 0.1, epoch 11 already 0.05; 30 -> 0.02, 31 -> 0.03.
    assert [lr_factor(config, e * 7, 7, 41) for e in (10, 11, 20, 21, 30, 31)] == [0.1, 0.05, 0.05, 0.02, 0.02, 0.03]


def test_htsat_generalises_to_other_lists_and_rejects_mismatch():
    config = ScheduleConfig(kind="htsat", lr_rate=[0.1, 1.0], lr_scheduler_epoch=[4, 6])
    assert describe(config, 1, 9) == pytest.approx([0.1, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1,
                                                     max(0.1 * 0.98**7, 0.03), max(0.1 * 0.98**8, 0.03)])
    with pytest.raises(TaggerError, match="same length"):
        lr_factor(ScheduleConfig(kind="htsat", lr_rate=[0.1], lr_scheduler_epoch=[1, 2]), 0, 1, 1)


def test_exp_warmup_linear_down_values():
    config = ScheduleConfig(kind="exp-warmup-linear-down", warmup_len=5, ramp_down_start=50, ramp_down_len=50,
                            last_lr_value=0.01)
    f = [lr_factor(config, e, 1, 130) for e in range(130)]
    assert f[0] == pytest.approx(math.exp(-5 * (1 - 0.5 / 5) ** 2))  # epoch clipped to 0.5
    assert f[1] == pytest.approx(math.exp(-5 * 0.8**2)) and f[4] == pytest.approx(math.exp(-5 * 0.2**2))
    assert f[5] == 1.0 and f[50] == 1.0
    assert f[75] == pytest.approx(0.01 + 0.99 * 0.5)  # half way down
    assert f[99] == pytest.approx(0.01 + 0.99 * 1 / 50)
    assert f[100] == pytest.approx(0.01) and f[129] == pytest.approx(0.01)
    # unit="step" follows fractional epochs; no warmup when warmup_len is 0.
    stepwise = ScheduleConfig(kind="exp-warmup-linear-down", unit="step", warmup_len=0, ramp_down_start=0,
                              ramp_down_len=10, last_lr_value=0.0)
    assert lr_factor(stepwise, 0, 4, 10) == 1.0
    assert lr_factor(stepwise, 10, 4, 10) == pytest.approx(0.75)  # epoch 2.5 of a 10-epoch ramp


def test_unit_step_is_continuous_within_an_epoch():
    per_epoch = ScheduleConfig(kind="cosine")
    per_step = ScheduleConfig(kind="cosine", unit="step")
    within = [lr_factor(per_step, s, 100, 10) for s in range(300, 400)]
    assert all(a > b for a, b in zip(within, within[1:], strict=False))  # strictly decreasing, no plateau
    assert max(abs(a - b) for a, b in zip(within, within[1:], strict=False)) < 2e-3  # slope <= pi / 2000
    assert len({lr_factor(per_epoch, s, 100, 10) for s in range(300, 400)}) == 1
    assert lr_factor(per_epoch, 300, 100, 10) == lr_factor(per_step, 300, 100, 10)


def test_cosine_endpoints_and_warmup():
    config = ScheduleConfig(kind="cosine", unit="step", warmup_epochs=2.0, min_lr_ratio=0.1)
    assert lr_factor(config, 0, 10, 12) == 0.0
    assert lr_factor(config, 10, 10, 12) == pytest.approx(0.5)  # half way through the linear warmup
    assert lr_factor(config, 20, 10, 12) == pytest.approx(1.0)
    assert lr_factor(config, 70, 10, 12) == pytest.approx(0.1 + 0.9 * 0.5)  # mid cosine
    assert lr_factor(config, 120, 10, 12) == pytest.approx(0.1)
    assert lr_factor(config, 500, 10, 12) == pytest.approx(0.1)  # clipped past the end
    plain = ScheduleConfig(kind="cosine")
    assert describe(plain, 5, 4) == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                                   0.5 * (1 + math.cos(3 * math.pi / 4))])


def test_bad_inputs_are_named():
    with pytest.raises(TaggerError, match="steps_per_epoch"):
        lr_factor(ScheduleConfig(), 0, 0, 1)
    with pytest.raises(TaggerError, match="'linear'"):
        lr_factor(ScheduleConfig(kind="linear"), 0, 1, 1)
    with pytest.raises(TaggerError, match="decay_every"):
        lr_factor(ScheduleConfig(kind="step", decay_every=0), 0, 1, 1)
