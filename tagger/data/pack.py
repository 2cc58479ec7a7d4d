"""Packs made by `tagger pack`: the on-disk format, the global index, and a random-access reader of clips.

A pack is a folder: pack.json (settings), shard-00000.h5 ... (each a fixed slice of the manifest's clips: the
encoded audio, rates, lengths, ids, labels and the clips that could not be read), and index/ (the same columns
for all clips as memory-mapped .npy files, rebuilt from the shards whenever it is missing). See docs/pack.md.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import soundfile as sf

from tagger import audio
from tagger.data.clips import Clips, register_format
from tagger.data.table import ClipTable, LabelColumn, StringColumn
from tagger.errors import TaggerError
from tagger.fileio import atomic_write_json

FORMAT = "tagger-pack"
VERSION = 1
CODECS = ("flac", "mp3", "pcm16")
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # what libmp3lame encodes
OPEN_SHARDS = 256  # file descriptors kept open per process: a balanced sampler hops between all shards
_COLUMNS = ("shard", "row", "num_samples", "sample_rate", "byte_offset", "byte_length")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.h5"


def is_pack(path: Path) -> bool:
    return path.is_dir() and (path / "pack.json").is_file()


def read_meta(folder: Path) -> dict:
    """pack.json, checked to be one this version of tagger reads."""
    try:
        meta = json.loads((folder / "pack.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TaggerError(f"{folder / 'pack.json'} cannot be read ({error}); pack again into a new folder") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TaggerError(f"{folder / 'pack.json'} is not a tagger pack description; choose another folder")
    if meta.get("version") != VERSION:
        raise TaggerError(f"{folder} is a version {meta.get('version')} pack; this tagger reads version {VERSION}: "
                          "pack the data again")
    return meta


def missing_shards(folder: Path, meta: dict) -> list[int]:
    return [i for i in range(meta["shards"]) if not (folder / shard_name(i)).is_file()]


def finish_command(folder: Path, meta: dict) -> str:
    """The `tagger pack` command line that made (and so finishes) this pack."""
    words = ["tagger", "pack", meta["source"], "--out", str(folder), "--codec", meta["codec"],
             "--shard-size", str(meta["shard_size"])]
    if meta["sample_rate"] is not None:
        words += ["--sample-rate", str(meta["sample_rate"])]
    for option, value in meta.get("manifest_options", {}).items():
        if value is not None:
            words += [f"--{option.replace('_', '-')}", str(value)]
    return shlex.join(words)


def incomplete_message(folder: Path, meta: dict, missing: list[int]) -> str:
    shown = ", ".join(str(i) for i in missing[:8]) + (", ..." if len(missing) > 8 else "")
    return (f"pack {folder} is incomplete: {len(missing)} of {meta['shards']} shards missing ({shown}); "
            f"finish it with `{finish_command(folder, meta)}`")


# ----------------------------------------------------------------------------------------------------------
# Encoded audio


def decode(codec: str, data: bytes) -> np.ndarray:
    """Mono float32 samples of one stored clip (soundfile and ValueError exceptions on corrupt bytes)."""
    if codec == "pcm16":
        if len(data) % 2:
            raise ValueError("odd number of bytes for 16-bit samples")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768)  # libsndfile's scale
    wave, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(wave[:, 0])


# ----------------------------------------------------------------------------------------------------------
# The global index


def read_shard_columns(path: Path) -> dict:
    """One shard's small columns (everything but the audio bytes)."""
    import h5py

    with h5py.File(path, "r") as handle:
        columns = {name: handle[name][()] for name in ("ids_data", "ids_offsets", "labels_indptr",
                                                      "labels_indices", "num_samples", "sample_rate",
                                                      "audio_offsets")}
        # Where the contiguous audio bytes start in the file (None for a shard without clips).
        columns["audio_start"] = handle["audio"].id.get_offset() or 0
        columns["vocabulary"] = [v.decode("utf-8") for v in handle["labels_vocabulary"][()]]
        columns["errors"] = list(zip((p.decode("utf-8") for p in handle["errors_path"][()]),
                                     (r.decode("utf-8") for r in handle["errors_reason"][()]), strict=True))
    return columns


def build_index(folder: Path, meta: dict) -> int:
    """Write index/ from the shards (all must exist) and record the clip count in pack.json; returns it.

    Built in a temporary folder and renamed, so a reader never sees half an index; when two `--shard` runs
    finish together, the one that renames second finds the index already there and drops its own copy.
    """
    parts = [read_shard_columns(folder / shard_name(i)) for i in range(meta["shards"])]
    vocabulary: dict[str, int] = {}
    id_data, id_offsets, indptr, indices = [], [np.zeros(1, np.int64)], [np.zeros(1, np.int64)], []
    shard, row, starts, sizes = [], [], [], []
    id_end = label_end = 0
    for i, part in enumerate(parts):
        lookup = np.array([vocabulary.setdefault(v, len(vocabulary)) for v in part["vocabulary"]], dtype=np.int32)
        id_data.append(part["ids_data"])
        id_offsets.append(part["ids_offsets"][1:] + id_end)
        indptr.append(part["labels_indptr"][1:] + label_end)
        indices.append(lookup[part["labels_indices"]] if len(lookup) else part["labels_indices"])
        id_end += int(part["ids_offsets"][-1])
        label_end += int(part["labels_indptr"][-1])
        count = len(part["num_samples"])
        shard.append(np.full(count, i, dtype=np.int32))
        row.append(np.arange(count, dtype=np.int32))
        starts.append(part["audio_start"] + part["audio_offsets"][:-1])
        sizes.append(np.diff(part["audio_offsets"]))
    columns = {
        "shard": np.concatenate(shard), "row": np.concatenate(row),
        "byte_offset": np.concatenate(starts).astype(np.int64), "byte_length": np.concatenate(sizes).astype(np.int64),
        "num_samples": np.concatenate([p["num_samples"] for p in parts]).astype(np.int64),
        "sample_rate": np.concatenate([p["sample_rate"] for p in parts]).astype(np.int32),
    }
    ids = StringColumn(np.concatenate(id_data).astype(np.uint8), np.concatenate(id_offsets).astype(np.int64))
    labels = LabelColumn(np.concatenate(indptr).astype(np.int64), np.concatenate(indices).astype(np.int32),
                         list(vocabulary))

    target = folder / "index"
    tmp = folder / f".index.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        ids.save(tmp, "ids")
        labels.save(tmp, "labels")
        for name, values in columns.items():
            np.save(tmp / f"{name}.npy", values)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    errors = sum(len(p["errors"]) for p in parts)
    atomic_write_json(folder / "pack.json", {**meta, "clips": len(ids), "unreadable": errors})
    return len(ids)


# ----------------------------------------------------------------------------------------------------------
# Reading


class PackAudio:
    """Clips decoded from a pack's shards: columns memory-mapped, shard files opened lazily in each process and
    read with pread at the byte offsets the index records (one system call per clip, no HDF5 library call)."""

    def __init__(self, folder: Path, codec: str):
        self.folder = Path(folder)
        self.codec = codec
        index = self.folder / "index"
        self.columns = {name: np.load(index / f"{name}.npy", mmap_mode="r") for name in _COLUMNS}
        self._pid = os.getpid()
        self._open: OrderedDict[int, int] = OrderedDict()  # shard -> file descriptor

    def __getstate__(self) -> dict:
        # Pickling a memmap copies it; a worker maps the same files again instead (and opens its own handles).
        return {"folder": self.folder, "codec": self.codec}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["codec"])

    def where(self, index: int) -> str:
        return f"{self.folder / shard_name(int(self.columns['shard'][index]))} row {int(self.columns['row'][index])}"

    def encoded(self, index: int) -> bytes:
        """Clip `index` as stored (FLAC/MP3 file bytes or raw 16-bit samples)."""
        length = int(self.columns["byte_length"][index])
        data = os.pread(self._descriptor(int(self.columns["shard"][index])), length,
                        int(self.columns["byte_offset"][index]))
        if len(data) != length:
            raise OSError(f"the shard ends {length - len(data)} bytes early")
        return data

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        try:
            wave = decode(self.codec, self.encoded(index))
        except (sf.SoundFileError, ValueError, OSError) as error:
            raise TaggerError(f"{self.where(index)}: cannot decode the stored {self.codec} audio ({error}); "
                              "pack that shard again (delete it and rerun tagger pack)") from None
        if len(wave) != self.columns["num_samples"][index] or not np.isfinite(wave).all():
            raise TaggerError(f"{self.where(index)}: stored audio is damaged (length or values differ from the "
                              "index); pack that shard again (delete it and rerun tagger pack)")
        return audio.resample(wave, int(self.columns["sample_rate"][index]), sample_rate)

    def _descriptor(self, shard: int) -> int:
        """A shard's file descriptor, from a per-process LRU (descriptors cost no memory; opening is cheap)."""
        if self._pid != os.getpid():  # forked: leave the parent's descriptors to the parent
            self._open = OrderedDict()
            self._pid = os.getpid()
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        if len(self._open) >= OPEN_SHARDS:
            os.close(self._open.popitem(last=False)[1])
        self._open[shard] = os.open(self.folder / shard_name(shard), os.O_RDONLY)
        return self._open[shard]


def open_pack(path: Path) -> Clips:
    """A complete pack as Clips; its index is rebuilt first when only the shards are there."""
    folder = Path(path)
    meta = read_meta(folder)
    missing = missing_shards(folder, meta)
    if missing:
        raise TaggerError(incomplete_message(folder, meta, missing))
    if not (folder / "index").is_dir():
        build_index(folder, meta)
    index = folder / "index"
    table = ClipTable(StringColumn.load(index, "ids"), LabelColumn.load(index, "labels"))
    reader = PackAudio(folder, meta["codec"])
    rates = reader.columns["sample_rate"]
    rate = meta["sample_rate"]
    if rate is None and len(rates) and rates.min() == rates.max():
        rate = int(rates[0])
    return Clips(table, reader, folder, "pack", sample_rate=rate)


register_format(is_pack, open_pack)
