"""Feature store: shard commits are atomic, statistics merge exactly, readers see all jobs' shards."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from tagger.data.store import (
    FeatureStore,
    RunningStats,
    ShardWriter,
    committed_shards,
    finalize_store,
    init_store,
)
from tagger.errors import TaggerError

FRONTEND = {"name": "test-frontend", "bins": 4}


def _features(rng, frames):
    return rng.standard_normal((4, frames)).astype(np.float32)


def test_running_stats_merge_equals_one_pass():
    rng = np.random.default_rng(0)
    arrays = [_features(rng, n) for n in (5, 9, 13)]
    one, a, b = RunningStats(4), RunningStats(4), RunningStats(4)
    for x in arrays:
        one.add(x)
    a.add(arrays[0])
    b.add(arrays[1])
    b.add(arrays[2])
    a.merge(RunningStats.from_dict(json.loads(json.dumps(b.to_dict()))))
    everything = np.concatenate(arrays, axis=1).astype(np.float64)
    for stats in (one, a):
        summary = stats.summary()
        assert summary["mean"] == pytest.approx(everything.mean(), abs=1e-12)
        assert summary["std"] == pytest.approx(everything.std(), abs=1e-12)
        np.testing.assert_allclose(summary["bin_mean"], everything.mean(axis=1), atol=1e-12)
        np.testing.assert_allclose(summary["bin_std"], everything.std(axis=1), atol=1e-12)


def test_writer_commits_in_shards_and_reader_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    init_store(tmp_path, FRONTEND, 4, "m.csv")
    writer = ShardWriter(tmp_path, "all", bins=4, clips_per_shard=3)
    arrays = {}
    for i in range(7):
        arrays[f"c{i}"] = _features(rng, 3 + i)
        writer.add(f"c{i}", f"/audio/c{i}.wav", ["a"] if i % 2 else ["a", "b"], arrays[f"c{i}"])
    writer.add_error("bad", "/audio/bad.wav", "corrupt")
    assert len(committed_shards(tmp_path)) == 2  # 6 clips committed, 1 clip + 1 error pending
    writer.commit()
    stats = finalize_store(tmp_path)
    store = FeatureStore(tmp_path)
    assert len(store) == 7 and stats["clips"] == 7 and stats["errors"] == 1
    for i, clip_id in enumerate(store.ids):
        np.testing.assert_array_equal(store.features(i), arrays[clip_id].astype(np.float16))
    assert store.labels[0] == ["a", "b"]
    assert (tmp_path / "errors.csv").read_text().splitlines()[1] == "/audio/bad.wav,bad,corrupt"


def test_uncommitted_data_is_invisible_and_numbering_resumes(tmp_path):
    init_store(tmp_path, FRONTEND, 4, "m.csv")
    writer = ShardWriter(tmp_path, "all", bins=4, clips_per_shard=2)
    rng = np.random.default_rng(2)
    for i in range(2):
        writer.add(f"c{i}", "p", [], _features(rng, 4))
    # A killed run leaves a temp data file and an orphan data file without index: neither is trusted.
    (tmp_path / "shards" / ".part-all-00001.f16.tmp").write_bytes(b"\0" * 10)
    (tmp_path / "shards" / "part-all-00001.f16").write_bytes(b"\0" * 10)
    assert FeatureStore(tmp_path).ids == ["c0", "c1"]
    again = ShardWriter(tmp_path, "all", bins=4, clips_per_shard=2)
    assert again.number == 1
    again.add("c2", "p", [], _features(rng, 4))
    again.commit()
    store = FeatureStore(tmp_path)
    assert store.ids == ["c0", "c1", "c2"]
    assert store.features(2).shape == (4, 4)


def test_store_pickles_without_open_maps(tmp_path):
    init_store(tmp_path, FRONTEND, 4, "m.csv")
    writer = ShardWriter(tmp_path, "all", bins=4)
    writer.add("c0", "p", [], np.ones((4, 6), np.float32))
    writer.commit()
    store = FeatureStore(tmp_path)
    store.features(0)
    clone = pickle.loads(pickle.dumps(store))
    assert clone._maps == {}
    np.testing.assert_array_equal(clone.features(0), store.features(0))


def test_other_frontend_in_existing_store_is_refused(tmp_path):
    init_store(tmp_path, FRONTEND, 4, "m.csv")
    with pytest.raises(TaggerError, match="another front-end"):
        init_store(tmp_path, {"name": "other"}, 4, "m.csv")


def test_not_a_store(tmp_path):
    with pytest.raises(TaggerError, match="not a feature store"):
        FeatureStore(tmp_path)


def test_wrong_feature_shape_is_a_bug_not_silent(tmp_path):
    writer = ShardWriter(tmp_path, "all", bins=4)
    with pytest.raises(ValueError):
        writer.add("c", "p", [], np.ones((3, 5), np.float32))
