"""Consistent teacher targets: a teacher's top-K logits for stored draws (crop, gain) of each clip, which the
student replays sample for sample.

`tagger teach` (teach.py) writes them, `tagger train --teacher-targets` reads them. Both sides build an input with
the same two functions: `choose_draw` (the parameters of draw d of clip i, from a generator seeded by (seed, i,
d)) and `draw_input` (those parameters applied to the decoded clip), so the student's input for a stored draw is
the teacher's, bit for bit, whenever both run at the same sample rate.

On disk (docs/training.md), in the style of a pack: a folder with teach.json (the settings, the teacher's
fingerprint and classes) and shard-00000.h5 ... (each a fixed slice of the data set's clips, written whole and
renamed). A shard's arrays are contiguous, so the reader maps them from the file without reading them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError
from tagger.labels import LabelSet

FORMAT = "tagger-teacher-targets"
VERSION = 1
META = "teach.json"
SETTINGS = ("teacher_fingerprint", "crops", "top_k", "seed", "clip_seconds", "gain_db", "shard_size", "clip_digest")
FP16_MAX = 65504.0
_ARRAYS = ("start", "gain_db", "topk_indices", "topk_logits")


def teacher_fingerprint(path: Path) -> str:
    """Changes when the teacher file changes (path, size, modification time). Label enhancement keys its score
    cache by the same string (plus its clip length), so "the same teacher" means one thing in both stores."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.h5"


# ------------------------------------------------------------------------------------------ draws


def choose_draw(seed: int, clip: int, draw: int, length: int, num_samples: int, gain_db: int) -> tuple[int, int, int]:
    """(start, gain in dB, draw seed) of draw `draw` of clip `clip` (its position in the taught data set).

    The distributions are training's: the crop starts anywhere the clip allows (`audio.crop_or_pad_from`: a clip
    shorter than the crop gets its zeros split at random, and `start` is then minus the zeros that come first),
    the gain is an integer dB in [-gain_db, gain_db - 1] (`augment.random_gain`). The draw seed is recorded for
    augmentations that a later version may replay; nothing reads it yet.
    """
    rng = np.random.default_rng([seed, clip, draw])
    offset = int(rng.integers(0, abs(length - num_samples) + 1))
    db = int(rng.integers(2 * gain_db)) - gain_db if gain_db > 0 else 0
    return (offset if length >= num_samples else -offset), db, int(rng.integers(2**31))


def start_at(start: int, from_rate: int, to_rate: int) -> int:
    """A crop start recorded at one rate, at another (the nearest sample; unchanged at the same rate)."""
    return start if from_rate == to_rate else int(round(start * to_rate / from_rate))


def draw_input(wave: np.ndarray, num_samples: int, start: int, gain_db: int) -> np.ndarray:
    """The input a draw gives: `num_samples` samples of `wave` from `start` (zeros wherever that runs past either
    end), times the gain, as float32. The teacher's input and the student's both come from here."""
    out = np.zeros(num_samples, dtype=np.float32)
    first, last = max(start, 0), min(start + num_samples, len(wave))
    if last > first:
        out[first - start:last - start] = wave[first:last]
    if gain_db:
        out = out * float(10.0 ** (gain_db / 20.0))  # random_gain's arithmetic: a Python float keeps float32
    return out


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of each row's k largest logits, largest first: int16 indices when the classes allow,
    fp16 values (clipped to the fp16 range, so a huge logit stays finite)."""
    k = min(k, logits.shape[-1])
    index = np.argsort(-logits, axis=-1, kind="stable")[..., :k]
    values = np.clip(np.take_along_axis(logits, index, axis=-1), -FP16_MAX, FP16_MAX).astype(np.float16)
    return index.astype(np.int16 if logits.shape[-1] <= np.iinfo(np.int16).max else np.int32), values


def soft_targets(logits: np.ndarray, temperature: float, exclusive: bool = False) -> np.ndarray:
    """A teacher's soft targets as float32: sigmoid(logits / T) for tags (the `loss.teacher` semantics), or for
    single-label (multiclass) runs softmax(logits / T) over the last axis, so they sum to 1 as a cross-entropy
    target must. Top-K logits give the softmax over those K classes: the rest count as probability 0."""
    scaled = np.asarray(logits, dtype=np.float32) / temperature
    if not exclusive:
        return (1.0 / (1.0 + np.exp(-scaled))).astype(np.float32)
    shifted = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------ the folder


def read_meta(folder: Path) -> dict | None:
    """teach.json, or None when the folder holds none."""
    path = folder / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TaggerError(f"{path} cannot be read ({error}); run tagger teach into a new --out") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TaggerError(f"{path} does not describe teacher targets; choose another folder")
    if meta.get("version") != VERSION:
        raise TaggerError(f"{folder} holds version {meta.get('version')} teacher targets; this tagger reads version "
                          f"{VERSION}: run tagger teach again")
    return meta


def missing_shards(folder: Path, meta: dict) -> list[int]:
    return [i for i in range(meta["shards"]) if not (folder / shard_name(i)).is_file()]


def write_shard(path: Path, meta: dict, shard: int, ids: list[str], clips: list[int], draws: np.ndarray,
                indices: np.ndarray, logits: np.ndarray, errors: list[tuple[str, str]]) -> None:
    """One whole shard, atomically. draws (n, N, 3): start, gain, seed; indices and logits (n, N, K)."""
    import h5py

    from tagger.data.table import StringColumn
    from tagger.fileio import atomic_path

    strings = h5py.string_dtype("utf-8")
    column = StringColumn.from_strings(ids)
    first = shard * meta["shard_size"]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs.update({"format": FORMAT, "version": VERSION, "shard": shard, "first_clip": first,
                             "end_clip": min(first + meta["shard_size"], meta["source_clips"]),
                             **{key: meta[key] for key in ("teacher_fingerprint", "crops", "top_k", "seed",
                                                           "clip_seconds", "gain_db", "sample_rate")}})
        handle["ids_data"], handle["ids_offsets"] = column.data, column.offsets
        handle["clip"] = np.asarray(clips, dtype=np.int64)  # position in the taught data set
        # Plain contiguous datasets (no chunks, no compression): the reader maps them straight from the file.
        handle["start"] = draws[..., 0].astype(np.int64)
        handle["gain_db"] = draws[..., 1].astype(np.int8)
        handle["seed"] = draws[..., 2].astype(np.int32)
        handle["topk_indices"], handle["topk_logits"] = indices, logits
        handle.create_dataset("label_ids", data=meta["label_ids"], dtype=strings)
        handle.create_dataset("label_names", data=meta["label_names"], dtype=strings)
        handle.create_dataset("errors_id", data=[e[0] for e in errors], dtype=strings)
        handle.create_dataset("errors_reason", data=[e[1] for e in errors], dtype=strings)


def shard_ids(path: Path) -> list[str]:
    """The ids of the clips a shard stores, in row order."""
    import h5py

    from tagger.data.table import StringColumn

    with h5py.File(path, "r") as handle:
        return StringColumn(handle["ids_data"][()], handle["ids_offsets"][()]).tolist()


def _mapped(path: Path) -> dict[str, np.ndarray]:
    """A shard's per-draw arrays, mapped from the file (read when a shard holds no clips)."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as handle:
        for name in _ARRAYS:
            data = handle[name]
            offset = data.id.get_offset()
            arrays[name] = (data[()] if offset is None or data.chunks is not None or not data.size else
                            np.memmap(path, dtype=data.dtype, mode="r", offset=offset, shape=data.shape))
    return arrays


class TeacherTargets:
    """A finished `tagger teach` folder: per stored clip (rows in shard order) its N draws' parameters and top-K
    logits, mapped from the shards; the arrays are mapped again in each process that reads them."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = folder, meta
        self.labels = LabelSet(meta["label_ids"], meta["label_names"])
        counts = [int(n) for n in meta["shard_clips"]]
        self.bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # rows of shard i: bounds[i:i+2]
        self._maps: list[dict[str, np.ndarray]] | None = None
        self._pid = -1

    @classmethod
    def open(cls, folder: str | Path) -> TeacherTargets:
        folder = Path(folder)
        meta = read_meta(folder) if folder.is_dir() else None
        if meta is None:
            raise TaggerError(f"{folder} holds no teacher targets (no {META}); make them with tagger teach TEACHER "
                              f"DATA --out {folder}")
        missing = missing_shards(folder, meta)
        if missing or meta.get("shard_clips") is None:
            raise TaggerError(f"{folder} is incomplete ({len(missing)} of {meta['shards']} shards missing); finish it "
                              "by rerunning the tagger teach command that started it")
        return cls(folder, meta)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None, "_pid": -1}  # workers map the files themselves

    @property
    def crops(self) -> int:
        return int(self.meta["crops"])

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    @property
    def clip_seconds(self) -> float:
        return float(self.meta["clip_seconds"])

    def rows_for(self, ids: list[str]) -> np.ndarray:
        """The stored row of each id (-1 where the folder has none), matched by clip id."""
        row: dict[str, int] = {}
        for shard in range(self.meta["shards"]):
            names = shard_ids(self.folder / shard_name(shard))
            row.update(zip(names, range(int(self.bounds[shard]), int(self.bounds[shard + 1])), strict=True))
        return np.array([row.get(clip, -1) for clip in ids], dtype=np.int64)

    def draw(self, row: int, draw: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(start, gain in dB, top-K class indices, top-K logits as float32) of one stored draw."""
        if self._maps is None or self._pid != os.getpid():
            self._maps = [_mapped(self.folder / shard_name(i)) for i in range(self.meta["shards"])]
            self._pid = os.getpid()
        shard = int(np.searchsorted(self.bounds, row, side="right")) - 1
        arrays, local = self._maps[shard], row - int(self.bounds[shard])
        return (int(arrays["start"][local, draw]), int(arrays["gain_db"][local, draw]),
                np.asarray(arrays["topk_indices"][local, draw], dtype=np.int64),
                np.asarray(arrays["topk_logits"][local, draw], dtype=np.float32))
