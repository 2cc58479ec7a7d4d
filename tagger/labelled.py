"""The labelled data sets commands read, opened one way: `open_clips` plus the few adapters evaluation needs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tagger.data.clips import Clips, FileAudio, open_clips
from tagger.data.manifests import Example
from tagger.data.table import ClipTable, StringColumn
from tagger.errors import TaggerError


def open_labelled(path: str | Path, manifest_format: str = "auto", **options) -> Clips:
    """`open_clips`, where an explicit manifest format also counts among the options a stored set refuses."""
    clips = open_clips(path, manifest_format, **options)
    if manifest_format != "auto" and not isinstance(clips.audio, FileAudio):
        raise TaggerError(f"{path} is a stored data set; manifest_format applies to manifests only")
    return clips


def examples_as_clips(examples: Sequence[Example], source: Path = Path("."), fmt: str = "examples") -> Clips:
    """Examples already read from a manifest, as the columns and file reader `open_clips` gives for it."""
    table = ClipTable.from_lists([e.id for e in examples], [e.labels for e in examples])
    return Clips(table, FileAudio(StringColumn.from_strings(str(e.path) for e in examples)), source, fmt)


def subset(clips: Clips, rows: Sequence[int]) -> Clips:
    """The given clips of a data set, in that order, reading their audio from the same place."""
    rows = np.asarray(rows, dtype=np.int64)
    table = ClipTable(clips.table.ids.take(rows), clips.table.labels.take(rows))
    # Files stay files, so that long ones are still streamed.
    audio = FileAudio(clips.audio.paths.take(rows)) if isinstance(clips.audio, FileAudio) else _Rows(clips.audio, rows)
    return Clips(table, audio, clips.source, clips.format, sample_rate=clips.sample_rate)


class _Rows:
    """Audio of some rows of another reader."""

    def __init__(self, audio, rows: np.ndarray):
        self.base, self.rows = audio, rows

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        return self.base.load(int(self.rows[index]), sample_rate)

    def where(self, index: int) -> str:
        return self.base.where(int(self.rows[index]))
