"""One way in for every labelled data set: a manifest, a pack made by `tagger pack`, or an AudioSet HDF5 file.

`open_clips(path)` gives `Clips`: a `ClipTable` (ids, labels) and an audio reader with `load(index, rate)`.
Readers hold no open file handles until first used in a process, so they can be pickled into DataLoader
workers; each worker opens its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from tagger import audio
from tagger.data.manifests import Example, read_manifest
from tagger.data.table import ClipTable, StringColumn
from tagger.errors import TaggerError


class ClipAudio(Protocol):
    """Where a data set's audio is and how to decode one clip."""

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        """Clip `index` as mono float32 at `sample_rate`; a clip that cannot be read raises TaggerError."""

    def where(self, index: int) -> str:
        """Where clip `index` lives, for messages and reports (a path, or `pack/shard row`)."""


class FileAudio:
    """Loose audio files, one path per clip."""

    def __init__(self, paths: StringColumn):
        self.paths = paths

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        return audio.load(self.paths[index], sample_rate)

    def where(self, index: int) -> str:
        return self.paths[index]


@dataclass
class Clips:
    """A labelled data set as columns plus its audio; `format` names what it was read from."""

    table: ClipTable
    audio: ClipAudio
    source: Path
    format: str
    missing: list[Example] = field(default_factory=list)  # manifest rows whose audio was not found
    duplicates: list[Example] = field(default_factory=list)
    sample_rate: int | None = None  # the rate the audio is stored at, when one rate holds for all clips

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> StringColumn:
        return self.table.ids

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        return self.audio.load(index, sample_rate)

    def where(self, index: int) -> str:
        return self.audio.where(index)

    def examples(self) -> list[Example]:
        """Per-clip objects, for the small sets (evaluation, reports) that code written for manifests reads."""
        labels = self.table.labels
        return [Example(Path(self.where(i)), labels.row(i), self.ids[i]) for i in range(len(self))]

    def subset(self, rows) -> Clips:
        """The given clips, in that order, reading their audio from the same place (files stay files, so long
        ones are still streamed)."""
        rows = np.asarray(rows, dtype=np.int64)
        table = ClipTable(self.table.ids.take(rows), self.table.labels.take(rows))
        audio = FileAudio(self.audio.paths.take(rows)) if isinstance(self.audio, FileAudio) else _Rows(self.audio, rows)
        return Clips(table, audio, self.source, self.format, sample_rate=self.sample_rate)

    def summary(self) -> str:
        n = len(self)
        notes = [f"{len(self.missing)} missing"] if self.missing else []
        if self.duplicates:
            notes.append(f"{len(self.duplicates)} duplicate{'s' * (len(self.duplicates) != 1)}")
        text = f"{n} clip{'s' * (n != 1)} from {self.source.name} ({self.format})"
        return text + ("; " + ", ".join(notes) if notes else "")


class _Rows:
    """Audio of some rows of another reader."""

    def __init__(self, audio: ClipAudio, rows: np.ndarray):
        self.base, self.rows = audio, rows

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        return self.base.load(int(self.rows[index]), sample_rate)

    def where(self, index: int) -> str:
        return self.base.where(int(self.rows[index]))


def from_examples(examples: Sequence[Example], source: Path = Path("."), fmt: str = "examples") -> Clips:
    """Examples already read from a manifest, as the columns and file reader `open_clips` gives for it."""
    table = ClipTable.from_lists([e.id for e in examples], [e.labels for e in examples])
    return Clips(table, FileAudio(StringColumn.from_strings(str(e.path) for e in examples)), source, fmt)


def from_manifest(path: str | Path, manifest_format: str = "auto", **options) -> Clips:
    """A manifest read into columns (its per-clip objects are dropped once the columns exist)."""
    manifest = read_manifest(path, manifest_format, **options)
    examples = manifest.examples
    table = ClipTable.from_lists([e.id for e in examples], [e.labels for e in examples])
    paths = StringColumn.from_strings(str(e.path) for e in examples)
    return Clips(table, FileAudio(paths), manifest.source, manifest.format, manifest.missing, manifest.duplicates)


# A recogniser and an opener for each stored format other than manifests; packs and HDF5 files register here.
Opener = Callable[[Path], Clips]
_OPENERS: list[tuple[Callable[[Path], bool], Opener]] = []


def register_format(recognise: Callable[[Path], bool], opener: Opener) -> None:
    _OPENERS.append((recognise, opener))


def _load_openers() -> None:
    """Import the modules that register stored formats (kept lazy: they need h5py); each registers once, on import,
    so importing them all is right whichever of them was imported before."""
    import importlib

    for module in ("tagger.data.pack", "tagger.data.audioset_hdf5"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def open_clips(path: str | Path, manifest_format: str = "auto", **options) -> Clips:
    """Any labelled data set tagger reads: a pack folder, an AudioSet HDF5 file or a manifest (with its
    options: folds, split, audio_dir)."""
    path = Path(path)
    if not path.exists():
        raise TaggerError(f"{path} does not exist; give a manifest, a pack folder or an AudioSet HDF5 file")
    _load_openers()
    for recognise, opener in _OPENERS:
        if recognise(path):
            given = [k for k, v in options.items() if v] + (["manifest_format"] if manifest_format != "auto" else [])
            if given:
                given = ", ".join(given)
                raise TaggerError(f"{path} is a stored data set; {given} apply to manifests only")
            return opener(path)
    return from_manifest(path, manifest_format, **options)
