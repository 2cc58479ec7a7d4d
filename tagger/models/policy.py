"""What a model does with clips of any length, read from its front-end: the shortest and longest input, the
window long audio is cut into, and the spacing of frame outputs.

Models, ensembles, inference and export all ask these questions, so the answers live beside the models.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputPolicy:
    """How a model takes clips of any length.

    min_samples: shorter clips are zero-padded at the end to this (the network's pooling or patching needs it).
    max_samples: the longest clip the network takes in one pass (PaSST's time embedding, HTS-AT's 1024 frames);
        longer audio is scored in windows. None: any length (fully convolutional models).
    window_samples: the window used when a file must be cut: the fixed input length of AST/PSLA (they crop or
        pad everything to it), else max_samples. None for fully convolutional models.
    """

    min_samples: int
    max_samples: int | None
    window_samples: int | None


def input_policy(model) -> InputPolicy:
    """Derive the policy from the model's front-end and its `min_input_frames` / `max_input_frames` (an
    ensemble derives its own from its members')."""
    own = getattr(model, "input_policy", None)
    if callable(own):
        return own()
    frontend = model.frontend
    min_samples = _samples_for_frames(frontend, model.min_input_frames)
    max_frames = model.max_input_frames
    max_samples = None if max_frames is None else _max_samples_for_frames(frontend, max_frames)
    fixed = getattr(frontend.config, "target_length", None)
    window = max_samples
    if fixed is not None:  # Kaldi fbank front-ends crop/pad to target_length frames: that many frames of audio
        window = _samples_for_frames_unfixed(frontend, fixed)
    return InputPolicy(min_samples=min_samples, max_samples=max_samples, window_samples=window)


def _samples_for_frames(frontend, frames: int) -> int:
    """Fewest samples the front-end accepts that give at least `frames` frames (num_frames is monotone)."""
    low = frontend.min_samples
    if frontend.num_frames(low) >= frames:
        return low
    high = low * 2
    while frontend.num_frames(high) < frames:
        high *= 2
    while low + 1 < high:
        mid = (low + high) // 2
        low, high = (low, mid) if frontend.num_frames(mid) >= frames else (mid, high)
    return high


def _max_samples_for_frames(frontend, frames: int) -> int:
    """Most samples giving at most `frames` frames."""
    return _samples_for_frames(frontend, frames + 1) - 1


def _samples_for_frames_unfixed(frontend, frames: int) -> int:
    """Samples spanned by `frames` frames of a front-end that pads/crops to a fixed length (snip-edges framing)."""
    return frontend.frame_length + (frames - 1) * frontend.frame_shift


def frame_seconds(model) -> float:
    """Spacing of a model's frame outputs: one hop of its front-end."""
    config = model.frontend.config
    hop = getattr(config, "hop_length", None)
    if hop is None:
        hop = int(config.sample_rate * config.frame_shift_ms / 1000)
    return hop / config.sample_rate
