"""The input plan: the length an export is made and checked at, and the test waveform it is run on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tagger.errors import TaggerError
from tagger.export.describe import _members, _what
from tagger.export.graph import _GraphFrontend, graph_frontend

DEFAULT_SECONDS = 10.0


def parity_waveform(sample_rate: int, samples: int, batch: int = 2, seed: int = 0) -> Tensor:
    """A deterministic (batch, samples) float32 test signal: a different chord plus quiet noise per clip."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    clips = []
    for index in range(batch):
        freqs = torch.tensor([220.0, 440.0 * 1.25, 880.0 * 1.5]) * (1 + 0.1 * index)
        chord = torch.sin(2 * math.pi * freqs[:, None] * t).sum(0) / 3
        noise = 0.02 * torch.randn(samples, generator=gen, dtype=torch.float64)
        clips.append(0.4 * chord + noise)
    return torch.stack(clips).float()


@dataclass
class _Plan:
    """The input lengths an export takes and is checked at."""

    samples: int
    min_samples: int
    max_samples: int | None
    fixed_frames: int | None


def _samples_for(frontend: _GraphFrontend, frames: int) -> int:
    """The fewest samples giving at least `frames` raw frames (binary search: raw_frames is monotonic)."""
    low, high = 1, max(2, frames)
    while frontend.raw_frames(high) < frames:
        high *= 2
    while low < high:
        middle = (low + high) // 2
        if frontend.raw_frames(middle) >= frames:
            high = middle
        else:
            low = middle + 1
    return low


def _plan(model: nn.Module, frontend: _GraphFrontend, seconds: float | None) -> _Plan:
    from tagger.models.policy import input_policy

    rate = model.sample_rate
    fixed = frontend.fixed_frames()
    # An ensemble's own front-end is the identity; a member that pads or crops to a fixed frame count sets
    # its natural length (the ensemble's policy window).
    padded = fixed is not None or any(graph_frontend(m.frontend).fixed_frames() is not None
                                      for m in _members(model))
    policy = input_policy(model)  # the same length limits predict and evaluate use
    min_samples, max_samples = max(policy.min_samples, 2), policy.max_samples
    if seconds is None:
        samples = int(round(DEFAULT_SECONDS * rate))
        if padded and policy.window_samples is not None:  # the model's natural length: the frames it pads to
            samples = policy.window_samples
        if max_samples is not None:
            samples = min(samples, max_samples)
    else:
        if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
            raise TaggerError(f"--seconds must be a positive number, got {seconds!r}")
        samples = int(round(seconds * rate))
    if samples < min_samples or (max_samples is not None and samples > max_samples):
        span = f"{min_samples / rate:.3f} s" + (f" to {max_samples / rate:.3f} s" if max_samples else " or more")
        raise TaggerError(f"--seconds {samples / rate:g} is outside what {_what(model)} accepts: {span}")
    return _Plan(samples, min_samples, max_samples, fixed)
