"""Augmentations: seeded reproducibility, the official ranges and formulas, SpecAugment mask geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagger.augment import (
    MixPlan,
    apply_mix,
    draw_mix_lambda,
    draw_spec_mixup,
    mix_targets,
    mix_waveforms,
    random_gain,
    spec_augment,
    time_roll,
)
from tagger.errors import TaggerError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def wave(n: int = 1000, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


# ------------------------------------------------------------------------------------------- waveform


def test_same_seed_same_output_and_different_seeds_differ():
    x = wave()
    assert np.array_equal(random_gain(x, 7, rng(3)), random_gain(x, 7, rng(3)))
    assert np.array_equal(time_roll(x, 100, rng(3)), time_roll(x, 100, rng(3)))
    gains = {float(random_gain(x, 7, rng(seed))[0] / x[0]) for seed in range(20)}
    assert len(gains) > 1
    rolls = {int(np.argmax(time_roll(x, 100, rng(seed)) == x[0])) for seed in range(20)}
    assert len(rolls) > 1


def test_random_gain_covers_integer_db_range():
    x = np.ones(4, dtype=np.float32)
    r = rng(0)
    dbs = [20 * np.log10(float(random_gain(x, 7, r)[0])) for _ in range(500)]
    rounded = np.round(dbs)
    np.testing.assert_allclose(dbs, rounded, atol=1e-4)  # whole dB steps, amplitude 10**(dB/20)
    assert set(rounded.astype(int)) == set(range(-7, 7))  # [-7, 6], as PaSST randint(14) - 7


def test_random_gain_keeps_dtype_and_zero_is_identity():
    x = wave()
    assert random_gain(x, 12, rng()).dtype == np.float32
    assert random_gain(x, 0, rng()) is x


def test_time_roll_is_circular_shift_within_range():
    x = np.arange(50, dtype=np.float32)
    r = rng(0)
    shifts = set()
    for _ in range(300):
        y = time_roll(x, 5, r)
        shift = int(y.argmin())  # where sample 0 went
        shift = shift - 50 if shift > 25 else shift
        assert np.array_equal(y, np.roll(x, shift))
        shifts.add(shift)
    assert shifts == set(range(-5, 6))
    assert time_roll(x, 0, r) is x


# ------------------------------------------------------------------------------------ waveform mixup


def test_mix_waveforms_pads_cuts_and_removes_mean():
    first = wave(100, seed=1) + 3.0
    short = wave(60, seed=2) + 1.0
    long = wave(150, seed=3) - 2.0
    for second in (short, long):
        mix = mix_waveforms(first, second, 0.7)
        assert mix.shape == (100,) and mix.dtype == np.float32
        assert abs(float(mix.mean())) < 1e-5

    # Padding happens before the mean is removed: the padded tail of `short` is -mean(padded short).
    padded = np.concatenate([short, np.zeros(40, np.float32)])
    expect = 0.7 * (first - first.mean()) + 0.3 * (padded - padded.mean())
    np.testing.assert_allclose(mix_waveforms(first, short, 0.7), expect - expect.mean(), atol=1e-5)
    cut = long[:100]
    expect = 0.4 * (first - first.mean()) + 0.6 * (cut - cut.mean())
    np.testing.assert_allclose(mix_waveforms(first, long, 0.4), expect - expect.mean(), atol=1e-5)


def test_mix_waveforms_lam_one_is_centred_first():
    first = wave(100) + 5.0
    np.testing.assert_allclose(mix_waveforms(first, wave(80, seed=9), 1.0), first - first.mean(), atol=1e-5)


def test_draw_mix_lambda_beta_moments_and_take_max():
    r = rng(0)
    draws = np.array([draw_mix_lambda(10.0, r, False) for _ in range(4000)])
    assert abs(draws.mean() - 0.5) < 0.01
    assert abs(draws.var() - 1 / 84) < 0.002  # Beta(a, a) variance 1 / (4 (2a + 1))
    maxed = np.array([draw_mix_lambda(2.0, r, True) for _ in range(500)])
    assert maxed.min() >= 0.5 and maxed.max() <= 1.0
    assert draw_mix_lambda(2.0, rng(5), False) == draw_mix_lambda(2.0, rng(5), False)


# -------------------------------------------------------------------------------- spectrogram mixup


def test_perm_plan_is_a_permutation_and_mixes_by_the_formula():
    plan = draw_spec_mixup(8, "perm", 0.3, rng(1))
    assert torch.equal(plan.first, torch.arange(8))
    assert sorted(plan.second.tolist()) == list(range(8))
    assert plan.lam.dtype == torch.float32 and bool((plan.lam >= 0.5).all()) and plan.mix_targets
    x = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(0))
    out = apply_mix(x, plan)
    for i in range(8):
        lam = float(plan.lam[i])
        torch.testing.assert_close(out[i], lam * x[i] + (1 - lam) * x[int(plan.second[i])])
    y = torch.eye(8)
    mixed = mix_targets(y, plan)
    torch.testing.assert_close(mixed, plan.lam[:, None] * y + (1 - plan.lam[:, None]) * y[plan.second])
    same = draw_spec_mixup(8, "perm", 0.3, rng(1))
    assert torch.equal(same.second, plan.second) and torch.equal(same.lam, plan.lam)
    assert not torch.equal(draw_spec_mixup(8, "perm", 0.3, rng(2)).lam, plan.lam)


def test_pairs_plan_halves_the_batch_and_rejects_odd():
    plan = draw_spec_mixup(6, "pairs", 1.0, rng(0))
    assert plan.first.tolist() == [0, 2, 4] and plan.second.tolist() == [1, 3, 5]
    assert bool((draw_spec_mixup(40, "pairs", 1.0, rng(0)).lam < 0.5).any())  # no max(lam, 1 - lam) in PANNs
    x = torch.arange(6, dtype=torch.float64)[:, None].repeat(1, 4)
    out = apply_mix(x, plan)
    lam = plan.lam.double()
    torch.testing.assert_close(out[:, 0], lam * torch.tensor([0.0, 2, 4]) + (1 - lam) * torch.tensor([1.0, 3, 5]))
    assert out.dtype == torch.float64
    assert mix_targets(torch.eye(6), plan).shape == (3, 6)
    with pytest.raises(TaggerError, match="odd"):
        draw_spec_mixup(5, "pairs", 1.0, rng(0))


def test_flip_plan_mixes_inputs_but_not_targets():
    plan = draw_spec_mixup(4, "flip", 0.5, rng(0))
    assert plan.second.tolist() == [3, 2, 1, 0] and not plan.mix_targets
    x = torch.randn(4, 2, 3)
    lam = plan.lam[:, None, None]
    torch.testing.assert_close(apply_mix(x, plan), lam * x + (1 - lam) * x.flip(0))
    y = torch.eye(4)
    assert torch.equal(mix_targets(y, plan), y)


def test_unknown_mix_kind_is_named():
    with pytest.raises(TaggerError, match="cutmix"):
        draw_spec_mixup(4, "cutmix", 0.3, rng())


def test_apply_mix_broadcasts_over_any_trailing_dims():
    plan = MixPlan(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.25, 1.0]), True)
    x = torch.tensor([[[1.0, 1.0]], [[5.0, 5.0]]])
    assert apply_mix(x, plan).tolist() == [[[4.0, 4.0]]] + [[[5.0, 5.0]]]
    assert apply_mix(torch.tensor([1.0, 5.0]), plan).tolist() == [4.0, 5.0]


# --------------------------------------------------------------------------------------- SpecAugment


def runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D bool tensor."""
    padded = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
    edges = torch.diff(padded)
    return list(zip((edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist(),
                    strict=True))


def test_spec_augment_reproducible_and_seed_dependent():
    spec = torch.randn(4, 20, 30) + 10
    a = spec_augment(spec, 8, 12, rng(7))
    assert torch.equal(a, spec_augment(spec, 8, 12, rng(7)))
    assert not torch.equal(a, spec_augment(spec, 8, 12, rng(8)))


def test_spec_augment_masks_are_contiguous_bands_with_fill():
    spec = torch.randn(64, 20, 30) + 10  # never equal to the fill by chance
    original = spec.clone()
    out = spec_augment(spec, 8, 12, rng(0), fill=-3.5)
    assert torch.equal(spec, original)  # not in place
    masked = out == -3.5
    torch.testing.assert_close(out[~masked], spec[~masked])  # the rest is untouched
    freq_rows = masked.all(dim=2)  # (B, F): whole frequency rows masked
    time_cols = masked.all(dim=1)  # (B, T): whole time columns masked
    assert torch.equal(masked, freq_rows[:, :, None] | time_cols[:, None, :])  # only whole bands
    for b in range(64):
        for row, limit in ((freq_rows[b], 8), (time_cols[b], 12)):
            bands = runs(row)
            assert len(bands) <= 1
            assert all(stop - start < limit for start, stop in bands)
    # Per-example: the masks differ between clips of the same batch.
    assert len({tuple(r.nonzero().flatten().tolist()) for r in time_cols}) > 10


def test_spec_augment_widths_over_many_draws():
    spec = torch.ones(2000, 10, 16)
    out = spec_augment(spec, 4, 40, rng(3))  # 40 > 16 frames: clamped to the axis
    masked = out == 0
    freq_width = masked.all(dim=2).sum(dim=1)
    time_width = masked.all(dim=1).sum(dim=1)
    assert set(freq_width.tolist()) == {0, 1, 2, 3}  # floor(u * 4): every width below 4, none wider
    assert int(time_width.max()) <= 15 and int(time_width.max()) >= 14


def test_spec_augment_several_masks_and_axis_switches():
    spec = torch.ones(200, 32, 40)
    one = (spec_augment(spec, 10, 0, rng(1), freq_masks=1) == 0).all(dim=2).sum(dim=1).float().mean()
    two = (spec_augment(spec, 10, 0, rng(1), freq_masks=2) == 0).all(dim=2).sum(dim=1).float().mean()
    assert two > one * 1.4  # two masks per clip cover more (PANNs uses 2)
    time_only = spec_augment(spec, 0, 10, rng(1)) == 0
    assert not bool(time_only.all(dim=2).any()) and bool(time_only.all(dim=1).any())


def test_spec_augment_zero_widths_are_identity():
    spec = torch.randn(3, 8, 9)
    assert torch.equal(spec_augment(spec, 0, 0, rng()), spec)
