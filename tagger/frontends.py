"""Batched audio front-ends reproducing the official AST/PSLA, PaSST/EfficientAT, PANNs/HTS-AT and CED features."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tagger.errors import TaggerError

__all__ = [
    "FRONTENDS",
    "CedMel",
    "CedMelConfig",
    "KALDI_PRESETS",
    "KaldiFbank",
    "KaldiFbankConfig",
    "LogMel",
    "LogMelConfig",
    "PasstMel",
    "PasstMelConfig",
    "build_frontend",
    "fit_frames",
    "frontend_to_dict",
    "htk_mel_filters",
    "kaldi_mel_banks",
    "normalize",
]

# Kaldi (and torchaudio.compliance.kaldi) floor the log at float32 eps whatever the dtype.
_KALDI_LOG_FLOOR = float(torch.finfo(torch.float32).eps)
# Samples (frames x FFT size) per block of frames: the working set of each block stays in cache.
_BLOCK_SAMPLES = 1 << 19
# Mel filters per matmul in the banded mel product: fewer zeros multiplied, few enough BLAS calls.
_BAND_ROWS = 16


# --------------------------------------------------------------------------------------------- helpers


def _require(ok: bool, message: str) -> None:
    """Raise the user-facing error when a setting is out of range."""
    if not ok:
        raise TaggerError(message)


def _resolve_config(config_cls: type, config: Any, overrides: dict[str, Any], name: str) -> Any:
    """A config from the defaults or a given one, with keyword overrides checked against its fields."""
    if config is None:
        config = config_cls()
    elif not isinstance(config, config_cls):
        raise TaggerError(f"{name}: config must be a {config_cls.__name__}, got {type(config).__name__}")
    valid = [f.name for f in fields(config_cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TaggerError(f"{name}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return replace(config, **overrides) if overrides else config


def _check_wave(wave: Any, name: str) -> None:
    """Reject what would otherwise fail deep inside torch or silently give wrong features."""
    if not isinstance(wave, Tensor):
        raise TaggerError(f"{name}: expected a torch.Tensor waveform, got {type(wave).__name__}")
    if wave.ndim != 2:
        raise TaggerError(
            f"{name}: expected a (batch, samples) waveform, got shape {tuple(wave.shape)}; "
            "use wave.unsqueeze(0) for a single clip"
        )
    if not wave.is_floating_point():
        raise TaggerError(f"{name}: expected a floating-point waveform in [-1, 1], got {wave.dtype}")


def _power(spec: Tensor) -> Tensor:
    """|X|^2 as re^2 + im^2, squaring the transform's own storage (it is a temporary) when autograd allows."""
    parts = torch.view_as_real(spec)
    parts = parts.square() if parts.requires_grad else parts.square_()
    return parts[..., 0] + parts[..., 1]


def _block_length(batch: int, total: int, n_fft: int) -> int:
    """Frames per clip in a block: about _BLOCK_SAMPLES samples over the whole batch, at least one frame."""
    return max(1, min(total, _BLOCK_SAMPLES // (n_fft * max(batch, 1))))


def _blocks(batch: int, total: int, n_fft: int) -> Iterator[slice]:
    """Time blocks that bound the temporaries.

    A 16-clip batch of 10 s clips would otherwise make every intermediate tens of MB, and the batch would
    run slower than one clip at a time (memory traffic instead of cache hits). Each block is one set of
    ops over every clip; the number of blocks follows the amount of audio, not the number of clips.
    """
    step = _block_length(batch, total, n_fft)
    return (slice(start, min(total, start + step)) for start in range(0, total, step))


def _reflect_padded(signal: Callable[[int, int], Tensor], lo: int, hi: int, length: int) -> Tensor:
    """Samples lo..hi-1 of a signal of `length` reflect-padded at both ends (no edge repeat), as torch.stft
    pads with center=True; signal(a, b) gives samples a..b-1 of the unpadded signal for the whole batch.

    Only the blocks at the two ends need the reflection, and only for n_fft // 2 samples: a slice for the
    rest, and no padded copy of the whole batch.
    """
    if lo >= 0 and hi <= length:
        return signal(lo, hi)
    first = min(max(lo, 0), 2 * length - 1 - hi if hi > length else length)
    stop = max(min(hi, length), 1 - lo if lo < 0 else 0)
    source = signal(first, stop)
    parts = []
    if lo < 0:
        parts.append(source[:, 1 - first : 1 - lo - first].flip(-1))
    parts.append(source[:, max(lo, 0) - first : min(hi, length) - first])
    if hi > length:
        parts.append(source[:, 2 * length - 1 - hi - first : length - 1 - first].flip(-1))
    return torch.cat(parts, -1)


def _banded_mm(weight: Tensor, bands: list[tuple[int, int, int, int]], power: Tensor, out: Tensor | None) -> Tensor:
    """weight (F, K) @ power (N, K).T -> (F, N), multiplying only each band's non-zero block.

    A mel matrix is mostly zeros (a Kaldi 128 x 257 one is 98 % zeros); skipping them more than halves
    the cost of the product, the largest after the FFT. out=None (autograd) builds the result by
    concatenation instead of writing into preallocated storage.
    """
    if out is None:
        rows = [
            torch.mm(weight[first:end, lo:hi], power[:, lo:hi].T)
            if hi > lo
            else power.new_zeros(end - first, power.shape[0])
            for first, end, lo, hi in bands
        ]
        return torch.cat(rows)
    for first, end, lo, hi in bands:
        if hi > lo:
            torch.mm(weight[first:end, lo:hi], power[:, lo:hi].T, out=out[first:end])
        else:
            out[first:end].zero_()
    return out


def _fft_window(window: Tensor, n_fft: int) -> Tensor:
    """A win_length window zero-padded to n_fft on both sides, centred as torch.stft and librosa do."""
    left = (n_fft - window.shape[0]) // 2
    return nn.functional.pad(window, (left, n_fft - window.shape[0] - left))


def kaldi_mel_banks(
    num_bins: int,
    n_fft: int,
    sample_rate: float,
    low_freq: float,
    high_freq: float,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Kaldi triangular mel filters, (num_bins, n_fft // 2), in float32 as Kaldi and torchaudio compute them.

    Mel is 1127·ln(1 + f/700); the filters are equally spaced in mel between low_freq and high_freq, and
    high_freq <= 0 counts down from Nyquist (Kaldi's convention). Like Kaldi's, the matrix has no column for
    the Nyquist bin that rfft adds; callers pad a zero column.
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq = high_freq + nyquist
    _require(num_bins >= 1, f"mel filters: num_bins must be >= 1, got {num_bins}")
    _require(
        0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq,
        f"mel filters: need 0 <= low_freq < high_freq <= {nyquist:g} Hz (Nyquist), "
        f"got low {low_freq:g}, high {high_freq:g}",
    )
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins, dtype=torch.float32, device=device).unsqueeze(1)
    left = mel_low + index * delta
    centre = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    freqs = (sample_rate / n_fft) * torch.arange(n_fft // 2, dtype=torch.float32, device=device)
    mel = 1127.0 * (1.0 + freqs / 700.0).log()
    rising = (mel - left) / (centre - left)
    falling = (right - mel) / (right - centre)
    return torch.clamp_min(torch.minimum(rising, falling), 0.0)


def normalize(spec: Tensor, mean: float, std: float, std_scale: float = 1.0) -> Tensor:
    """Dataset normalisation (spec - mean) / (std * std_scale): AST uses std_scale 2, PSLA 1."""
    _require(std > 0 and std_scale > 0, f"normalize: std and std_scale must be > 0, got {std}, {std_scale}")
    return (spec - mean) / (std * std_scale)


def fit_frames(spec: Tensor, target_length: int) -> Tensor:
    """Zero-pad the end or cut the tail of the last (time) axis to target_length, as AST/PSLA loaders do."""
    _require(
        isinstance(target_length, numbers.Integral) and not isinstance(target_length, bool) and target_length > 0,
        f"fit_frames: target_length must be a positive int, got {target_length!r}",
    )
    frames = spec.shape[-1]
    if frames == target_length:
        return spec
    if frames > target_length:
        return spec[..., :target_length]
    return nn.functional.pad(spec, (0, int(target_length) - frames))


def _bands(weight: Tensor, rows: int = _BAND_ROWS) -> list[tuple[int, int, int, int]]:
    """(first filter, end filter, first bin, end bin) per group of filters: their non-zero block."""
    nonzero = (weight != 0).cpu()
    bands = []
    for first in range(0, weight.shape[0], rows):
        end = min(first + rows, weight.shape[0])
        used = nonzero[first:end].any(0).nonzero().flatten()
        lo, hi = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, 0)
        bands.append((first, end, lo, hi))
    return bands


# --------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class KaldiFbankConfig:
    """Kaldi fbank as AST and PSLA call torchaudio.compliance.kaldi.fbank, plus their dataset steps."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0
    remove_dc_offset: bool = True
    subtract_mean: bool = False  # the AST/PSLA training loaders remove the clip mean before the fbank
    target_length: int | None = None
    mean: float | None = None
    std: float | None = None
    std_scale: float = 1.0

    def __post_init__(self) -> None:
        _require(self.sample_rate > 0, f"kaldi-fbank: sample_rate must be > 0, got {self.sample_rate}")
        _require(self.num_mel_bins >= 1, f"kaldi-fbank: num_mel_bins must be >= 1, got {self.num_mel_bins}")
        _require(
            int(self.sample_rate * self.frame_length_ms * 0.001) >= 2
            and int(self.sample_rate * self.frame_shift_ms * 0.001) >= 1,
            "kaldi-fbank: frame_length_ms / frame_shift_ms give frames shorter than 2 / 1 samples",
        )
        _require(
            self.target_length is None or (isinstance(self.target_length, int) and self.target_length > 0),
            f"kaldi-fbank: target_length must be a positive int or None, got {self.target_length!r}",
        )
        _require(
            (self.mean is None) == (self.std is None),
            "kaldi-fbank: set both mean and std (dataset statistics) or neither",
        )
        _require(self.std is None or self.std > 0, f"kaldi-fbank: std must be > 0, got {self.std}")
        _require(self.std_scale > 0, f"kaldi-fbank: std_scale must be > 0, got {self.std_scale}")


@dataclass(frozen=True)
class PasstMelConfig:
    """PaSST / EfficientAT AugmentMelSTFT settings (SpecAugment lives in the augmentation module)."""

    sample_rate: int = 32000
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    preemphasis: float = 0.97
    fmin: float = 0.0
    fmax: float | None = None
    fmin_aug_range: int = 10
    fmax_aug_range: int = 2000
    log_offset: float = 1e-5
    norm_shift: float = 4.5
    norm_scale: float = 5.0

    def __post_init__(self) -> None:
        _require(self.sample_rate > 0, f"passt-mel: sample_rate must be > 0, got {self.sample_rate}")
        _require(self.n_mels >= 1, f"passt-mel: n_mels must be >= 1, got {self.n_mels}")
        _require(
            0 < self.win_length <= self.n_fft and self.hop_length > 0,
            f"passt-mel: need 0 < win_length <= n_fft and hop_length > 0, got {self.win_length}, "
            f"{self.n_fft}, {self.hop_length}",
        )
        _require(self.fmin_aug_range >= 0 and self.fmax_aug_range >= 0, "passt-mel: aug ranges must be >= 0")
        _require(self.log_offset > 0, f"passt-mel: log_offset must be > 0, got {self.log_offset}")
        _require(self.norm_scale != 0, "passt-mel: norm_scale must not be 0")
        nyquist = self.sample_rate / 2
        fmax = self.eval_fmax
        top = fmax + self.fmax_aug_range // 2
        bottom = fmax + self.fmax_aug_range // 2 - max(self.fmax_aug_range - 1, 0)
        _require(
            0 <= self.fmin and self.fmin + max(self.fmin_aug_range - 1, 0) < bottom and top <= nyquist,
            f"passt-mel: the jittered band [{self.fmin:g}, {top:g}] Hz must lie within 0..{nyquist:g} Hz "
            "with fmin below fmax",
        )

    @property
    def eval_fmax(self) -> float:
        """fmax=None means Nyquist minus half the jitter range (15 kHz at 32 kHz); the official default."""
        if self.fmax is None:
            return self.sample_rate // 2 - self.fmax_aug_range // 2
        return self.fmax


@dataclass(frozen=True)
class LogMelConfig:
    """torchlibrosa Spectrogram + LogmelFilterBank settings used by PANNs and HTS-AT."""

    label: ClassVar[str] = "panns-logmel"  # the front-end's name, for messages

    sample_rate: int = 32000
    n_fft: int = 1024
    hop_length: int = 320
    win_length: int = 1024
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float | None = 14000.0
    amin: float = 1e-10
    ref: float = 1.0
    top_db: float | None = None

    def __post_init__(self) -> None:
        name = self.label
        _require(self.sample_rate > 0, f"{name}: sample_rate must be > 0, got {self.sample_rate}")
        _require(self.n_mels >= 1, f"{name}: n_mels must be >= 1, got {self.n_mels}")
        _require(
            0 < self.win_length <= self.n_fft and self.hop_length > 0,
            f"{name}: need 0 < win_length <= n_fft and hop_length > 0, got {self.win_length}, "
            f"{self.n_fft}, {self.hop_length}",
        )
        fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
        _require(
            0 <= self.fmin < fmax <= self.sample_rate / 2,
            f"{name}: need 0 <= fmin < fmax <= {self.sample_rate / 2:g} Hz, got {self.fmin}, {fmax}",
        )
        _require(self.amin > 0 and self.ref > 0, f"{name}: amin and ref must be > 0")
        _require(self.top_db is None or self.top_db >= 0, f"{name}: top_db must be >= 0, got {self.top_db}")


@dataclass(frozen=True)
class CedMelConfig(LogMelConfig):
    """CED's torchaudio MelSpectrogram (HTK mel, no filter normalisation) + AmplitudeToDB(top_db=120) settings."""

    label: ClassVar[str] = "ced-mel"

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 160
    win_length: int = 512
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = 8000.0
    top_db: float | None = 120.0


KALDI_PRESETS: dict[str, KaldiFbankConfig] = {
    "ast-audioset": KaldiFbankConfig(
        target_length=1024, mean=-4.2677393, std=4.5689974, std_scale=2.0, subtract_mean=True
    ),
    "ast-esc50": KaldiFbankConfig(target_length=512, mean=-6.6268077, std=5.358466, std_scale=2.0, subtract_mean=True),
    "ast-speechcommands": KaldiFbankConfig(
        target_length=128, mean=-6.845978, std=5.5654526, std_scale=2.0, subtract_mean=True
    ),
    "psla-audioset": KaldiFbankConfig(target_length=1056, mean=-4.6476, std=4.5699, std_scale=1.0, subtract_mean=True),
    "psla-fsd50k": KaldiFbankConfig(target_length=3000, mean=-4.6476, std=4.5699, std_scale=1.0, subtract_mean=True),
}


# --------------------------------------------------------------------------------------------- modules


class _FrontEnd(nn.Module):
    """Shared plumbing: (B, S) float waveform in, (B, F, T) features out, in the dtype of the buffers.

    Every front-end works on blocks of frames (see _blocks): the per-block function returns (F, B * n)
    features for n frames of every clip, and _assemble writes them into the (B, F, T) result.
    """

    name: str = ""
    config: Any

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def min_samples(self) -> int:
        """The shortest clip forward() accepts."""
        raise NotImplementedError

    def _check_length(self, num_samples: int) -> None:
        _require(
            num_samples >= self.min_samples,
            f"{self.name}: clips of {num_samples} samples are too short; need >= {self.min_samples}",
        )

    def _prepare(self, wave: Tensor, dtype: torch.dtype) -> Tensor:
        """Validate, then cast to the buffers' dtype: float64 in, float32 out unless the module is double."""
        _check_wave(wave, self.name)
        self._check_length(wave.shape[-1])
        return wave.to(dtype)

    @staticmethod
    def _assemble(
        wave: Tensor, bins: int, total: int, n_fft: int, block: Callable[[slice, Tensor | None], Tensor]
    ) -> Tensor:
        """(B, bins, total) from block(part, scratch) -> (bins, B * n), for consecutive slices of frames."""
        batch = wave.shape[0]
        out = wave.new_empty(batch, bins, total)
        if batch == 0:  # an empty batch (the tail of a filtered dataset) gives empty features
            return out
        grad = wave.requires_grad
        scratch = None if grad else wave.new_empty(bins, batch * _block_length(batch, total, n_fft))
        for part in _blocks(batch, total, n_fft):
            size = part.stop - part.start
            chunk = block(part, None if scratch is None else scratch[:, : batch * size])
            out[:, :, part] = chunk.view(bins, batch, size).transpose(0, 1)
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self.config).items())


class KaldiFbank(_FrontEnd):
    """Kaldi log-mel filterbank (AST, PSLA), vectorised over the batch, equal to torchaudio's per-clip fbank.

    The per-frame arithmetic follows Kaldi's order exactly (DC removal, pre-emphasis, symmetric Hann, zero
    padding to a power of two, power spectrum, mel, log floored at float32 eps) because low mel bands hold
    single FFT bins whose log is very sensitive to rounding. Then, as the official AST/PSLA loaders do: pad
    with zeros / crop to target_length, and only then normalise with (x - mean) / (std * std_scale), so
    padded frames come out as -mean / (std * std_scale), not 0.
    """

    name = "kaldi-fbank"

    def __init__(self, config: KaldiFbankConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = c = _resolve_config(KaldiFbankConfig, config, overrides, self.name)
        self.frame_length = int(c.sample_rate * c.frame_length_ms * 0.001)
        self.frame_shift = int(c.sample_rate * c.frame_shift_ms * 0.001)
        self.n_fft = 1 << (self.frame_length - 1).bit_length()
        banks = kaldi_mel_banks(c.num_mel_bins, self.n_fft, c.sample_rate, c.low_freq, c.high_freq)
        weight = nn.functional.pad(banks, (0, 1))  # (F, n_fft // 2 + 1)
        self.register_buffer("mel_weight", weight, persistent=False)
        self.register_buffer("window", torch.hann_window(self.frame_length, periodic=False), persistent=False)
        self._bands = _bands(weight)

    @property
    def min_samples(self) -> int:
        return self.frame_length

    def num_frames(self, num_samples: int) -> int:
        """Frames forward() returns for clips of num_samples (snip_edges framing, then target_length)."""
        self._check_length(num_samples)
        if self.config.target_length is not None:
            return self.config.target_length
        return 1 + (num_samples - self.frame_length) // self.frame_shift

    def forward(self, wave: Tensor) -> Tensor:
        wave = self._prepare(wave, self.window.dtype)
        if self.config.subtract_mean:
            wave = wave - wave.mean(dim=-1, keepdim=True)
        frames = wave.unfold(-1, self.frame_length, self.frame_shift)  # (B, T, L), a view
        batch, total, _ = frames.shape
        if wave.requires_grad:
            buffers = None
        else:  # reused by every block; the zero tail of `padded` is the FFT's zero padding
            rows = _block_length(batch, total, self.n_fft)
            buffers = wave.new_empty(batch, rows, self.frame_length), wave.new_zeros(batch, rows, self.n_fft)

        def block(part: slice, scratch: Tensor | None) -> Tensor:
            size = part.stop - part.start
            mine = None if buffers is None else (buffers[0][:, :size], buffers[1][:, :size])
            power = _power(torch.fft.rfft(self._window_frames(frames[:, part], mine)))
            mel = _banded_mm(self.mel_weight, self._bands, power.reshape(batch * size, -1), scratch)
            if scratch is None:
                return mel.clamp_min(_KALDI_LOG_FLOOR).log()
            return mel.clamp_min_(_KALDI_LOG_FLOOR).log_()

        spec = self._assemble(wave, self.mel_weight.shape[0], total, self.n_fft, block)
        c = self.config
        if c.target_length is not None:
            spec = fit_frames(spec, c.target_length)
        if c.mean is not None:
            spec = (spec - c.mean) / (c.std * c.std_scale)
        return spec

    def _window_frames(self, frames: Tensor, buffers: tuple[Tensor, Tensor] | None) -> Tensor:
        """DC removal, pre-emphasis (first sample against itself), window and zero padding to n_fft."""
        c = self.config
        length = self.frame_length
        if buffers is None:  # autograd: the same arithmetic, out of place
            x = frames - frames.mean(-1, keepdim=True) if c.remove_dc_offset else frames
            previous = torch.cat([x[..., :1], x[..., :-1]], -1)
            x = (x - c.preemphasis * previous) * self.window
            return nn.functional.pad(x, (0, self.n_fft - length))
        scratch, padded = buffers
        x = torch.sub(frames, frames.mean(-1, keepdim=True), out=scratch) if c.remove_dc_offset else frames
        body = padded[..., :length]
        # Kaldi rounds 0.97 * x[i-1] first, then subtracts; a fused multiply-add would differ in the last bit,
        # which the log of a near-empty low band turns into 1e-3.
        torch.mul(x[..., :-1], c.preemphasis, out=body[..., 1:])
        torch.mul(x[..., :1], c.preemphasis, out=body[..., :1])
        torch.sub(x, body, out=body)
        body.mul_(self.window)
        return padded


class PasstMel(_FrontEnd):
    """PaSST / EfficientAT mel front-end (AugmentMelSTFT without SpecAugment), batched.

    Pre-emphasis y[n] = x[n+1] - 0.97 x[n] drops one sample; the STFT of torch.stft(center=True) with a
    symmetric Hann of win_length centred in n_fft and reflect padding (computed here block by block);
    power; Kaldi mel banks between fmin and fmax zero-padded to n_fft // 2 + 1 columns, fp32 product;
    log(x + 1e-5); (x + 4.5) / 5. In training mode fmin and fmax jitter once per batch like the official
    code: fmin + randint(fmin_aug_range), fmax + fmax_aug_range // 2 - randint(fmax_aug_range), drawn from
    `self.generator` when set (else torch's global RNG).
    """

    name = "passt-mel"

    def __init__(self, config: PasstMelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = c = _resolve_config(PasstMelConfig, config, overrides, self.name)
        self.generator: torch.Generator | None = None
        window = _fft_window(torch.hann_window(c.win_length, periodic=False), c.n_fft)
        self.register_buffer("window", window, persistent=False)
        basis = self._mel_basis(c.fmin, c.eval_fmax)
        self.register_buffer("mel_basis", basis, persistent=False)
        self._bands = _bands(basis)

    @property
    def min_samples(self) -> int:
        # Reflect padding needs more than n_fft // 2 samples once pre-emphasis has dropped one.
        return self.config.n_fft // 2 + 2

    def num_frames(self, num_samples: int) -> int:
        """Frames forward() returns: pre-emphasis leaves num_samples - 1, then centred frames every hop."""
        self._check_length(num_samples)
        return 1 + (num_samples - 1) // self.config.hop_length

    def draw_band(self) -> tuple[float, float]:
        """(fmin, fmax) for the next batch: the eval band, or in training mode a jittered one."""
        c = self.config
        if not self.training:
            return c.fmin, c.eval_fmax
        fmin = c.fmin + self._randint(c.fmin_aug_range)
        fmax = c.eval_fmax + c.fmax_aug_range // 2 - self._randint(c.fmax_aug_range)
        return fmin, fmax

    def forward(self, wave: Tensor) -> Tensor:
        c = self.config
        wave = self._prepare(wave, self.window.dtype)
        if self.training:
            cpu_basis = self._mel_basis(*self.draw_band())
            basis, bands = cpu_basis.to(self.window.device, self.window.dtype), _bands(cpu_basis)
        else:
            basis, bands = self.mel_basis, self._bands
        length = wave.shape[-1] - 1  # after pre-emphasis
        total = self.num_frames(wave.shape[-1])
        half = c.n_fft // 2

        def emphasized(first: int, stop: int) -> Tensor:
            return wave[:, first + 1 : stop + 1] - c.preemphasis * wave[:, first:stop]

        def block(part: slice, scratch: Tensor | None) -> Tensor:
            # Pre-emphasise only this block's stretch of the padded signal: no full-size temporaries.
            lo, hi = part.start * c.hop_length - half, (part.stop - 1) * c.hop_length + half
            frames = _reflect_padded(emphasized, lo, hi, length).unfold(-1, c.n_fft, c.hop_length)
            power = _power(torch.fft.rfft(frames * self.window)).reshape(-1, basis.shape[1])
            mel = _banded_mm(basis, bands, power, scratch)
            if scratch is None:
                return ((mel + c.log_offset).log() + c.norm_shift) / c.norm_scale
            return mel.add_(c.log_offset).log_().add_(c.norm_shift).div_(c.norm_scale)

        return self._assemble(wave, basis.shape[0], total, c.n_fft, block)

    def _randint(self, high: int) -> int:
        if high <= 1:
            return 0
        return int(torch.randint(high, (1,), generator=self.generator).item())

    def _mel_basis(self, fmin: float, fmax: float) -> Tensor:
        """(F, n_fft // 2 + 1) Kaldi banks plus a zero Nyquist column, built on the CPU as officially."""
        c = self.config
        return nn.functional.pad(kaldi_mel_banks(c.n_mels, c.n_fft, c.sample_rate, fmin, fmax), (0, 1))


class LogMel(_FrontEnd):
    """torchlibrosa log-mel (PANNs, HTS-AT): periodic Hann STFT, power, Slaney mel, 10·log10 with a floor.

    An FFT on blocks of frames replaces torchlibrosa's Conv1d DFT (the same transform, much faster); the
    Slaney filters come from librosa exactly as torchlibrosa builds them and live in the persistent buffer
    `melW` (n_fft // 2 + 1, n_mels), the layout and name of the official `logmel_extractor.melW`. top_db,
    when set, clamps per clip (as librosa does), not over the whole batch as torchlibrosa does.
    """

    name = "panns-logmel"
    config_class: ClassVar[type[LogMelConfig]] = LogMelConfig

    def __init__(self, config: LogMelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = c = _resolve_config(self.config_class, config, overrides, self.name)
        window = _fft_window(torch.hann_window(c.win_length, periodic=True), c.n_fft)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("melW", self._mel_filters())

    @property
    def min_samples(self) -> int:
        return self.config.n_fft // 2 + 1  # reflect padding needs more than n_fft // 2 samples

    def num_frames(self, num_samples: int) -> int:
        """Frames forward() returns: centred frames every hop."""
        self._check_length(num_samples)
        return 1 + num_samples // self.config.hop_length

    def forward(self, wave: Tensor) -> Tensor:
        c = self.config
        wave = self._prepare(wave, self.melW.dtype)
        length, half = wave.shape[-1], c.n_fft // 2

        def samples(first: int, stop: int) -> Tensor:
            return wave[:, first:stop]

        def block(part: slice, scratch: Tensor | None) -> Tensor:
            lo, hi = part.start * c.hop_length - half, (part.stop - 1) * c.hop_length + half
            frames = _reflect_padded(samples, lo, hi, length).unfold(-1, c.n_fft, c.hop_length)
            power = _power(torch.fft.rfft(frames * self.window)).reshape(-1, self.melW.shape[0])
            if scratch is None:
                return 10.0 * torch.log10(torch.mm(self.melW.T, power.T).clamp_min(c.amin))
            mel = torch.mm(self.melW.T, power.T, out=scratch)
            return mel.clamp_min_(c.amin).log10_().mul_(10.0)

        db = self._assemble(wave, self.melW.shape[1], self.num_frames(length), c.n_fft, block)
        offset = 10.0 * math.log10(max(c.amin, c.ref))
        if offset != 0.0:
            db = db - offset
        if c.top_db is not None:
            db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - c.top_db)
        return db

    def dft_kernels(self) -> tuple[Tensor, Tensor]:
        """The (n_fft // 2 + 1, 1, n_fft) Conv1d kernels of torchlibrosa's STFT: window·cos, window·(-sin)."""
        c = self.config
        n = torch.arange(c.n_fft, dtype=torch.int64)
        k = torch.arange(c.n_fft // 2 + 1, dtype=torch.int64)
        # Reduce k·n modulo n_fft in integers so the angles stay small and exact.
        angle = (2.0 * math.pi / c.n_fft) * ((k[:, None] * n[None, :]) % c.n_fft).to(torch.float64)
        window = _fft_window(torch.hann_window(c.win_length, periodic=True, dtype=torch.float64), c.n_fft)
        real = (window * torch.cos(angle)).float().unsqueeze(1)
        imag = (-window * torch.sin(angle)).float().unsqueeze(1)
        return real, imag

    def check_official_tensors(self, conv_real: Tensor, conv_imag: Tensor, melW: Tensor, atol: float = 1e-5) -> None:
        """Raise TaggerError naming the first official front-end tensor that differs from this front-end."""
        real, imag = self.dft_kernels()
        expected = {
            "spectrogram_extractor.stft.conv_real.weight": (conv_real, real),
            "spectrogram_extractor.stft.conv_imag.weight": (conv_imag, imag),
            "logmel_extractor.melW": (melW, self.melW),
        }
        for key, (given, ours) in expected.items():
            if not isinstance(given, Tensor):
                raise TaggerError(f"{self.name}: {key} must be a tensor, got {type(given).__name__}")
            if tuple(given.shape) != tuple(ours.shape):
                raise TaggerError(
                    f"{self.name}: {key} has shape {tuple(given.shape)}, this front-end expects "
                    f"{tuple(ours.shape)} (check sample_rate / n_fft / n_mels)"
                )
            diff = (given.detach().to("cpu", torch.float64) - ours.detach().to("cpu", torch.float64)).abs()
            worst = float(diff.max()) if diff.numel() else 0.0
            if not worst <= atol:
                raise TaggerError(
                    f"{self.name}: {key} differs from this front-end by {worst:.3g} (> atol {atol:g}); "
                    "the checkpoint was made with other front-end settings"
                )

    def load_official_tensors(self, conv_real: Tensor, conv_imag: Tensor, melW: Tensor, atol: float = 1e-5) -> None:
        """Check the official tensors, then adopt the checkpoint's melW bit for bit."""
        self.check_official_tensors(conv_real, conv_imag, melW, atol=atol)
        with torch.no_grad():
            self.melW.copy_(melW.detach())

    def _mel_filters(self) -> Tensor:
        """The (n_fft // 2 + 1, n_mels) filters `melW` holds."""
        return self._slaney_filters()

    def _slaney_filters(self) -> Tensor:
        """librosa's Slaney mel filters, transposed as torchlibrosa stores them; librosa loads only here."""
        import librosa

        c = self.config
        weights = librosa.filters.mel(
            sr=c.sample_rate,
            n_fft=c.n_fft,
            n_mels=c.n_mels,
            fmin=c.fmin,
            fmax=c.fmax,
            htk=False,
            norm="slaney",
        )
        return torch.from_numpy(weights.T.copy())


def htk_mel_filters(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float | None) -> Tensor:
    """Triangular mel filters on the HTK scale without area normalisation, (n_fft // 2 + 1, n_mels) float32:
    torchaudio's MelSpectrogram defaults (mel_scale="htk", norm=None), which CED was trained with.

    Mel is 2595·log10(1 + f/700). n_mels + 2 points equally spaced in mel from fmin to fmax (None: Nyquist) are
    the filters' edges and centres; each filter rises linearly in Hz from its left edge to its centre and falls
    to its right edge. FFT bins sit at equal steps from 0 Hz to the integer Nyquist, as torchaudio places them.
    Computed in float32 in torchaudio's order of operations, so the filters equal the ones the models were
    trained with bit for bit (float64 would move them by up to 5e-6).
    """
    top = sample_rate / 2 if fmax is None else fmax

    def mel(hz: float) -> float:
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1, dtype=torch.float32).unsqueeze(1)
    edges = 700.0 * (10.0 ** (torch.linspace(mel(fmin), mel(top), n_mels + 2, dtype=torch.float32) / 2595.0) - 1.0)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs - left) / (centre - left)
    falling = (right - freqs) / (right - centre)
    return torch.clamp_min(torch.minimum(rising, falling), 0.0)


class CedMel(LogMel):
    """CED's front-end, as RicherMans/CED builds it from torchaudio's MelSpectrogram and AmplitudeToDB(top_db=120):
    16 kHz, a centred 512-point STFT with a periodic Hann window, hop 160 (10 ms) and reflect padding, power, 64
    HTK mel filters from 0 to 8 kHz without normalisation, 10·log10 floored at 1e-10, and every value more than
    120 dB below the clip's maximum raised to that level.

    The arithmetic and buffers (`window`, `melW` in the (n_fft // 2 + 1, n_mels) layout of torchaudio's
    `mel_scale.fb`) are LogMel's; only the filters and the defaults differ. torchaudio takes the top_db maximum
    over a whole (B, F, T) batch, so a clip's features would depend on its batch mates; here it is per clip,
    which equals the official features of a clip run alone. The BatchNorm over mel bins that follows is part of
    the model (`init_bn`): it has learned weights.
    """

    name = "ced-mel"
    config_class: ClassVar[type[LogMelConfig]] = CedMelConfig

    def _mel_filters(self) -> Tensor:
        c = self.config
        return htk_mel_filters(c.n_mels, c.n_fft, c.sample_rate, c.fmin, c.fmax)


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class WaveformConfig:
    """Models that learn their own front-end from samples (PANNs 1-D CNNs, Wavegram) take the waveform."""

    sample_rate: int = 32000

    def __post_init__(self) -> None:
        _require(self.sample_rate > 0, f"waveform: sample_rate must be > 0, got {self.sample_rate}")


class Waveform(_FrontEnd):
    """The identity front-end: (B, S) in, (B, S) out, so waveform models fit the same model contract."""

    name = "waveform"

    def __init__(self, config: WaveformConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = _resolve_config(WaveformConfig, config, overrides, self.name)

    @property
    def min_samples(self) -> int:
        return 1

    def num_frames(self, num_samples: int) -> int:
        return num_samples

    def forward(self, wave: Tensor) -> Tensor:
        return self._prepare(wave, torch.get_default_dtype() if not wave.is_floating_point() else wave.dtype)


FRONTENDS: dict[str, type[_FrontEnd]] = {
    KaldiFbank.name: KaldiFbank,
    PasstMel.name: PasstMel,
    LogMel.name: LogMel,
    CedMel.name: CedMel,
    Waveform.name: Waveform,
}


def frontend_to_dict(module: nn.Module) -> dict[str, Any]:
    """JSON-ready description {"name": ..., **config} that build_frontend turns back into the same module."""
    if not isinstance(module, _FrontEnd):
        raise TaggerError(f"frontend_to_dict: {type(module).__name__} is not a tagger front-end")
    return {"name": module.name, **asdict(module.config)}


def build_frontend(spec: dict[str, Any] | str, **overrides: Any) -> nn.Module:
    """A front-end from its name, a Kaldi preset name or a frontend_to_dict() dict, plus overrides."""
    if isinstance(spec, str):
        if spec in KALDI_PRESETS:
            return KaldiFbank(KALDI_PRESETS[spec], **overrides)
        name, settings = spec, {}
    elif isinstance(spec, dict):
        settings = dict(spec)
        name = settings.pop("name", None)
    else:
        raise TaggerError(f"build_frontend: expected a name or a dict, got {type(spec).__name__}")
    if name not in FRONTENDS:
        valid = ", ".join([*FRONTENDS, *KALDI_PRESETS])
        raise TaggerError(f"unknown front-end {name!r}; valid names: {valid}")
    return FRONTENDS[name](**{**settings, **overrides})
