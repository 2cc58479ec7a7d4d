"""Sound scenes with strong labels built from real clips: event sounds placed at known times on background recordings.

The real check of sound event detection that a user can repeat: ESC-50 event clips (dog, rooster, door knock, ...)
mixed onto ESC-50 background recordings (rain, wind, crickets, ...), folds kept apart so that training and test
scenes never share a source clip. An event's annotation is the part of its clip that actually sounds (frames within
`ACTIVE_DB` of the clip's loudest frame, gaps under `JOIN_GAP` joined), not the whole 5 s file, which is mostly
silence for short sounds. Each scene is written as a WAV file, and the annotations as rows
(file, onset, offset, label) for a DCASE-style TSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger import audio
from tagger.data.manifests import Example, read_manifest
from tagger.data.synth import write_wav
from tagger.errors import TaggerError

# ESC-50 categories used as events, and the AudioSet class each one is (for scoring an AudioSet model zero-shot).
EVENT_CLASSES = {
    "dog": "Dog",
    "rooster": "Chicken, rooster",
    "door_wood_knock": "Knock",
    "crying_baby": "Baby cry, infant cry",
    "siren": "Siren",
    "church_bells": "Church bell",
    "cat": "Cat",
    "clock_alarm": "Alarm clock",
    "glass_breaking": "Shatter",
    "cow": "Cattle, bovinae",
}
BACKGROUND_CLASSES = ("rain", "wind", "crickets", "sea_waves", "crackling_fire", "insects")
FRAME_SECONDS = 0.02  # resolution of the activity detection
ACTIVE_DB = 30.0  # a frame sounds when its energy is within this of the clip's loudest frame
JOIN_GAP = 0.25  # seconds: bursts closer than this are one event (a dog's double bark)
MIN_EVENT = 0.05  # seconds: shorter bursts are dropped


@dataclass(frozen=True)
class SceneEvent:
    file: str
    onset: float
    offset: float
    label: str


def active_parts(wave: np.ndarray, sample_rate: int) -> list[tuple[float, float]]:
    """(start, end) seconds of the parts of a clip that sound, by frame energy relative to its loudest frame."""
    hop = max(1, round(FRAME_SECONDS * sample_rate))
    frames = len(wave) // hop
    if frames == 0:
        return []
    energy = (wave[: frames * hop].reshape(frames, hop).astype(np.float64) ** 2).mean(axis=1)
    peak = energy.max()
    if peak <= 0:
        return []
    loud = 10 * np.log10(np.maximum(energy, 1e-20) / peak) > -ACTIVE_DB
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(np.int8), [0]])))
    parts: list[list[float]] = []
    for start, end in zip(edges[0::2] * hop / sample_rate, edges[1::2] * hop / sample_rate, strict=True):
        if parts and start - parts[-1][1] < JOIN_GAP:
            parts[-1][1] = end
        else:
            parts.append([start, end])
    return [(round(float(a), 3), round(float(b), 3)) for a, b in parts if b - a >= MIN_EVENT]


def make_scenes(
    examples: Sequence[Example],
    out_dir: str | Path,
    count: int,
    prefix: str,
    seconds: float = 10.0,
    sample_rate: int = 32000,
    events_per_scene: tuple[int, int] = (1, 3),
    snr_db: tuple[float, float] = (0.0, 12.0),
    seed: int = 0,
) -> list[SceneEvent]:
    """Write `count` scenes `{prefix}-NNNN.wav` into `out_dir`; return their events.

    Each scene: a background (background clips end to end, cut to `seconds`) plus 1-3 event clips at random times
    and random event-to-background ratios in `snr_db` (by the RMS of the sounding part). Events may overlap.
    """
    rng = np.random.default_rng(seed)
    events_pool = [e for e in examples if e.labels and e.labels[0] in EVENT_CLASSES]
    backgrounds = [e for e in examples if e.labels and e.labels[0] in BACKGROUND_CLASSES]
    if not events_pool or not backgrounds:
        raise TaggerError(f"no {'event' if not events_pool else 'background'} clips among {len(examples)} examples; "
                          f"scenes need ESC-50 categories {', '.join(EVENT_CLASSES)} and "
                          f"{', '.join(BACKGROUND_CLASSES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    length = round(seconds * sample_rate)
    found: list[SceneEvent] = []
    for number in range(count):
        name = f"{prefix}-{number:04d}.wav"
        scene = _background(backgrounds, rng, length, sample_rate)
        level = float(np.sqrt(np.mean(scene**2))) or 1e-4
        for _ in range(int(rng.integers(events_per_scene[0], events_per_scene[1] + 1))):
            example = events_pool[int(rng.integers(len(events_pool)))]
            wave = audio.load(example.path, sample_rate)
            parts = active_parts(wave, sample_rate)
            if not parts:
                continue
            first, last = round(parts[0][0] * sample_rate), round(parts[-1][1] * sample_rate)
            wave = wave[first:last]
            sounding = np.concatenate([wave[round((a - parts[0][0]) * sample_rate):
                                            round((b - parts[0][0]) * sample_rate)] for a, b in parts])
            gain = level * 10 ** (rng.uniform(*snr_db) / 20) / max(float(np.sqrt(np.mean(sounding**2))), 1e-6)
            start = int(rng.integers(0, max(1, length - len(wave))))
            piece = wave[: length - start] * gain
            scene[start : start + len(piece)] += piece
            shift = start / sample_rate - parts[0][0]
            for a, b in parts:
                onset, offset = round(a + shift, 3), round(min(b + shift, seconds), 3)
                if offset - onset >= MIN_EVENT:
                    found.append(SceneEvent(name, onset, offset, example.labels[0]))
        peak = float(np.abs(scene).max())
        if peak > 0.99:  # keep the mix from clipping; the annotation does not change with the level
            scene *= 0.99 / peak
        write_wav(out_dir / name, scene, sample_rate)
    return merge_overlaps(found)


def merge_overlaps(events: Sequence[SceneEvent]) -> list[SceneEvent]:
    """One event per stretch of a class in a file: overlapping (or nearly touching) same-class events are joined,
    as annotators mark a sound that goes on, not the clips it was mixed from. Sorted by file, then onset."""
    merged: list[SceneEvent] = []
    for event in sorted(events, key=lambda e: (e.file, e.label, e.onset)):
        last = merged[-1] if merged else None
        if last is not None and (last.file, last.label) == (event.file, event.label) and \
                event.onset - last.offset < JOIN_GAP:
            merged[-1] = SceneEvent(last.file, last.onset, max(last.offset, event.offset), last.label)
        else:
            merged.append(event)
    return sorted(merged, key=lambda e: (e.file, e.onset, e.label))


def _background(backgrounds: Sequence[Example], rng: np.random.Generator, length: int, rate: int) -> np.ndarray:
    pieces, total = [], 0
    while total < length:
        wave = audio.load(backgrounds[int(rng.integers(len(backgrounds)))].path, rate)
        pieces.append(wave)
        total += len(wave)
    scene = np.concatenate(pieces)[:length].astype(np.float32)
    rms = float(np.sqrt(np.mean(scene**2)))
    return scene * (0.05 / rms) if rms > 0 else scene  # backgrounds at one level: -26 dBFS


def write_scene_set(esc50: str | Path, out_dir: str | Path, clips: int = 200, seconds: float = 10.0,
                    sample_rate: int = 32000, seed: int = 0, test_fold: int = 4) -> dict[str, Path]:
    """The SED check's data: scenes from the ESC-50 folds other than `test_fold` to train on (`clips` of them) and
    from `test_fold` to test on (a quarter as many), with strong labels (DCASE TSV), weak labels (CSV manifests,
    the classes that sound in each scene), labels.csv and a label map onto AudioSet's class names."""
    from tagger.data.strong import StrongEvent, StrongLabels, write_dcase_tsv
    from tagger.fileio import atomic_write_csv

    out_dir = Path(out_dir)
    manifest = read_manifest(esc50, "esc50")
    folds = sorted({int(e.id.split("-")[0]) for e in manifest.examples})
    if test_fold not in folds or len(folds) < 2:
        raise TaggerError(f"{esc50}: scenes need fold {test_fold} for testing and another to train on; it has "
                          f"folds {', '.join(map(str, folds)) or 'none'}")
    paths: dict[str, Path] = {}
    for split, count, chosen in (("train", clips, [f for f in folds if f != test_fold]),
                                 ("test", max(1, clips // 4), [test_fold])):
        examples = read_manifest(esc50, "esc50", folds=chosen).examples
        found = make_scenes(examples, out_dir / "audio", count, split, seconds, sample_rate, seed=seed + len(split))
        names = [f"{split}-{k:04d}.wav" for k in range(count)]
        strong = StrongLabels([StrongEvent(Path(e.file).stem, e.onset, e.offset, e.label) for e in found],
                              empty_files=[Path(n).stem for n in names])
        paths[f"{split}_strong"] = out_dir / f"{split}-strong.tsv"
        write_dcase_tsv(paths[f"{split}_strong"], strong)
        heard = {name: sorted({e.label for e in found if e.file == name}) for name in names}
        paths[split] = out_dir / f"{split}.csv"
        atomic_write_csv(paths[split], ["path", "labels", "id"],
                         [[f"audio/{name}", ",".join(heard[name]), Path(name).stem] for name in names])
    paths["labels"] = out_dir / "labels.csv"
    atomic_write_csv(paths["labels"], ["index", "mid", "display_name"],
                     [[i, name, name] for i, name in enumerate(EVENT_CLASSES)])
    paths["audioset_map"] = out_dir / "audioset-label-map.csv"
    atomic_write_csv(paths["audioset_map"], ["from", "to"], [[k, v] for k, v in EVENT_CLASSES.items()])
    return paths
