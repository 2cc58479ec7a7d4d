"""Frame targets from strong labels: what a frame-level output should say for exactly the crop an item drew.

A training item is a random crop of its clip, possibly zero-padded and circularly rolled. Frame k of the model's
output covers [k * frame_seconds, (k + 1) * frame_seconds) of the item (the convention of inference.events); its
target for a class is 1 when the moment of the source clip under the frame's centre lies inside an event of that
class. The frame families repeat each of their time steps over the input frames it covers, and binary
cross-entropy is linear in its target, so the per-frame loss equals the loss at the model's own time resolution
against the fraction of each step the event covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger.data.strong import StrongLabels, audio_finder, file_key, match_labels, read_label_map, read_strong
from tagger.errors import TaggerError
from tagger.fileio import atomic_write_csv
from tagger.labels import LabelSet


@dataclass(frozen=True)
class FrameGrid:
    """Where an item's output frames sit: `frames` rows, `frame_seconds` apart, for items of `samples` samples."""

    frames: int
    frame_seconds: float
    sample_rate: int
    samples: int

    def source_seconds(self, start: int, shift: int) -> np.ndarray:
        """(frames,) time in the source clip under each frame's centre, for an item that starts at sample `start`
        of its clip and was rolled by `shift` samples (item sample i holds cropped sample i - shift). Frames past
        the item's end (a front-end that pads to a fixed length, as AST and PSLA do) lie under no event: -inf."""
        centre = np.floor((np.arange(self.frames) + 0.5) * self.frame_seconds * self.sample_rate)
        unrolled = np.mod(centre - shift, self.samples)
        return np.where(centre < self.samples, (unrolled + start) / self.sample_rate, -np.inf)


class FrameTargets:
    """(frames, classes) targets of training clips that have strong labels; clips without them have none."""

    def __init__(self, strong: StrongLabels, keys: Sequence[Sequence[str]], labels: LabelSet, grid: FrameGrid):
        """`keys[i]` are the names clip i may have in the annotation (its id, its file's key)."""
        self.grid, self.num_classes = grid, len(labels)
        events = strong.by_file()
        self.events: list[np.ndarray | None] = []
        for names in keys:
            found = next((events[name] for name in names if name in events), None)
            self.events.append(None if found is None else np.array(
                [(on, off, labels.index(label)) for on, off, label in found], dtype=np.float64).reshape(-1, 3))
        self.count = sum(e is not None for e in self.events)

    def __len__(self) -> int:
        return len(self.events)

    def has(self, index: int) -> bool:
        return self.events[index] is not None

    def __call__(self, index: int, start: int = 0, shift: int = 0) -> np.ndarray:
        """Clip `index`'s targets for an item cropped at `start` and rolled by `shift`; zeros without strong labels."""
        out = np.zeros((self.grid.frames, self.num_classes), dtype=np.float32)
        events = self.events[index]
        if events is None or not len(events):
            return out
        seconds = self.grid.source_seconds(start, shift)
        for onset, offset, column in events:
            out[(seconds >= onset) & (seconds < offset), int(column)] = 1.0
        return out


def read_training_strong(path: str | Path, labels: LabelSet, label_map: str | Path | None = None) -> StrongLabels:
    """An annotation file with its labels matched to the run's classes (by name, id, or through `label_map`)."""
    mapping = read_label_map(label_map) if label_map else None
    strong = match_labels(read_strong(path), labels, mapping)
    if not strong.files:
        raise TaggerError(f"{path} lists no clips; a strong-label file has rows `filename onset offset event_label`")
    return strong


def clip_keys(ids: Sequence[str], paths: Sequence[str]) -> list[tuple[str, ...]]:
    """Each clip's possible annotation keys: its id, and its file's name without folders or audio extension."""
    return [tuple(dict.fromkeys((str(clip), file_key(str(path))))) for clip, path in zip(ids, paths, strict=True)]


def strong_manifest(strong_path: str | Path, audio_dir: str | Path, out: str | Path,
                    label_map: str | Path | None = None) -> Path:
    """`tagger train --strong ANN` without --train: a manifest (path, labels, id) of every annotated clip, its
    labels the classes of its events, written into the run folder so that --resume reads the same clips."""
    mapping = read_label_map(label_map) if label_map else {}
    strong = read_strong(strong_path)
    find = audio_finder(audio_dir)
    rows = []
    for key, events in strong.by_file().items():
        heard = sorted({mapping.get(label, label) for _, _, label in events} - {""})
        rows.append([str(find(key)), "".join(f"{label};" for label in heard), key])  # ";" even for one label:
        # class names may hold commas ("Chicken, rooster"), and the csv reader splits on ";" once a cell has one
    if not rows:
        raise TaggerError(f"{strong_path} lists no clips to train on")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out, ["path", "labels", "id"], rows)
    return out
