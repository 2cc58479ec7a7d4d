"""What the training loop reads: clips (audio or cached features) with per-item augmentation and soft targets.

Every random choice of an item (crop, gain, roll, mixup partner and lambda) comes from a generator seeded by
(seed, epoch, rank, position in the epoch), so a resumed run draws exactly what the uninterrupted one drew, in
any number of DataLoader workers.
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
from tagger.augment import draw_mix_lambda, mix_waveforms, random_gain, time_roll
from tagger.data.dataset import CachedFeatureDataset
from tagger.data.manifests import Example, read_manifest
from tagger.data.sampling import WeightedSampler, balanced_weights
from tagger.data.store import FeatureStore
from tagger.errors import TaggerError
from tagger.labels import LabelSet
from tagger.training.config import AugmentConfig, DataConfig


@dataclass
class Source:
    """A training or validation set: the examples of a manifest, or a feature store made by extract-features."""

    path: Path
    ids: list[str]
    label_lists: list[tuple[str, ...]]
    examples: list[Example] | None = None  # audio clips
    store: FeatureStore | None = None  # cached features

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def cached(self) -> bool:
        return self.store is not None


def is_store(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "store.json").is_file()


def read_source(path: str | Path, what: str, folds: list[int] | None = None, audio_dir: str | None = None) -> Source:
    """Read `--train`/`--valid`: any manifest the data layer knows (with its folds), or a feature-store folder."""
    path = Path(path)
    if not path.exists():
        raise TaggerError(f"{what} data {path} does not exist; check the path")
    if is_store(path):
        store = FeatureStore(path)
        if not len(store):
            raise TaggerError(f"{what} feature store {path} holds no clips; run extract-features first")
        return Source(path, store.ids, [tuple(x) for x in store.labels], store=store)
    manifest = read_manifest(path, folds=folds, audio_dir=audio_dir)
    if not manifest.examples:
        raise TaggerError(f"{what} manifest {path} has no usable clips ({manifest.summary()})")
    examples = manifest.examples
    return Source(path, [e.id for e in examples], [e.labels for e in examples], examples=examples)


def infer_task(source: Source) -> str:
    """multiclass when every clip has exactly one label (ESC-50, Speech Commands), else multilabel."""
    return "multiclass" if all(len(labels) == 1 for labels in source.label_lists) else "multilabel"


def encode_targets(labels: LabelSet, source: Source) -> np.ndarray:
    """(N, C) float32 soft-target matrix (multi-hot; one-hot for single-label clips)."""
    return labels.encode_many(source.label_lists)


# ------------------------------------------------------------------------------------------ teacher


@dataclass
class Teacher:
    """Stored teacher logits (EfficientAT distillation) as probabilities sigmoid(logits / T), by clip id."""

    probs: np.ndarray  # (N_teacher, C) float32
    row: dict[str, int]

    @classmethod
    def load(cls, path: str | Path, num_classes: int, temperature: float) -> Teacher:
        path = Path(path)
        if not path.is_file():
            raise TaggerError(f"teacher file {path} does not exist; it must be an .npz with `ids` and `logits`")
        try:
            with np.load(path, allow_pickle=False) as data:
                ids, logits = [str(i) for i in data["ids"]], np.asarray(data["logits"], dtype=np.float32)
        except (KeyError, ValueError, OSError) as error:
            raise TaggerError(f"{path}: not a teacher file (.npz with arrays `ids` and `logits`): {error}") from None
        if logits.ndim != 2 or logits.shape != (len(ids), num_classes):
            raise TaggerError(f"{path}: logits {logits.shape} must be (number of ids {len(ids)}, {num_classes} "
                              "classes) in the label order of this run")
        if not np.isfinite(logits).all():
            raise TaggerError(f"{path}: teacher logits contain NaN or infinity")
        probs = 1.0 / (1.0 + np.exp(-logits / temperature))
        return cls(probs.astype(np.float32), {clip: i for i, clip in enumerate(ids)})

    def lookup(self, clip_id: str) -> tuple[np.ndarray | None, bool]:
        row = self.row.get(clip_id)
        return (None, False) if row is None else (self.probs[row], True)


def save_teacher(path: str | Path, ids: Sequence[str], logits: np.ndarray) -> None:
    """Write teacher logits in the format `loss.teacher` reads (atomically)."""
    from tagger.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=np.asarray(list(ids), dtype=str), logits=np.asarray(logits, dtype=np.float32))


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


def build_sampler(config: DataConfig, targets: np.ndarray, seed: int, rank: int, world_size: int) -> WeightedSampler:
    """Plain shuffling (uniform weights, no replacement) or class-balanced sampling, split across ranks."""
    count = len(targets)
    length = config.epoch_length or count
    if config.sampler == "shuffle":
        if length > count:
            raise TaggerError(f"data.epoch_length {length} is more than the {count} training clips; "
                              "use data.sampler=balanced to draw with replacement")
        return WeightedSampler(np.ones(count), length, replacement=False, seed=seed, rank=rank,
                               world_size=world_size)
    weights = balanced_weights(targets, config.balance_formula)
    return WeightedSampler(weights, length, replacement=config.replacement, seed=seed, rank=rank,
                           world_size=world_size)


# ------------------------------------------------------------------------------------------ datasets


def _item_rng(seed: int, epoch: int, rank: int, position: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, rank, position])


class TrainWaves(Dataset):
    """Training clips as waveforms: random crop, gain, roll, then waveform mixup with a random other clip."""

    def __init__(self, source: Source, targets: np.ndarray, sample_rate: int, clip_seconds: float,
                 augment: AugmentConfig, seed: int, rank: int = 0, teacher: Teacher | None = None):
        if source.examples is None:
            raise TaggerError("TrainWaves needs audio clips, not a feature store")
        self.examples = source.examples
        self.targets = targets
        self.sample_rate = sample_rate
        self.num_samples = int(round(clip_seconds * sample_rate))
        self.augment, self.seed, self.rank, self.teacher = augment, seed, rank, teacher

    def __len__(self) -> int:
        return len(self.examples)

    def _clip(self, index: int, rng: np.random.Generator) -> np.ndarray:
        wave = audio.load(self.examples[index].path, self.sample_rate)
        wave = audio.crop_or_pad(wave, self.num_samples, mode="random", generator=rng)
        wave = random_gain(wave, self.augment.gain_db, rng)
        return time_roll(wave, self.augment.roll, rng)

    def _teacher(self, index: int) -> tuple[np.ndarray, bool]:
        probs, found = self.teacher.lookup(self.examples[index].id)
        return (probs if found else np.zeros(self.targets.shape[1], np.float32)), found

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        epoch, position, index = key
        rng = _item_rng(self.seed, epoch, self.rank, position)
        wave, target = self._clip(index, rng), self.targets[index]
        item: dict = {"index": index}
        if self.teacher is not None:
            item["teacher"], item["has_teacher"] = self._teacher(index)
        if self.augment.wave_mixup > 0 and rng.random() < self.augment.wave_mixup:
            partner = int(rng.integers(len(self.examples)))
            lam = draw_mix_lambda(self.augment.wave_mixup_alpha, rng, self.augment.wave_mixup_max)
            wave = mix_waveforms(wave, self._clip(partner, rng), lam)
            target = lam * target + (1 - lam) * self.targets[partner]
            if self.teacher is not None:
                probs, found = self._teacher(partner)
                item["teacher"] = lam * item["teacher"] + (1 - lam) * probs
                item["has_teacher"] = item["has_teacher"] and found
        item["wave"] = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        item["target"] = torch.from_numpy(np.asarray(target, dtype=np.float32))
        if self.teacher is not None:
            item["teacher"] = torch.from_numpy(np.asarray(item["teacher"], dtype=np.float32))
        return item


class TrainFeatures(Dataset):
    """Training clips from a feature store (no waveform augmentation possible), padded/normalised as the model's
    front-end would give them."""

    def __init__(self, features: CachedFeatureDataset, targets: np.ndarray, ids: list[str],
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
            item["teacher"] = torch.from_numpy(probs if found else np.zeros(self.targets.shape[1], np.float32))
            item["has_teacher"] = found
        return item


class EvalWaves(Dataset):
    """Validation clips: the start of each clip, zero-padded to a fixed length, as the official eval loaders."""

    def __init__(self, source: Source, targets: np.ndarray, sample_rate: int, clip_seconds: float):
        self.examples, self.targets = source.examples, targets
        self.sample_rate = sample_rate
        self.num_samples = int(round(clip_seconds * sample_rate))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        wave = audio.crop_or_pad(audio.load(self.examples[index].path, self.sample_rate), self.num_samples, "start")
        return {"wave": torch.from_numpy(wave), "index": index,
                "target": torch.from_numpy(np.asarray(self.targets[index], dtype=np.float32))}


def _quiet_worker(_: int) -> None:
    """Ctrl-C goes to the whole process group; workers ignore it so the trainer can stop cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, workers: int, sampler=None, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers, drop_last=drop_last,
        pin_memory=pin_memory, worker_init_fn=_quiet_worker if workers else None,
        persistent_workers=False,
    )
