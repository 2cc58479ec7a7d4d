"""Columns for millions of clips: strings and label sets in a few flat numpy arrays, never one object per clip.

Forked DataLoader workers share these arrays without copying them (a numpy buffer has one reference count, not
one per clip), and a pack stores them as .npy files that open memory-mapped in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError
from tagger.labels import LabelSet


class StringColumn:
    """N strings as one UTF-8 byte buffer plus N+1 offsets."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data = data
        self.offsets = offsets

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> StringColumn:
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.data[start:end].tobytes().decode("utf-8")

    def tolist(self) -> list[str]:
        blob = self.data.tobytes()
        bounds = self.offsets.tolist()
        return [blob[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def take(self, rows: np.ndarray) -> StringColumn:
        return StringColumn.from_strings(self[int(i)] for i in rows)

    def save(self, folder: Path, name: str) -> None:
        np.save(folder / f"{name}_data.npy", self.data)
        np.save(folder / f"{name}_offsets.npy", self.offsets)

    @classmethod
    def load(cls, folder: Path, name: str) -> StringColumn:
        return cls(np.load(folder / f"{name}_data.npy", mmap_mode="r"),
                   np.load(folder / f"{name}_offsets.npy", mmap_mode="r"))


class LabelColumn:
    """Each clip's labels as CSR: `indices[indptr[i]:indptr[i+1]]` index into `vocabulary` (label ids or names
    as the data set writes them). Dense targets are made only for the rows a batch asks for."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, vocabulary: Sequence[str]):
        self.indptr = indptr
        self.indices = indices
        self.vocabulary = list(vocabulary)

    @classmethod
    def from_lists(cls, label_lists: Iterable[Sequence[str]]) -> LabelColumn:
        position: dict[str, int] = {}
        indices: list[int] = []
        indptr = [0]
        for labels in label_lists:
            for label in dict.fromkeys(labels):  # once per clip, as in a multi-hot row
                indices.append(position.setdefault(label, len(position)))
            indptr.append(len(indices))
        return cls(np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int32), list(position))

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, index: int) -> tuple[str, ...]:
        return tuple(self.vocabulary[i] for i in self.indices[self.indptr[index]:self.indptr[index + 1]])

    def tolists(self) -> list[tuple[str, ...]]:
        """Every clip's labels (for small sets and tests)."""
        return [self.row(i) for i in range(len(self))]

    def take(self, rows: np.ndarray) -> LabelColumn:
        return LabelColumn.from_lists(self.row(int(i)) for i in rows)

    def counts(self) -> np.ndarray:
        """Clips per vocabulary entry."""
        return np.bincount(self.indices, minlength=len(self.vocabulary)).astype(np.int64)

    def row_ids(self) -> np.ndarray:
        """For every stored label, the clip it belongs to (same length as `indices`)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))

    def column_map(self, labels: LabelSet) -> np.ndarray:
        """Vocabulary index -> class index of `labels`; unknown labels fail here, all named at once."""
        columns = np.full(len(self.vocabulary), -1, dtype=np.int64)
        unknown: dict[str, int] = {}
        counts = self.counts()
        for i, label in enumerate(self.vocabulary):
            if label in labels:
                columns[i] = labels.index(label)
            elif counts[i]:
                unknown[label] = int(counts[i])
        if unknown:
            raise TaggerError(labels._unknown_message(unknown))
        return columns

    def dense(self, rows: np.ndarray | Sequence[int], columns: np.ndarray, num_classes: int) -> np.ndarray:
        """(len(rows), num_classes) float32 multi-hot targets of the given clips only."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.zeros((len(rows), num_classes), dtype=np.float32)
        for k, row in enumerate(rows):
            out[k, columns[self.indices[self.indptr[row]:self.indptr[row + 1]]]] = 1.0
        return out

    def single(self, columns: np.ndarray) -> np.ndarray:
        """(N,) class index of single-label clips; a clip with no or several labels fails, named."""
        sizes = np.diff(self.indptr)
        bad = np.flatnonzero(sizes != 1)
        if len(bad):
            raise TaggerError(f"clip {int(bad[0])} has {int(sizes[bad[0]])} labels; a single-label (multiclass) "
                              "task needs exactly one per clip")
        return columns[self.indices[self.indptr[:-1]]]

    def save(self, folder: Path, name: str = "labels") -> None:
        np.save(folder / f"{name}_indptr.npy", self.indptr)
        np.save(folder / f"{name}_indices.npy", self.indices)
        StringColumn.from_strings(self.vocabulary).save(folder, f"{name}_vocabulary")

    @classmethod
    def load(cls, folder: Path, name: str = "labels") -> LabelColumn:
        vocabulary = StringColumn.load(folder, f"{name}_vocabulary").tolist()
        return cls(np.load(folder / f"{name}_indptr.npy", mmap_mode="r"),
                   np.load(folder / f"{name}_indices.npy", mmap_mode="r"), vocabulary)


class ClipTable:
    """The columns every data set has: clip ids and label sets (where the audio is lives in the reader)."""

    def __init__(self, ids: StringColumn, labels: LabelColumn):
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} ids but {len(labels)} label rows")
        self.ids = ids
        self.labels = labels

    @classmethod
    def from_lists(cls, ids: Sequence[str], label_lists: Sequence[Sequence[str]]) -> ClipTable:
        return cls(StringColumn.from_strings(ids), LabelColumn.from_lists(label_lists))

    def __len__(self) -> int:
        return len(self.ids)
