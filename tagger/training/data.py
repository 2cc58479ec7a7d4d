"""What the training loop reads: clips (audio or cached features) with per-item augmentation and soft targets.

Every random choice of an item (crop, gain, roll, mixup partner and lambda; with teacher targets, which stored
draw it replays) comes from a generator seeded by (seed, epoch, rank, position in the epoch), so a resumed run
draws exactly what the uninterrupted one drew, in any number of DataLoader workers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tagger import audio
from tagger.augment import draw_mix_lambda, mix_waveforms, random_gain, time_roll_by
from tagger.data.clips import Clips, open_clips
from tagger.data.dataset import CachedFeatureDataset
from tagger.data.sampling import WeightedSampler, balanced_weights_csr
from tagger.data.store import FeatureStore, is_store
from tagger.data.table import ClipTable, LabelColumn, StringColumn
from tagger.errors import TaggerError
from tagger.labels import LabelSet
from tagger.training.config import AugmentConfig, DataConfig
from tagger.training.frames import FrameTargets
from tagger.training.teacher_targets import TeacherTargets, draw_input, soft_targets, start_at


@dataclass
class Source:
    """A training or validation set: clips (a manifest, pack or AudioSet HDF5 file) or a feature store made by
    extract-features, with its ids and labels as columns (no per-clip objects, whatever the size)."""

    path: Path
    clips: Clips | None = None  # audio
    store: FeatureStore | None = None  # cached features

    def __post_init__(self) -> None:
        if self.clips is not None:
            self.table = self.clips.table
        else:
            self.table = ClipTable.from_lists(self.store.ids, [tuple(x) for x in self.store.labels])

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> StringColumn:
        return self.table.ids

    @property
    def labels(self) -> LabelColumn:
        return self.table.labels

    @property
    def cached(self) -> bool:
        return self.store is not None


def read_source(path: str | Path, what: str, folds: list[int] | None = None, audio_dir: str | None = None) -> Source:
    """Read `--train`/`--valid`: a manifest (with its folds), a pack, an AudioSet HDF5 file or a feature store."""
    path = Path(path)
    if not path.exists():
        raise TaggerError(f"{what} data {path} does not exist; check the path")
    if is_store(path):
        store = FeatureStore(path)
        if not len(store):
            raise TaggerError(f"{what} feature store {path} holds no clips; run extract-features first")
        return Source(path, store=store)
    clips = open_clips(path, folds=folds, audio_dir=audio_dir)
    if not len(clips):
        raise TaggerError(f"{what} data {path} has no usable clips ({clips.summary()})")
    return Source(path, clips=clips)


def infer_task(source: Source) -> str:
    """multiclass when every clip has exactly one label (ESC-50, Speech Commands), else multilabel."""
    return "multiclass" if bool(np.all(np.diff(source.labels.indptr) == 1)) else "multilabel"


def source_labels(source: Source) -> list[str]:
    """The labels that occur in a data set, sorted (a run's classes when no label file is given)."""
    counts = source.labels.counts()
    return sorted(label for label, count in zip(source.labels.vocabulary, counts, strict=True) if count)


class Targets:
    """Soft-target rows made on demand from CSR labels: a batch expands only its own clips."""

    def __init__(self, labels: LabelColumn, run_labels: LabelSet):
        self.labels = labels
        self.columns = labels.column_map(run_labels)
        self.num_classes = len(run_labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.labels.dense([index], self.columns, self.num_classes)[0]

    def dense(self) -> np.ndarray:
        """Every row at once, for the (small) validation set."""
        return self.labels.dense(np.arange(len(self.labels)), self.columns, self.num_classes)


def encode_targets(labels: LabelSet, source: Source) -> np.ndarray:
    """(N, C) float32 soft-target matrix (multi-hot; one-hot for single-label clips) of a whole (small) set."""
    return Targets(source.labels, labels).dense()


# ------------------------------------------------------------------------------------------ teacher


@dataclass
class Teacher:
    """Stored teacher logits (EfficientAT distillation) as soft targets by clip id: sigmoid(logits / T), or
    softmax(logits / T) for a multiclass run (`exclusive`).

    File layout (`save_teacher` writes it): `ids` (N,) and either `logits` (N, C) or, stored sparsely as CED does,
    `topk_indices` and `topk_logits` (N, K), where classes outside a clip's top K count as probability 0. With
    `label_ids` (C,) (and `label_names`) the columns are matched to this run's classes by id, else by name;
    without them the columns must already be in this run's label order.
    """

    probs: np.ndarray  # (N_teacher, C) float32 in the run's label order
    row: dict[str, int]

    @classmethod
    def load(cls, path: str | Path, labels: LabelSet | int, temperature: float, exclusive: bool = False) -> Teacher:
        path = Path(path)
        if not path.is_file():
            raise TaggerError(f"teacher file {path} does not exist; it must be an .npz with `ids` and `logits`")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            ids = [str(i) for i in arrays["ids"]]
            probs = _teacher_probabilities(arrays, len(ids), temperature, exclusive)
        except (KeyError, ValueError, OSError) as error:
            raise TaggerError(f"{path}: not a teacher file (.npz with arrays `ids` and `logits`): {error}") from None
        except TaggerError as error:
            raise TaggerError(f"{path}: {error}") from None
        probs = _in_run_order(probs, arrays, labels, path)
        return cls(probs, {clip: i for i, clip in enumerate(ids)})

    def lookup(self, clip_id: str) -> tuple[np.ndarray | None, bool]:
        row = self.row.get(clip_id)
        return (None, False) if row is None else (self.probs[row], True)


def _teacher_probabilities(arrays: dict[str, np.ndarray], count: int, temperature: float,
                           exclusive: bool) -> np.ndarray:
    if "logits" in arrays:
        logits = np.asarray(arrays["logits"], dtype=np.float32)
        if logits.ndim != 2 or len(logits) != count:
            raise TaggerError(f"logits {logits.shape} must be (number of ids {count}, classes)")
        columns, rows, values = logits.shape[1], None, logits
    else:
        index = np.asarray(arrays["topk_indices"])
        values = np.asarray(arrays["topk_logits"], dtype=np.float32)
        columns = len(arrays["label_ids"]) if "label_ids" in arrays else int(index.max()) + 1
        if index.shape != values.shape or index.ndim != 2 or len(index) != count or index.min() < 0 \
                or index.max() >= columns:
            raise TaggerError(f"topk_indices {index.shape} and topk_logits {values.shape} must be (ids {count}, K) "
                              f"with indices below {columns}")
        rows = index
    if not np.isfinite(values).all():
        raise TaggerError("teacher logits contain NaN or infinity")
    soft = soft_targets(values, temperature, exclusive)
    if rows is None:
        return soft
    probs = np.zeros((count, columns), dtype=np.float32)
    np.put_along_axis(probs, rows, soft, axis=1)
    return probs


def _in_run_order(probs: np.ndarray, arrays: dict[str, np.ndarray], labels: LabelSet | int, path: Path) -> np.ndarray:
    """Columns reordered to the run's classes when the file names its classes; else checked for count only."""
    size = labels if isinstance(labels, int) else len(labels)
    if "label_ids" not in arrays or isinstance(labels, int):
        if probs.shape[1] != size:
            raise TaggerError(f"{path}: the teacher has {probs.shape[1]} classes but this run has {size}; store "
                              "the teacher's label_ids (tagger enhance-labels --store-teacher-logits does) or "
                              "write the logits in this run's label order")
        return probs
    teacher = LabelSet([str(i) for i in arrays["label_ids"]],
                       [str(n) for n in arrays.get("label_names", arrays["label_ids"])])
    return probs[:, run_columns(teacher, labels, path)]


def run_columns(teacher: LabelSet, labels: LabelSet, path: Path) -> np.ndarray:
    """The teacher's column of each of the run's classes, matched by id, else by display name."""
    columns, absent = [], []
    for label_id, name in zip(labels.ids, labels.names, strict=True):
        found = label_id if label_id in teacher.ids else name if name in teacher else None
        if found is None:
            absent.append(label_id)
        else:
            columns.append(teacher.index(found))
    if absent:
        raise TaggerError(f"{path}: the teacher has no class for {len(absent)} of this run's labels "
                          f"({', '.join(absent[:5])}); distil from a teacher trained on these classes")
    return np.array(columns, dtype=np.int64)


class Replay:
    """Teacher targets of the training clips (`tagger teach`), matched by clip id: an item picks one of its clip's
    stored draws, gets that draw's crop and gain and its top-K soft targets (0 outside the top K; a softmax over
    the K for a multiclass run, `exclusive`)."""

    def __init__(self, store: TeacherTargets, ids: Sequence[str], labels: LabelSet, temperature: float,
                 sample_rate: int, exclusive: bool = False):
        self.store, self.temperature, self.sample_rate = store, temperature, sample_rate
        self.exclusive = exclusive
        self.rows = store.rows_for(list(ids))  # (training clips,) stored row, -1 where the clip has none
        self.columns = run_columns(store.labels, labels, store.folder)

    @property
    def missing(self) -> int:
        return int((self.rows < 0).sum())

    def pick(self, index: int, rng: np.random.Generator) -> tuple[int, int, int, np.ndarray] | None:
        """(draw, crop start at the run's rate, gain in dB, soft targets in the run's classes), or None."""
        row = int(self.rows[index])
        if row < 0:
            return None
        draw = int(rng.integers(self.store.crops))
        start, gain_db, classes, logits = self.store.draw(row, draw)
        probs = np.zeros(len(self.store.labels), dtype=np.float32)
        probs[classes] = soft_targets(logits, self.temperature, self.exclusive)
        return draw, start_at(start, self.store.sample_rate, self.sample_rate), gain_db, probs[self.columns]


def save_teacher(path: str | Path, ids: Sequence[str], logits: np.ndarray, labels: LabelSet | None = None,
                 top_k: int | None = None) -> None:
    """Write teacher logits in the format `loss.teacher` reads (atomically); `labels` lets a run with another
    class order use them, `top_k` keeps only each clip's K largest logits."""
    from tagger.fileio import atomic_path

    logits = np.asarray(logits, dtype=np.float32)
    arrays: dict[str, np.ndarray] = {"ids": np.asarray(list(ids), dtype=str)}
    if labels is not None:
        arrays["label_ids"] = np.asarray(labels.ids, dtype=str)
        arrays["label_names"] = np.asarray(labels.names, dtype=str)
    if top_k is None or top_k >= logits.shape[1]:
        arrays["logits"] = logits
    else:
        if top_k < 1:
            raise TaggerError(f"--top-k {top_k} must be at least 1")
        index = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
        arrays["topk_indices"] = index.astype(np.int32)
        arrays["topk_logits"] = np.take_along_axis(logits, index, axis=1)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


# ------------------------------------------------------------------------------------------ sampling


class PositionedSampler(Sampler):
    """Yields (epoch, position, index): the position in this rank's epoch seeds the item's augmentation."""

    def __init__(self, base: WeightedSampler):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch, start = self.base.epoch, self.base.state_dict()["position"]
        for offset, index in enumerate(self.base):
            yield epoch, start + offset, index


def build_sampler(config: DataConfig, targets: Targets, seed: int, rank: int, world_size: int) -> WeightedSampler:
    """Plain shuffling (uniform weights, no replacement) or class-balanced sampling, split across ranks."""
    count = len(targets)
    length = config.epoch_length or count
    if config.sampler == "shuffle":
        if length > count:
            raise TaggerError(f"data.epoch_length {length} is more than the {count} training clips; "
                              "use data.sampler=balanced to draw with replacement")
        return WeightedSampler(np.ones(count), length, replacement=False, seed=seed, rank=rank,
                               world_size=world_size)
    weights = balanced_weights_csr(targets.labels, targets.columns, targets.num_classes, config.balance_formula)
    return WeightedSampler(weights, length, replacement=config.replacement, seed=seed, rank=rank,
                           world_size=world_size)


# ------------------------------------------------------------------------------------------ datasets


def _item_rng(seed: int, epoch: int, rank: int, position: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, rank, position])


class TrainWaves(Dataset):
    """Training clips as waveforms: random crop, gain, roll, then waveform mixup with a random other clip.

    With `frames` (strong labels), items also hold `frames` (T, C) targets that follow the crop, roll and mixup,
    and `has_frames`: whether they are known (a mix of a strong and a weak clip has none).
    """

    def __init__(self, source: Source, targets: Targets, sample_rate: int, clip_seconds: float,
                 augment: AugmentConfig, seed: int, rank: int = 0, teacher: Teacher | None = None,
                 frames: FrameTargets | None = None, replay: Replay | None = None):
        if source.clips is None:
            raise TaggerError("TrainWaves needs audio clips, not a feature store")
        self.clips = source.clips
        self.targets = targets
        self.sample_rate = sample_rate
        self.num_samples = int(round(clip_seconds * sample_rate))
        self.augment, self.seed, self.rank, self.teacher, self.frames = augment, seed, rank, teacher, frames
        self.replay = replay

    def __len__(self) -> int:
        return len(self.clips)

    def _clip(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """(augmented wave, its frame targets or None) of clip `index`."""
        wave = self.clips.load(index, self.sample_rate)
        wave, start = audio.crop_or_pad_from(wave, self.num_samples, mode="random", generator=rng)
        wave = random_gain(wave, self.augment.gain_db, rng)
        wave, shift = time_roll_by(wave, self.augment.roll, rng)
        frames = self.frames(index, start, shift) if self.frames is not None and self.frames.has(index) else None
        return wave, frames

    def _teacher(self, index: int) -> tuple[np.ndarray, bool]:
        probs, found = self.teacher.lookup(self.clips.ids[index])
        return (probs if found else np.zeros(self.targets.num_classes, np.float32)), found

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        epoch, position, index = key
        rng = _item_rng(self.seed, epoch, self.rank, position)
        if self.replay is not None:
            return self._replayed(index, rng)
        (wave, frames), target = self._clip(index, rng), self.targets[index]
        item: dict = {"index": index}
        if self.teacher is not None:
            item["teacher"], item["has_teacher"] = self._teacher(index)
        if self.augment.wave_mixup > 0 and rng.random() < self.augment.wave_mixup:
            partner = int(rng.integers(len(self.clips)))
            lam = draw_mix_lambda(self.augment.wave_mixup_alpha, rng, self.augment.wave_mixup_max)
            other, other_frames = self._clip(partner, rng)
            wave = mix_waveforms(wave, other, lam)
            target = lam * target + (1 - lam) * self.targets[partner]
            frames = None if frames is None or other_frames is None else lam * frames + (1 - lam) * other_frames
            if self.teacher is not None:
                probs, found = self._teacher(partner)
                item["teacher"] = lam * item["teacher"] + (1 - lam) * probs
                item["has_teacher"] = item["has_teacher"] and found
        item["wave"] = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        item["target"] = torch.from_numpy(np.asarray(target, dtype=np.float32))
        if self.teacher is not None:
            item["teacher"] = torch.from_numpy(np.asarray(item["teacher"], dtype=np.float32))
        if self.frames is not None:
            item.update(_frame_fields(self.frames, frames))
        return item


    def _replayed(self, index: int, rng: np.random.Generator) -> dict:
        """The item as the teacher saw it: one of the clip's stored draws (chosen by `rng`), cut by the same
        `draw_input` as `tagger teach` cut it, with that draw's soft targets. A clip without stored draws gets a
        random crop (no gain, roll or mixup: the run's augment settings have them off) and no teacher."""
        picked = self.replay.pick(index, rng)
        if picked is None:
            (wave, frames), draw = self._clip(index, rng), -1
            probs = np.zeros(self.targets.num_classes, np.float32)
        else:
            draw, start, gain_db, probs = picked
            wave = draw_input(self.clips.load(index, self.sample_rate), self.num_samples, start, gain_db)
            frames = self.frames(index, start, 0) if self.frames is not None and self.frames.has(index) else None
        item = {"index": index, "draw": draw, "wave": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
                "target": torch.from_numpy(np.asarray(self.targets[index], dtype=np.float32)),
                "teacher": torch.from_numpy(probs), "has_teacher": picked is not None}
        if self.frames is not None:
            item.update(_frame_fields(self.frames, frames))
        return item


def _frame_fields(targets: FrameTargets, frames: np.ndarray | None) -> dict:
    """An item's `frames` and `has_frames`: zeros (ignored by the loss) where the clip has no strong labels."""
    if frames is None:
        frames = np.zeros((targets.grid.frames, targets.num_classes), dtype=np.float32)
        return {"frames": torch.from_numpy(frames), "has_frames": False}
    return {"frames": torch.from_numpy(np.asarray(frames, dtype=np.float32)), "has_frames": True}


class TrainFeatures(Dataset):
    """Training clips from a feature store (no waveform augmentation possible), padded/normalised as the model's
    front-end would give them."""

    def __init__(self, features: CachedFeatureDataset, targets: Targets, ids: StringColumn,
                 teacher: Teacher | None = None):
        self.features, self.targets, self.ids, self.teacher = features, targets, ids, teacher

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key: tuple[int, int, int] | int) -> dict:
        index = key[2] if isinstance(key, tuple) else key
        item = {"features": self.features[index]["features"], "index": index,
                "target": torch.from_numpy(np.asarray(self.targets[index], dtype=np.float32))}
        if self.teacher is not None:
            probs, found = self.teacher.lookup(self.ids[index])
            item["teacher"] = torch.from_numpy(probs if found else np.zeros(self.targets.num_classes, np.float32))
            item["has_teacher"] = found
        return item


class EvalWaves(Dataset):
    """Validation clips: the start of each clip, zero-padded to a fixed length, as the official eval loaders."""

    def __init__(self, source: Source, targets: np.ndarray, sample_rate: int, clip_seconds: float,
                 frames: FrameTargets | None = None):
        self.clips, self.targets, self.frames = source.clips, targets, frames
        self.sample_rate = sample_rate
        self.num_samples = int(round(clip_seconds * sample_rate))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        wave = audio.crop_or_pad(self.clips.load(index, self.sample_rate), self.num_samples, "start")
        item = {"wave": torch.from_numpy(wave), "index": index,
                "target": torch.from_numpy(np.asarray(self.targets[index], dtype=np.float32))}
        if self.frames is not None:
            item.update(_frame_fields(self.frames, self.frames(index) if self.frames.has(index) else None))
        return item


def _quiet_worker(_: int) -> None:
    """Ctrl-C goes to the whole process group; workers ignore it so the trainer can stop cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, workers: int, sampler=None, drop_last: bool = False,
                pin_memory: bool = False, persistent: bool = False, prefetch: int = 2) -> DataLoader:
    """`persistent` keeps the worker processes (and their prefetched batches) from one epoch to the next, so a run
    starts them once; the sampler still runs in this process, so its epoch and position, set before each `iter`,
    decide what the workers load."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers, drop_last=drop_last,
        pin_memory=pin_memory, worker_init_fn=_quiet_worker if workers else None,
        persistent_workers=persistent and workers > 0, prefetch_factor=prefetch if workers else None,
    )
