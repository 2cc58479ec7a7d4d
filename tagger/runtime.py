"""A checkpoint loaded for scoring audio: device, precision, input-length policy, probabilities out.

predict, evaluate and the benchmarks all score audio through `Tagger`, so they share one answer to "what does
this family do with a clip of this length" and one rule for turning logits into probabilities.
"""

from __future__ import annotations

import os
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tagger.errors import TaggerError
from tagger.labels import LabelSet

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_CHECKPOINT_ENV = "TAGGER_MODEL"
# Families whose networks are convolutions + BatchNorm: FastInference (BN folded, fused oneDNN) pays off on CPU.
_FAST_FAMILIES = ("panns", "psla", "efficientat")
_FAST_AFTER = 2  # trace a shape on its second use: one-off shapes (a single file) skip the tracing cost


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
    """Derive the policy from the model's front-end and its `min_input_frames` / `max_input_frames`."""
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


@dataclass
class Scores:
    """Model outputs for a batch, as numpy: logits and probabilities (B, C), embedding (B, D), frame
    probabilities (B, T, C) or None."""

    logits: np.ndarray
    probabilities: np.ndarray
    embedding: np.ndarray
    frame_probabilities: np.ndarray | None


class Tagger:
    """A model in eval mode on a device, scoring float32 waveforms at its own sample rate."""

    def __init__(self, model, labels: LabelSet, task: str, device: str = "auto", precision: str = "fp32",
                 fast: bool = True, source: str = ""):
        if precision not in PRECISIONS:
            raise TaggerError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.labels, self.task, self.precision, self.source = labels, task, precision, source
        self.policy = input_policy(model)
        self._fast = None
        if fast and precision == "fp32" and self.device.type == "cpu" and model.family in _FAST_FAMILIES:
            from tagger.models.inference import FastInference

            self._fast = FastInference(self.model)
        self._shape_uses: Counter = Counter()

    @classmethod
    def load(cls, path: str | Path | None, device: str = "auto", precision: str = "fp32", fast: bool = True) -> Tagger:
        from tagger.checkpoint import load_checkpoint

        path = default_checkpoint() if path is None else Path(path)
        model, meta = load_checkpoint(path)
        return cls(model, meta["labels"], meta.get("task", "multilabel"), device, precision, fast, str(path))

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def frame_level(self) -> bool:
        """Whether the model gives frame_logits: from the registry, or a `frame_level` attribute."""
        from tagger.models import model_entry

        if self.model.arch:
            return model_entry(self.model.arch).frame_level
        return bool(getattr(self.model, "frame_level", False))

    @property
    def frame_seconds(self) -> float:
        """Spacing of frame_probabilities rows: one front-end hop."""
        config = self.model.frontend.config
        hop = getattr(config, "hop_length", None)
        if hop is None:
            hop = int(config.sample_rate * config.frame_shift_ms / 1000)
        return hop / config.sample_rate

    def pad(self, wave: np.ndarray) -> np.ndarray:
        """Zero-pad the end of a too-short clip up to the policy's minimum, as the windowed official scripts do."""
        missing = self.policy.min_samples - wave.shape[-1]
        return wave if missing <= 0 else np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, missing)])

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid for multi-label checkpoints, softmax over classes for single-label ones."""
        logits = logits.float()
        return torch.softmax(logits, dim=-1) if self.task == "multiclass" else torch.sigmoid(logits)

    @torch.inference_mode()
    def __call__(self, waves: np.ndarray, frames: bool = True) -> Scores:
        """Score a (B, S) batch of equal-length waveforms (S >= policy.min_samples).

        frames=False skips the (B, T, C) frame probabilities of frame-level models when nobody reads them.
        """
        wave = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
        with self._autocast():
            out = self._forward(wave)
        wanted = frames and out.frame_logits is not None
        frames = self.probabilities(out.frame_logits).cpu().numpy() if wanted else None
        logits = out.logits.float()
        return Scores(logits.cpu().numpy(), self.probabilities(logits).cpu().numpy(),
                      out.embedding.float().cpu().numpy(), frames)

    def _forward(self, wave: torch.Tensor):
        if self._fast is None:
            return self.model(wave)
        self._shape_uses[tuple(wave.shape)] += 1
        if self._shape_uses[tuple(wave.shape)] < _FAST_AFTER:
            return self.model(wave)
        return self._fast(wave)

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise TaggerError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TaggerError("--device cuda: no CUDA device is available here; use --device cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def default_checkpoint() -> Path:
    """$TAGGER_MODEL, else checkpoints/default.pt beside the package; a clear message when neither exists."""
    named = os.environ.get(DEFAULT_CHECKPOINT_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise TaggerError(f"${DEFAULT_CHECKPOINT_ENV}={named}: checkpoint not found; fix or unset it")
        return path
    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "default.pt"
    if shipped.is_file():
        return shipped
    raise TaggerError(
        "no --model given and no default checkpoint ships with tagger: convert official weights with "
        "`tagger import-checkpoint FAMILY FILE --out model.pt` (docs/models.md) or train one with `tagger train`, "
        f"then pass --model model.pt (or set ${DEFAULT_CHECKPOINT_ENV})"
    )
