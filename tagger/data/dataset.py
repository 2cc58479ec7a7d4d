"""PyTorch datasets: waveforms decoded on the fly, or features read from a store made by extract-features.

Both are worker-safe (no open file handles are pickled) and reproducible: a random crop draws from a
generator seeded by (seed, epoch, index), so the same clip gets the same crop in any worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tagger import audio
from tagger.data.manifests import Example
from tagger.data.store import FeatureStore
from tagger.errors import TaggerError
from tagger.frontends import fit_frames, normalize
from tagger.labels import LabelSet

TASKS = ("multilabel", "multiclass")


def _targets(labels: LabelSet, label_lists: Sequence[Sequence[str]], task: str) -> torch.Tensor:
    """Multi-hot rows for multi-label sets, class indices for single-label sets; unknown labels fail here."""
    if task not in TASKS:
        raise TaggerError(f"task {task!r} must be one of {', '.join(TASKS)}")
    if task == "multiclass":
        return torch.tensor([labels.encode_single(ls) for ls in label_lists], dtype=torch.long)
    return torch.from_numpy(labels.encode_many(label_lists))


class WaveformDataset(Dataset):
    """Clips of a manifest as fixed-length waveforms at the model's rate, with their targets."""

    def __init__(
        self,
        examples: Sequence[Example],
        labels: LabelSet,
        sample_rate: int,
        clip_seconds: float | None = None,
        crop: str = "random",
        task: str = "multilabel",
        seed: int = 0,
    ):
        self.examples = list(examples)
        self.sample_rate = sample_rate
        self.num_samples = None if clip_seconds is None else int(round(clip_seconds * sample_rate))
        self.crop = crop
        self.seed = seed
        self.epoch = 0
        self.targets = _targets(labels, [e.labels for e in self.examples], task)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        wave = audio.load(example.path, self.sample_rate)
        if self.num_samples is not None:
            generator = np.random.default_rng([self.seed, self.epoch, index]) if self.crop == "random" else None
            wave = audio.crop_or_pad(wave, self.num_samples, mode=self.crop, generator=generator)
        return {"wave": torch.from_numpy(wave), "target": self.targets[index], "index": index, "id": example.id}


class CachedFeatureDataset(Dataset):
    """Clips of a feature store, optionally normalised and padded/cropped to a fixed frame count."""

    def __init__(
        self,
        store: FeatureStore | str | Path,
        labels: LabelSet,
        target_frames: int | None = None,
        mean: float | None = None,
        std: float | None = None,
        std_scale: float = 1.0,
        task: str = "multilabel",
    ):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        if (mean is None) != (std is None):
            raise TaggerError("give both mean and std for feature normalisation, or neither")
        self.target_frames = target_frames
        self.mean, self.std, self.std_scale = mean, std, std_scale
        self.targets = _targets(labels, self.store.labels, task)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict:
        features = torch.from_numpy(np.array(self.store.features(index), dtype=np.float32))
        # Pad/crop before normalising, as the AST/PSLA loaders do (padded frames become (0-mean)/std).
        if self.target_frames is not None:
            features = fit_frames(features, self.target_frames)
        if self.mean is not None:
            features = normalize(features, self.mean, self.std, self.std_scale)
        return {"features": features, "target": self.targets[index], "index": index, "id": self.store.ids[index]}
