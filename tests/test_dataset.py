"""Datasets: reproducible crops in any worker, cached features normalised as AST/PSLA do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tagger.data.dataset import CachedFeatureDataset, WaveformDataset
from tagger.data.extract import extract_features
from tagger.data.manifests import read_manifest
from tagger.data.store import FeatureStore
from tagger.data.synth import synthesize
from tagger.errors import TaggerError
from tagger.labels import LabelSet


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    paths = synthesize(root, clips=8, seconds=1.5, sample_rate=16000, seed=2)
    examples = read_manifest(paths["train"]).examples
    return paths, examples, LabelSet.from_csv(paths["labels"])


def test_random_crop_is_reproducible_across_workers_and_changes_per_epoch(data):
    _, examples, labels = data
    dataset = WaveformDataset(examples, labels, sample_rate=16000, clip_seconds=0.5, crop="random", seed=7)
    direct = [dataset[i]["wave"] for i in range(len(dataset))]
    loaded = [b["wave"][0] for b in DataLoader(dataset, batch_size=1, num_workers=2)]
    for a, b in zip(direct, loaded, strict=True):
        assert torch.equal(a, b) and a.shape == (8000,)
    dataset.set_epoch(1)
    assert not all(torch.equal(a, dataset[i]["wave"]) for i, a in enumerate(direct))


def test_targets_multilabel_and_multiclass(data):
    _, examples, labels = data
    dataset = WaveformDataset(examples, labels, sample_rate=32000, crop="start")
    item = dataset[0]
    assert item["wave"].shape == (48000,)  # resampled 16 k -> 32 k, natural length
    assert item["target"].dtype == torch.float32 and item["target"].sum() == len(examples[0].labels)
    single = [e for e in examples if len(e.labels) == 1]
    assert WaveformDataset(single, labels, 16000, task="multiclass")[0]["target"].dtype == torch.long
    multi = [e for e in examples if len(e.labels) > 1]
    if multi:
        with pytest.raises(TaggerError):
            WaveformDataset(multi, labels, 16000, task="multiclass")


def test_cached_features_pad_then_normalise(data, tmp_path):
    paths, examples, labels = data
    extract_features(examples, tmp_path, "kaldi-fbank", labels=labels, workers=0, show_progress=False)
    store = FeatureStore(tmp_path)
    raw = CachedFeatureDataset(store, labels)
    item = raw[0]
    assert item["features"].shape == (128, 148) and item["features"].dtype == torch.float32
    ast = CachedFeatureDataset(tmp_path, labels, target_frames=200, mean=-4.0, std=4.0, std_scale=2.0)
    features = ast[0]["features"]
    assert features.shape == (128, 200)
    torch.testing.assert_close(features[:, :148], (item["features"] + 4.0) / 8.0)
    torch.testing.assert_close(features[:, 148:], torch.full((128, 52), 0.5))  # padded zeros, normalised
    batch = next(iter(DataLoader(ast, batch_size=4, num_workers=2)))
    assert batch["features"].shape == (4, 128, 200) and batch["target"].shape == (4, len(labels))
    with pytest.raises(TaggerError):
        CachedFeatureDataset(store, labels, mean=1.0)
    assert np.isfinite(batch["features"].numpy()).all()
