"""The synthetic labelled set: deterministic, labelled consistently with its event list."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

from tagger.errors import TaggerError
from tagger.synth import CLASSES, synth_clip, synthesize


def test_same_seed_same_files(tmp_path):
    a = synthesize(tmp_path / "a", clips=6, seconds=1.0, seed=3)
    b = synthesize(tmp_path / "b", clips=6, seconds=1.0, seed=3)
    wave_a, _ = sf.read(tmp_path / "a" / "audio" / "clip0002.wav")
    wave_b, _ = sf.read(tmp_path / "b" / "audio" / "clip0002.wav")
    assert np.array_equal(wave_a, wave_b)
    assert a["train"].read_text() == b["train"].read_text()


def test_labels_match_events_and_splits(tmp_path):
    paths = synthesize(tmp_path, clips=12, seconds=2.0, sample_rate=16000, valid_fraction=0.25)
    rows = {}
    for split in ("train", "valid"):
        with open(paths[split]) as handle:
            for row in csv.DictReader(handle):
                rows[row["id"]] = (split, set(row["labels"].split(",")))
    assert sum(split == "valid" for split, _ in rows.values()) == 3
    events: dict[str, set] = {}
    with open(paths["events"]) as handle:
        for row in csv.DictReader(handle):
            assert 0 <= float(row["onset"]) < float(row["offset"]) <= 2.0
            events.setdefault(row["id"], set()).add(row["label"])
    assert {k: v for k, (_, v) in rows.items()} == events
    info = sf.info(tmp_path / "audio" / "clip0000.wav")
    assert info.samplerate == 16000 and info.frames == 32000


def test_event_energy_sits_inside_its_interval():
    rng = np.random.default_rng(0)
    wave, events = synth_clip("x", rng, seconds=4.0, sample_rate=16000, max_events=1)
    (event,) = events
    inside = wave[int(event.onset * 16000) : int(event.offset * 16000)]
    outside = np.concatenate([wave[: int(event.onset * 16000)], wave[int(event.offset * 16000) :]])
    assert event.label in CLASSES
    assert np.sqrt(np.mean(inside**2)) > 10 * np.sqrt(np.mean(outside**2))


@pytest.mark.parametrize("kwargs", [{"clips": 1}, {"valid_fraction": 1.5}, {"seconds": 0.1}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(TaggerError):
        synthesize(tmp_path, **kwargs)
