"""Data augmentation for training: mixup (waveform and spectrogram level), SpecAugment, time roll, random gain.

Every random draw comes from an explicit `numpy.random.Generator`, never global state, so a trainer that seeds
each step or item from (seed, epoch, position) replays exactly the same augmentation after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tagger.errors import TaggerError

__all__ = [
    "MIX_KINDS",
    "MixPlan",
    "apply_mix",
    "draw_mix_lambda",
    "draw_spec_mixup",
    "mix_targets",
    "mix_waveforms",
    "random_gain",
    "spec_augment",
    "time_roll",
    "time_roll_by",
]

MIX_KINDS = ("perm", "pairs", "flip")


# ------------------------------------------------------------------------------------ waveform level


def random_gain(wave: np.ndarray, max_db: int, rng: np.random.Generator) -> np.ndarray:
    """Scale by an integer gain in [-max_db, max_db - 1] dB: the asymmetric range of PaSST `randint(14) - 7`."""
    if max_db <= 0:
        return wave
    db = int(rng.integers(2 * max_db)) - max_db
    # A Python float keeps the wave's dtype (a numpy float64 scalar would promote float32 under NEP 50).
    return wave * float(10.0 ** (db / 20.0))


def time_roll(wave: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Circular shift along time by an integer in [-max_shift, max_shift] samples (PaSST `roll`)."""
    return time_roll_by(wave, max_shift, rng)[0]


def time_roll_by(wave: np.ndarray, max_shift: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """`time_roll` and the shift it drew (sample i of the result is sample i - shift, modulo the length), so that
    strong labels can follow it. Draws the same random numbers as `time_roll`."""
    if max_shift <= 0:
        return wave, 0
    shift = int(rng.integers(-max_shift, max_shift + 1))
    return np.roll(wave, shift, axis=-1), shift


def mix_waveforms(first: np.ndarray, second: np.ndarray, lam: float) -> np.ndarray:
    """AST/PaSST waveform mixup: `second` fitted to `first`'s length, both and the mix mean-subtracted."""
    first = np.asarray(first, dtype=np.float32)
    second = np.asarray(second, dtype=np.float32)
    length = first.shape[-1]
    if second.shape[-1] >= length:
        second = second[..., :length]
    else:
        pad = [(0, 0)] * (second.ndim - 1) + [(0, length - second.shape[-1])]
        second = np.pad(second, pad)
    # Zero-padding happens before the mean is removed, as in the official datasets.
    first = first - first.mean(axis=-1, keepdims=True)
    second = second - second.mean(axis=-1, keepdims=True)
    mix = lam * first + (1.0 - lam) * second
    return (mix - mix.mean(axis=-1, keepdims=True)).astype(np.float32)


def draw_mix_lambda(alpha: float, rng: np.random.Generator, take_max: bool) -> float:
    """lambda ~ Beta(alpha, alpha); `take_max` keeps the first clip dominant (PaSST)."""
    lam = float(rng.beta(alpha, alpha))
    return max(lam, 1.0 - lam) if take_max else lam


# ------------------------------------------------------------------------------- spectrogram mixup


@dataclass
class MixPlan:
    """Which rows are mixed with which: output row i = lam[i] * x[first[i]] + (1 - lam[i]) * x[second[i]].

    A plan is drawn once per batch and applied to features, labels and teacher targets alike.
    """

    first: Tensor  # (B',) long
    second: Tensor  # (B',) long
    lam: Tensor  # (B',) float32
    mix_targets: bool  # False reproduces HTS-AT, whose loss uses the unmixed targets


def draw_spec_mixup(batch: int, kind: str, alpha: float, rng: np.random.Generator) -> MixPlan:
    """A batch-level mixup plan in the style of PaSST/EfficientAT ("perm"), PANNs ("pairs") or HTS-AT ("flip")."""
    if kind not in MIX_KINDS:
        raise TaggerError(f"unknown spectrogram mixup kind {kind!r}; choose one of {', '.join(MIX_KINDS)}")
    if batch < 1:
        raise TaggerError(f"spectrogram mixup needs a non-empty batch, got {batch}")
    index = np.arange(batch)
    if kind == "perm":
        first, second = index, rng.permutation(batch)
        lam = rng.beta(alpha, alpha, size=batch)
        lam = np.maximum(lam, 1.0 - lam)
        mix = True
    elif kind == "pairs":
        if batch % 2:
            raise TaggerError(f"spectrogram mixup 'pairs' mixes clips two by two; the batch of {batch} is odd")
        first, second = index[0::2], index[1::2]
        lam = rng.beta(alpha, alpha, size=batch // 2)
        mix = True
    else:  # flip
        first, second = index, index[::-1].copy()
        lam = rng.beta(alpha, alpha, size=batch)
        mix = False
    return MixPlan(
        first=torch.as_tensor(first, dtype=torch.long),
        second=torch.as_tensor(second, dtype=torch.long),
        lam=torch.as_tensor(lam, dtype=torch.float32),
        mix_targets=mix,
    )


def apply_mix(x: Tensor, plan: MixPlan) -> Tensor:
    """Mix rows of `x` (B, ...) by the plan; lam broadcasts over the trailing dims, dtype and device are kept."""
    first = plan.first.to(x.device)
    second = plan.second.to(x.device)
    lam = plan.lam.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return lam * x[first] + (1.0 - lam) * x[second]


def mix_targets(y: Tensor, plan: MixPlan) -> Tensor:
    """Targets (B, C) for the mixed batch: mixed like the inputs, or just the first rows when the plan says not to."""
    if not plan.mix_targets:
        return y[plan.first.to(y.device)]
    return apply_mix(y, plan)


def mix_known(y: Tensor, known: Tensor, plan: MixPlan) -> tuple[Tensor, Tensor]:
    """Targets that only some rows have (teacher targets, frame targets), mixed like the labels, and the rows that
    still have them: a mixed row needs both of its sources to."""
    first = plan.first.to(known.device)
    if plan.mix_targets:
        known = known[first] & known[plan.second.to(known.device)]
    else:
        known = known[first]
    return mix_targets(y, plan), known


# ------------------------------------------------------------------------------------------ SpecAugment


def _band_masks(batch: int, size: int, max_width: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(batch, size) bool: the union of `count` random bands per row, torchaudio's width/start semantics. Made on
    the host, where the random numbers are, and sent to the device once (see spec_augment)."""
    max_width = min(max_width, size)
    positions = np.arange(size)
    mask = np.zeros((batch, size), dtype=bool)
    for _ in range(count):
        width = np.floor(rng.random(batch) * max_width).astype(np.int64)
        start = np.floor(rng.random(batch) * (size - width)).astype(np.int64)
        mask |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
    return mask


def _to(mask: np.ndarray, device: torch.device) -> Tensor:
    """A host mask on the device; on CUDA through pinned memory without blocking, so the step never waits."""
    tensor = torch.from_numpy(mask)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def spec_augment(spec: Tensor, freqm: int, timem: int, rng: np.random.Generator, freq_masks: int = 1,
                 time_masks: int = 1, fill: float = 0.0) -> Tensor:
    """Frequency and time masks drawn independently per clip (as AST's per-item torchaudio masking, PANNs stripes).

    spec is (B, F, T). A mask's width is floor(u * W), so at most W - 1 (W clamped to the axis size), placed at
    floor(u2 * (size - width)). Masked cells get `fill`: AST masks before normalisation, so its normalised
    equivalent is passed here; PaSST masks with 0. The input is not modified.
    """
    if spec.dim() != 3:
        raise TaggerError(f"spec_augment expects (batch, freq, time), got shape {tuple(spec.shape)}")
    batch, n_freq, n_time = spec.shape
    use_freq = freqm > 0 and freq_masks > 0
    use_time = timem > 0 and time_masks > 0
    if not (use_freq or use_time):
        return spec
    bands = _band_masks(batch, n_freq, freqm, freq_masks, rng) if use_freq else np.zeros((batch, n_freq), bool)
    frames = _band_masks(batch, n_time, timem, time_masks, rng) if use_time else np.zeros((batch, n_time), bool)
    mask = _to(bands, spec.device)[:, :, None] | _to(frames, spec.device)[:, None, :]
    return spec.masked_fill(mask, fill)
