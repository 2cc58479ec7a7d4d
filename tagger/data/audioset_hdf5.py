"""Read the AudioSet HDF5 files users already have (PaSST/EfficientAT mp3 files, PANNs waveform and index files).

Layouts, as the official scripts write them (datasets found by name; extra datasets are ignored):

- PaSST / EfficientAT (`audioset/prepare_scripts/create_h5pymp3_dataset.py`): `audio_name` S20
  (`Y<YTID>.mp3`; `<part>/Y<YTID>.mp3` in the unbalanced file), `mp3` vlen uint8 (one 32 kHz mp3 per clip),
  `target` uint8 (N, 66): the 527 classes packed with `np.packbits` (big bit order).
- PANNs waveforms (`utils/dataset.py pack_waveforms_to_hdf5`): `audio_name` S20 (`Y<YTID>.wav`), `waveform`
  int16 (N, 320000), `target` bool (N, 527), attribute `sample_rate` 32000. Clips that failed to download keep
  an empty name and silence; they are skipped here.
- PANNs indexes (`utils/create_indexes.py`): `audio_name`, `target` bool, `hdf5_path` S200 and
  `index_in_hdf5` int32 pointing into waveform files (`full_train.h5` combines balanced + 41 unbalanced parts).

Ids are the names as the files write them. Class columns follow AudioSet's `class_labels_indices.csv`, which
the files do not carry, so it is looked up near the file.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf

from tagger import audio
from tagger.data.clips import Clips, register_format
from tagger.data.table import ClipTable, LabelColumn, StringColumn
from tagger.errors import TaggerError
from tagger.labels import LabelSet

SUFFIXES = (".h5", ".hdf", ".hdf5")
SAMPLE_RATE = 32000  # every official layout is written at 32 kHz
LABEL_FILE = "class_labels_indices.csv"
LABEL_URL = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv"
PANNS_SCALE = 32767.0  # PANNs' int16_to_float32 divides by 32767, not 32768
LAYOUTS = {  # checked in this order: an index file has no audio dataset, the others no hdf5_path
    "mp3": ({"audio_name", "mp3", "target"}, "PaSST mp3 HDF5"),
    "waveform": ({"audio_name", "waveform", "target"}, "PANNs waveform HDF5"),
    "index": ({"audio_name", "target", "hdf5_path", "index_in_hdf5"}, "PANNs index HDF5"),
}
CHUNK = 65536  # rows read at once when scanning names, targets and part paths


def _layout(path: Path) -> str | None:
    if path.suffix.lower() not in SUFFIXES or not path.is_file():
        return None
    try:
        if not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as handle:
            keys = set(handle.keys())
    except OSError:
        return None
    return next((name for name, (needed, _) in LAYOUTS.items() if needed <= keys), None)


def is_audioset_hdf5(path: Path) -> bool:
    """An .h5/.hdf/.hdf5 file with the datasets of one of the official layouts (opens only its header)."""
    return _layout(Path(path)) is not None


def find_label_file(path: Path) -> Path:
    """`class_labels_indices.csv` beside the file, in a folder above it (up to three) or a `metadata/` there:
    PaSST keeps it in `<base>/metadata/` beside `<base>/mp3/`, PANNs workspaces are three levels deep."""
    path = Path(path).resolve()
    folders = [path.parent, *list(path.parent.parents)[:3]]
    for folder in folders:
        for candidate in (folder / LABEL_FILE, folder / "metadata" / LABEL_FILE):
            if candidate.is_file():
                return candidate
    raise TaggerError(f"no {LABEL_FILE} found for {path} (the file has no class names); download {LABEL_URL} "
                      f"and put it beside the file or in {path.parent.parent / 'metadata'}")


class _Handles:
    """A few open HDF5 files of this process. h5py handles must not cross a fork, so a worker that inherits
    them (or unpickles a reader) opens its own on first use."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._pid: int | None = None
        self._open: OrderedDict[Path, h5py.File] = OrderedDict()

    def get(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():
            self._pid, self._open = os.getpid(), OrderedDict()  # inherited handles are dropped, never used
        handle = self._open.pop(path, None)
        if handle is None:
            try:
                handle = h5py.File(path, "r")
            except OSError as error:
                raise TaggerError(f"cannot open {path} ({error}); check that the file is complete") from None
            while len(self._open) >= self.keep:
                self._open.popitem(last=False)[1].close()
        self._open[path] = handle  # most recently used last
        return handle

    def __getstate__(self) -> dict:
        return {"keep": self.keep}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["keep"])


class _RowAudio:
    """Clip i is row `rows[i]` of one HDF5 file (rows with empty names are left out of the table)."""

    def __init__(self, path: Path, rows: np.ndarray):
        self.path = path
        self.rows = rows
        self._handles = _Handles()

    def where(self, index: int) -> str:
        return f"{self.path} row {int(self.rows[index])}"


class Mp3Audio(_RowAudio):
    """PaSST/EfficientAT files: one mp3 per row, decoded with libsndfile (mpg123) and returned at its decoded
    length; the datasets pad or crop later, as the official loaders do after decoding."""

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        data = self._handles.get(self.path)["mp3"][int(self.rows[index])]
        if len(data) == 0:
            raise TaggerError(f"{self.where(index)} holds no mp3 bytes; re-create the file or drop the clip")
        try:
            wave, rate = sf.read(io.BytesIO(data.tobytes()), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            reason = getattr(error, "error_string", str(error))
            raise TaggerError(f"{self.where(index)}: cannot decode its mp3 bytes ({reason}); "
                              "re-create the file or drop the clip") from None
        if len(wave) == 0:
            raise TaggerError(f"{self.where(index)}: its mp3 decodes to no samples; re-create the file or drop "
                              "the clip")
        return audio.resample(wave.mean(axis=1), rate, sample_rate)


class WaveformAudio(_RowAudio):
    """PANNs files: int16 rows scaled as PANNs' int16_to_float32 does."""

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        handle = self._handles.get(self.path)
        return _scaled(handle, int(self.rows[index]), sample_rate)


def _scaled(handle: h5py.File, row: int, sample_rate: int) -> np.ndarray:
    wave = handle["waveform"][row].astype(np.float32) / np.float32(PANNS_SCALE)
    return audio.resample(wave, int(handle.attrs.get("sample_rate", SAMPLE_RATE)), sample_rate)


class IndexAudio:
    """PANNs index files: clip i is row `rows[i]` of waveform file `parts[part[i]]`."""

    def __init__(self, path: Path, parts: list[Path], part: np.ndarray, rows: np.ndarray):
        self.path = path
        self.parts = parts
        self.part = part
        self.rows = rows
        self._handles = _Handles(keep=8)  # a shuffled epoch over 42 parts touches them all; keep the recent few

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        handle = self._handles.get(self.parts[int(self.part[index])])
        return _scaled(handle, int(self.rows[index]), sample_rate)

    def where(self, index: int) -> str:
        return f"{self.parts[int(self.part[index])]} row {int(self.rows[index])}"


def _names(dataset: h5py.Dataset) -> tuple[StringColumn, np.ndarray]:
    """Ids from the fixed-width names, without one Python string per clip, and which rows have a name."""
    names = dataset[()]
    if names.dtype.kind != "S":  # variable-length strings: not what the official scripts write, still fine
        names = np.array([n.encode() if isinstance(n, str) else bytes(n) for n in names], dtype=bytes)
    width = max(names.dtype.itemsize, 1)
    lengths = np.char.str_len(names)
    keep = lengths > 0
    matrix = np.frombuffer(names.tobytes(), dtype=np.uint8).reshape(len(names), width)[keep]
    lengths = lengths[keep]
    data = matrix[np.arange(width) < lengths[:, None]]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return StringColumn(np.ascontiguousarray(data), offsets), keep


def _label_lists(target: h5py.Dataset, packed: bool) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, column indices) from (N, C) multi-hot or (N, ceil(C/8)) packbits targets, chunk by chunk.

    Works on packed bytes even for multi-hot files: finding the few set bits among the mostly-zero bytes is
    3x faster than np.nonzero over the unpacked (N, 527) block, which
    matters for 2 M rows."""
    indptr = np.zeros(len(target) + 1, dtype=np.int64)
    parts = []
    for start in range(0, len(target), CHUNK):
        block = target[start:start + CHUNK]
        block = block if packed else np.packbits(block > 0, axis=-1)
        rows, byte = np.nonzero(block)  # row-major, so columns come out sorted within each row
        row_of_bit, bit = np.nonzero(np.unpackbits(block[rows, byte][:, None], axis=1))
        parts.append((byte[row_of_bit] * 8 + bit).astype(np.int32))
        indptr[start + 1:start + 1 + len(block)] = np.bincount(rows[row_of_bit], minlength=len(block))
    np.cumsum(indptr, out=indptr)
    return indptr, (np.concatenate(parts) if parts else np.zeros(0, np.int32))


def _labels(path: Path, target: h5py.Dataset, label_file: Path, keep: np.ndarray) -> LabelColumn:
    classes = LabelSet.from_csv(label_file).ids
    width = target.shape[1] if target.ndim == 2 else 0
    packed = width != len(classes) and target.dtype == np.uint8 and width == -(-len(classes) // 8)
    if width != len(classes) and not packed:
        raise TaggerError(f"{path} has targets of shape {target.shape} but {label_file} lists {len(classes)} "
                          f"classes; use the label file the HDF5 file was written with")
    indptr, indices = _label_lists(target, packed)
    if packed and len(indices) and indices.max() >= len(classes):
        raise TaggerError(f"{path} sets padding bits beyond class {len(classes) - 1} in its packed targets; "
                          f"use the label file the HDF5 file was written with")
    if not keep.all():
        sizes = np.diff(indptr)
        indices = indices[np.repeat(keep, sizes)]
        indptr = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(sizes[keep], out=indptr[1:])
    return LabelColumn(indptr, indices, classes)


def _part_candidates(stored: Path, index_path: Path):
    """The stored path, then its tails under the index file's folder and the two above it: PANNs writes
    absolute (or cwd-relative) paths, and a moved workspace keeps `hdf5s/indexes` beside `hdf5s/waveforms`."""
    yield stored
    tail = [p for p in stored.parts if p not in (stored.anchor, "..", ".")]
    anchors = [index_path.parent, *list(index_path.parent.parents)[:2]]
    for start in range(len(tail)):
        for anchor in anchors:
            yield anchor.joinpath(*tail[start:])


def _resolve_parts(path: Path, dataset: h5py.Dataset, keep: np.ndarray) -> tuple[list[Path], np.ndarray]:
    """Distinct part files (a few dozen among millions of rows) and each kept row's part number."""
    stored: dict[bytes, int] = {}
    part = np.empty(len(dataset), dtype=np.int32)
    for start in range(0, len(dataset), CHUNK):
        unique, inverse = np.unique(dataset[start:start + CHUNK], return_inverse=True)
        number = np.array([stored.setdefault(bytes(u), len(stored)) for u in unique], dtype=np.int32)
        part[start:start + len(inverse)] = number[inverse.reshape(-1)]
    part = part[keep]
    used, part = np.unique(part, return_inverse=True)  # blank rows may name parts no clip needs
    raws = list(stored)
    parts = []
    for number in used:
        name = Path(raws[number].decode("utf-8"))
        # a bare name may also match an index file (PANNs names indexes as their waveform files)
        found = next((c for c in _part_candidates(name, path.resolve()) if _layout(c) == "waveform"), None)
        if found is None:
            raise TaggerError(f"{path} points to {name}, which is not a waveform file there nor under "
                              f"{path.resolve().parent.parent}; put the waveform files back or keep the PANNs "
                              "layout (hdf5s/indexes beside hdf5s/waveforms)")
        parts.append(found)
    return parts, part.reshape(-1).astype(np.int32)


def _check_parts(path: Path, parts: list[Path], part: np.ndarray, rows: np.ndarray) -> None:
    """Fail at open, not hours into training, when a part is shorter than the index says."""
    last = np.full(len(parts), -1, dtype=np.int64)
    np.maximum.at(last, part, rows)
    for number, file in enumerate(parts):
        with h5py.File(file, "r") as handle:  # opened once already by _layout
            size = len(handle["waveform"])
        if last[number] >= size:
            raise TaggerError(f"{path} reads row {int(last[number])} of {file}, which has {size} rows; "
                              "re-create the index for these waveform files")


def open_audioset_hdf5(path: Path) -> Clips:
    """The clips of one official AudioSet HDF5 file, audio read one row per load."""
    path = Path(path)
    layout = _layout(path)
    if layout is None:
        raise TaggerError(f"{path} is not an AudioSet HDF5 file (needs audio_name, target and mp3, waveform or "
                          "hdf5_path + index_in_hdf5)")
    label_file = find_label_file(path)
    with h5py.File(path, "r") as handle:
        ids, keep = _names(handle["audio_name"])
        if len(handle["target"]) != len(keep):
            raise TaggerError(f"{path} has {len(keep)} names but {len(handle['target'])} targets; "
                              "the file is damaged or was not fully written")
        labels = _labels(path, handle["target"], label_file, keep)
        rows = np.flatnonzero(keep)
        if layout == "mp3":
            reader = Mp3Audio(path, rows)
        elif layout == "waveform":
            reader = WaveformAudio(path, rows)
        else:
            parts, part = _resolve_parts(path, handle["hdf5_path"], keep)
            rows = np.asarray(handle["index_in_hdf5"][()], dtype=np.int64)[keep]
            _check_parts(path, parts, part, rows)
            reader = IndexAudio(path, parts, part, rows)
        rate = int(handle.attrs.get("sample_rate", SAMPLE_RATE))
    name = LAYOUTS[layout][1]
    skipped = int(len(keep) - keep.sum())
    if skipped:
        name += f", {skipped} empty row{'s' * (skipped != 1)} skipped"
    return Clips(ClipTable(ids, labels), reader, path, name, sample_rate=rate)


register_format(is_audioset_hdf5, open_audioset_hdf5)
