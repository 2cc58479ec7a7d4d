"""Clips per second of the batched front-ends against per-clip official-style and librosa paths."""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

from tagger.frontends import KaldiFbank, LogMel, PasstMel, kaldi_mel_banks

SECONDS = 10.0


def make_clips(count: int, sample_rate: int) -> torch.Tensor:
    """Tones with noise: deterministic, and no silent frames (those would be cheap for nobody)."""
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(int(SECONDS * sample_rate)) / sample_rate
    freqs = 200.0 + 50.0 * torch.arange(count)[:, None]
    waves = 0.3 * torch.sin(2 * math.pi * freqs * t) + 0.01 * torch.randn(count, t.numel(), generator=gen)
    return waves.float()


# ----------------------------------------------------------------------------- per-clip references


def torchaudio_fbank(clip: torch.Tensor) -> torch.Tensor:
    """What the AST/PSLA loaders call for every clip."""
    return kaldi.fbank(
        clip[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )


class NumpyFbank:
    """The same Kaldi recipe with librosa framing and numpy FFT, one clip at a time."""

    def __init__(self) -> None:
        banks = kaldi_mel_banks(128, 512, 16000, 20.0, 0.0).numpy()
        self.mel = np.pad(banks, ((0, 0), (0, 1))).T.copy()
        self.window = np.hanning(400).astype(np.float32)

    def __call__(self, clip: torch.Tensor) -> np.ndarray:
        frames = librosa.util.frame(clip.numpy(), frame_length=400, hop_length=160, axis=0)
        frames = frames - frames.mean(axis=1, keepdims=True)
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = (frames - 0.97 * previous) * self.window
        power = np.abs(np.fft.rfft(frames, n=512)) ** 2
        return np.log(np.maximum(power @ self.mel, np.finfo(np.float32).eps))


class OfficialPasst:
    """The official AugmentMelSTFT recipe in eval mode, per clip; it rebuilds the mel banks every call."""

    def __init__(self) -> None:
        self.window = torch.hann_window(800, periodic=False)
        self.kernel = torch.tensor([[[-0.97, 1.0]]])

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        x = F.conv1d(clip[None, None], self.kernel)[:, 0]
        spec = torch.stft(x, 1024, hop_length=320, win_length=800, window=self.window, return_complex=True)
        power = torch.view_as_real(spec).pow(2).sum(-1)
        banks, _ = kaldi.get_mel_banks(128, 1024, 32000.0, 0.0, 15000.0, 100.0, -500.0, 1.0)
        mel = torch.matmul(F.pad(banks, (0, 1)), power)
        return ((mel + 1e-5).log() + 4.5) / 5.0


class LibrosaPasst:
    """PaSST mel with librosa's STFT (symmetric Hann given as an array) and numpy mel/log."""

    def __init__(self) -> None:
        self.window = np.hanning(800)
        self.mel = np.pad(kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0).numpy(), ((0, 0), (0, 1)))

    def __call__(self, clip: torch.Tensor) -> np.ndarray:
        y = clip.numpy()
        y = y[1:] - 0.97 * y[:-1]
        spec = librosa.stft(
            y, n_fft=1024, hop_length=320, win_length=800, window=self.window, pad_mode="reflect"
        )
        return (np.log(self.mel @ (np.abs(spec) ** 2) + 1e-5) + 4.5) / 5.0


def librosa_logmel(clip: torch.Tensor) -> np.ndarray:
    """What a librosa user writes for the PANNs front-end."""
    mel = librosa.feature.melspectrogram(
        y=clip.numpy(), sr=32000, n_fft=1024, hop_length=320, window="hann", n_mels=64, fmin=50, fmax=14000
    )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


class ConvLogMel:
    """torchlibrosa's way, per clip: the STFT as a Conv1d with window·cos / window·(-sin) kernels."""

    def __init__(self) -> None:
        fe = LogMel()
        self.real, self.imag = fe.dft_kernels()
        self.melW = fe.melW

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        x = F.pad(clip[None, None], (512, 512), mode="reflect")
        power = F.conv1d(x, self.real, stride=320) ** 2 + F.conv1d(x, self.imag, stride=320) ** 2
        mel = torch.matmul(power.transpose(1, 2), self.melW)
        return 10.0 * torch.log10(mel.clamp_min(1e-10))


# ----------------------------------------------------------------------------- timing


def per_clip(fn: Callable) -> Callable[[torch.Tensor], None]:
    def run(clips: torch.Tensor) -> None:
        for clip in clips:
            fn(clip)

    return run


def batched(module: torch.nn.Module, batch: int) -> Callable[[torch.Tensor], None]:
    def run(clips: torch.Tensor) -> None:
        for start in range(0, len(clips), batch):
            module(clips[start : start + batch])

    return run


def measure(
    methods: dict[str, Callable], clips: torch.Tensor, repeats: int, settle: float
) -> dict[str, float]:
    """Median clips/s per method; the methods take turns each round so slow drifts hit them all alike.

    The pause before each timed run lets the BLAS/OpenMP worker threads of the previous method stop
    spinning: right after numpy work, torch ops on 2 cores run about twice as slow.
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.inference_mode():
        for run in methods.values():  # warm-up: allocator, FFT plans, lazy imports
            run(clips[:2])
        for _ in range(repeats):
            for name, run in methods.items():
                time.sleep(settle)
                start = time.perf_counter()
                run(clips)
                times[name].append(time.perf_counter() - start)
    return {name: len(clips) / statistics.median(values) for name, values in times.items()}


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=64, help="10-second clips per measurement")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the batched front-ends")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported")
    parser.add_argument("--settle", type=float, default=0.3, help="seconds of pause before each timed run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    suites = {
        "KaldiFbank (16 kHz)": (
            16000,
            {
                "tagger KaldiFbank, batched": batched(KaldiFbank().eval(), args.batch),
                "tagger KaldiFbank, batch 1": batched(KaldiFbank().eval(), 1),
                "torchaudio kaldi.fbank per clip": per_clip(torchaudio_fbank),
                "librosa framing + numpy per clip": per_clip(NumpyFbank()),
            },
        ),
        "PasstMel (32 kHz)": (
            32000,
            {
                "tagger PasstMel, batched": batched(PasstMel().eval(), args.batch),
                "tagger PasstMel, batch 1": batched(PasstMel().eval(), 1),
                "official-style torch per clip": per_clip(OfficialPasst()),
                "librosa per clip": per_clip(LibrosaPasst()),
            },
        ),
        "LogMel (32 kHz)": (
            32000,
            {
                "tagger LogMel, batched": batched(LogMel().eval(), args.batch),
                "tagger LogMel, batch 1": batched(LogMel().eval(), 1),
                "torchlibrosa-style Conv1d DFT per clip": per_clip(ConvLogMel()),
                "librosa per clip": per_clip(librosa_logmel),
            },
        ),
    }
    print(
        f"# {datetime.date.today()} | {machine()} | torch {torch.__version__} | librosa {librosa.__version__}"
    )
    print(f"# {args.clips} clips of {SECONDS:g} s, batch {args.batch}, median of {args.repeats} rounds")
    print("# ratio: clips/s over the per-clip reference of the same front-end (3rd row of each group)\n")
    print("| front-end | method | clips/s | vs per-clip reference |")
    print("|---|---|---:|---:|")
    for suite, (sample_rate, methods) in suites.items():
        rates = measure(methods, make_clips(args.clips, sample_rate), args.repeats, args.settle)
        reference = rates[list(methods)[2]]  # the per-clip official / torchaudio path
        for name, rate in rates.items():
            print(f"| {suite} | {name} | {rate:.1f} | {rate / reference:.2f}x |")


if __name__ == "__main__":
    main()
