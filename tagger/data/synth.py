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

# A two-level ontology over CLASSES (each class has exactly one parent) so that hierarchical label repair,
# e.g. PSLA's label enhancement, can be demonstrated on data whose complete labels are known.
PARENTS = {"tonal": ("tone", "chirp", "hum", "beeps"), "broadband": ("noise-burst", "clicks")}
_PARENT_OF = {child: parent for parent, children in PARENTS.items() for child in children}


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


def complete_labels(classes: list[str] | tuple[str, ...]) -> list[str]:
    """A clip's classes plus their parents, sorted: the truth a label-repair method should recover."""
    return sorted(set(classes) | {_PARENT_OF[c] for c in classes})


def weaken_labels(classes: list[str] | tuple[str, ...], missing: float, rng: np.random.Generator) -> list[str]:
    """Complete labels with gaps like those PSLA repairs, each class's (class, parent) pair losing one label.

    With probability `missing` per class, either the class goes and its parent stays (Type I: parent without
    child) or the class no longer supplies its parent (Type II: child without parent), 50/50. A parent that
    another class still supplies stays. Both draws are made for every class whatever `missing` is, so for one
    seed the gaps at a smaller share are a subset of those at a larger one.
    """
    kept = set(classes)
    supplies_parent = set(classes)
    for c in classes:
        hit, type_one = rng.random() < missing, rng.random() < 0.5
        if not hit:
            continue
        new_kept, new_supplies = (kept - {c}, supplies_parent) if type_one else (kept, supplies_parent - {c})
        # Each pair keeps one of its labels, so no drop can empty a clip today; the guard holds that if the
        # rules change, because a clip with no labels is not weakly labelled but lost.
        if new_kept | {_PARENT_OF[k] for k in new_supplies}:
            kept, supplies_parent = new_kept, new_supplies
    return sorted(kept | {_PARENT_OF[k] for k in supplies_parent})


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """16-bit WAV, written atomically."""
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
    hierarchy: bool = False,
    missing_labels: float = 0.0,
) -> dict[str, Path]:
    """Write WAV clips plus train.csv / valid.csv manifests, labels.csv and events.csv; return their paths.

    With `hierarchy` the parent classes of PARENTS join labels.csv, every clip is also labelled with its
    classes' parents, and ontology.csv (parent,child edges) is written. `missing_labels` then makes train.csv
    weakly labelled like real crowd-sourced sets (see `weaken_labels`), while train-complete.csv keeps the
    truth so that a label-repair method can be scored. The audio never depends on either option.
    """
    if clips < 2:
        raise TaggerError(f"--clips {clips} is too few: use at least 2 (one for training, one for validation)")
    if not 0 < valid_fraction < 1:
        raise TaggerError(f"--valid-fraction {valid_fraction} must be between 0 and 1")
    if seconds <= 0.5 or sample_rate < 8000:
        raise TaggerError("use clips longer than 0.5 s and a sample rate of at least 8000 Hz")
    if not 0 <= missing_labels < 1:
        raise TaggerError(f"--missing-labels {missing_labels} must be at least 0 and below 1 (a share of labels)")
    if missing_labels > 0 and not hierarchy:
        raise TaggerError("--missing-labels needs --hierarchy: gaps are made between a class and its parent")
    out = Path(out_dir)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_valid = max(1, int(round(clips * valid_fraction)))
    # A generator of its own, so the audio (drawn from `rng`) is identical with and without weak labels.
    label_rng = np.random.default_rng([seed, 1])
    rows: dict[str, list[list]] = {"train": [], "valid": [], "train_complete": []}
    events: list[Event] = []
    for i in range(clips):
        clip_id = f"clip{i:04d}"
        wave, clip_events = synth_clip(clip_id, rng, seconds, sample_rate)
        write_wav(audio_dir / f"{clip_id}.wav", wave, sample_rate)
        split = "valid" if i >= clips - n_valid else "train"
        classes = sorted({e.label for e in clip_events})
        labels = complete_labels(classes) if hierarchy else classes
        if hierarchy and split == "train":
            rows["train_complete"].append([f"audio/{clip_id}.wav", ",".join(labels), clip_id])
            labels = weaken_labels(classes, missing_labels, label_rng)
        rows[split].append([f"audio/{clip_id}.wav", ",".join(labels), clip_id])
        events.extend(clip_events)
    paths = {
        "train": out / "train.csv",
        "valid": out / "valid.csv",
        "labels": out / "labels.csv",
        "events": out / "events.csv",
    }
    if hierarchy:
        paths["ontology"] = out / "ontology.csv"
        paths["train_complete"] = out / "train-complete.csv"
    for split in [k for k in ("train", "valid", "train_complete") if k in paths]:
        atomic_write_csv(paths[split], ["path", "labels", "id"], rows[split])
    names = CLASSES + tuple(PARENTS) if hierarchy else CLASSES
    atomic_write_csv(paths["labels"], ["index", "mid", "display_name"], [[i, c, c] for i, c in enumerate(names)])
    if hierarchy:
        edges = [[parent, child] for parent, children in PARENTS.items() for child in children]
        atomic_write_csv(paths["ontology"], ["parent", "child"], edges)
    atomic_write_csv(
        paths["events"], ["id", "label", "onset", "offset"], [[e.clip_id, e.label, e.onset, e.offset] for e in events]
    )
    return paths
