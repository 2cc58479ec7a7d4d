"""A small labelled synthetic audio set with known events: the demo's default data and the tests' fixture.

Each class is a sound with a distinct spectro-temporal shape, so a model can learn it in minutes and an
event detector has exact ground-truth onsets and offsets to be checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError
from tagger.fileio import atomic_path, atomic_write_csv

CLASSES = ("tone", "chirp", "noise-burst", "clicks", "hum", "beeps")


@dataclass(frozen=True)
class Event:
    clip_id: str
    label: str
    onset: float
    offset: float


def _tone(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    return np.sin(2 * np.pi * rng.uniform(600, 1600) * t)


def _chirp(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    f0, f1 = rng.uniform(300, 800), rng.uniform(2500, min(6000, sr / 2.5))
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(t[-1], 1e-3)))
    return np.sin(phase)


def _noise_burst(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(n)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    centre = rng.uniform(2000, min(5000, sr / 3))
    spectrum *= np.exp(-(((freqs - centre) / 600.0) ** 2))
    burst = np.fft.irfft(spectrum, n)
    return burst / (np.abs(burst).max() + 1e-9)


def _clicks(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    period = int(sr / rng.uniform(8, 20))
    click = np.hanning(max(int(0.002 * sr), 4))
    for start in range(0, n - click.size, period):
        out[start : start + click.size] += click
    return out


def _hum(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    f = rng.uniform(90, 160)
    return sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, 6)) / 2.3


def _beeps(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    gate = (np.sin(2 * np.pi * rng.uniform(3, 5) * t) > 0).astype(float)
    return gate * np.sin(2 * np.pi * rng.uniform(2500, 3500) * t)


_GENERATORS = {
    "tone": _tone,
    "chirp": _chirp,
    "noise-burst": _noise_burst,
    "clicks": _clicks,
    "hum": _hum,
    "beeps": _beeps,
}


def synth_clip(
    clip_id: str, rng: np.random.Generator, seconds: float, sample_rate: int, max_events: int = 2
) -> tuple[np.ndarray, list[Event]]:
    """One clip: faint noise floor plus 1..max_events events of distinct classes at random times."""
    n = int(round(seconds * sample_rate))
    wave = 0.003 * rng.standard_normal(n)
    count = int(rng.integers(1, max_events + 1))
    events = []
    for label in rng.choice(CLASSES, size=count, replace=False):
        length = float(rng.uniform(0.3, 0.8)) * seconds
        onset = float(rng.uniform(0, seconds - length))
        start, stop = int(onset * sample_rate), int((onset + length) * sample_rate)
        sound = _GENERATORS[str(label)](stop - start, sample_rate, rng)
        ramp = np.minimum(
            1.0, np.minimum(np.arange(stop - start), np.arange(stop - start)[::-1]) / (0.01 * sample_rate)
        )
        wave[start:stop] += float(rng.uniform(0.15, 0.4)) * sound * ramp
        events.append(Event(clip_id, str(label), round(onset, 3), round(onset + length, 3)))
    return wave.astype(np.float32), sorted(events, key=lambda e: e.onset)


def _write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(tmp, wave, sample_rate, subtype="PCM_16", format="WAV")


def synthesize(
    out_dir: str | Path,
    clips: int = 48,
    seconds: float = 5.0,
    sample_rate: int = 16000,
    valid_fraction: float = 0.25,
    seed: int = 0,
) -> dict[str, Path]:
    """Write WAV clips plus train.csv / valid.csv manifests, labels.csv and events.csv; return their paths."""
    if clips < 2:
        raise TaggerError(f"--clips {clips} is too few: use at least 2 (one for training, one for validation)")
    if not 0 < valid_fraction < 1:
        raise TaggerError(f"--valid-fraction {valid_fraction} must be between 0 and 1")
    if seconds <= 0.5 or sample_rate < 8000:
        raise TaggerError("use clips longer than 0.5 s and a sample rate of at least 8000 Hz")
    out = Path(out_dir)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_valid = max(1, int(round(clips * valid_fraction)))
    rows: dict[str, list[list]] = {"train": [], "valid": []}
    events: list[Event] = []
    for i in range(clips):
        clip_id = f"clip{i:04d}"
        wave, clip_events = synth_clip(clip_id, rng, seconds, sample_rate)
        _write_wav(audio_dir / f"{clip_id}.wav", wave, sample_rate)
        split = "valid" if i >= clips - n_valid else "train"
        labels = ",".join(sorted({e.label for e in clip_events}))
        rows[split].append([f"audio/{clip_id}.wav", labels, clip_id])
        events.extend(clip_events)
    paths = {
        "train": out / "train.csv",
        "valid": out / "valid.csv",
        "labels": out / "labels.csv",
        "events": out / "events.csv",
    }
    for split in ("train", "valid"):
        atomic_write_csv(paths[split], ["path", "labels", "id"], rows[split])
    atomic_write_csv(paths["labels"], ["index", "mid", "display_name"], [[i, c, c] for i, c in enumerate(CLASSES)])
    atomic_write_csv(
        paths["events"], ["id", "label", "onset", "offset"], [[e.clip_id, e.label, e.onset, e.offset] for e in events]
    )
    return paths
