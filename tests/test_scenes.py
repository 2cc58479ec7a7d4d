"""Scenes with strong labels from real-looking clips: the sounding part is annotated, placed where it was mixed."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import burst_clip, fake_esc50, shared_path, tone, write_wav

from tagger.data.manifests import Example
from tagger.data.scenes import SceneEvent, active_parts, make_scenes, merge_overlaps
from tagger.errors import TaggerError

RATE = 16000


def test_active_parts_find_the_bursts_and_join_close_ones(tmp_path):
    path = burst_clip(tmp_path / "x.wav", [(1.0, 1.5), (1.6, 2.0), (3.0, 3.2)])
    wave, _ = sf.read(path, dtype="float32")
    assert active_parts(wave, RATE) == [(1.0, 2.0), (3.0, 3.2)]
    assert active_parts(np.zeros(RATE, np.float32), RATE) == []


def test_scenes_place_the_sounding_part_where_it_was_mixed(tmp_path):
    dog = burst_clip(tmp_path / "dog.wav", [(2.0, 2.6)])
    rain = write_wav(tmp_path / "rain.wav", tone(5.0, RATE, 200.0, seed=3), RATE)
    examples = [Example(dog, ("dog",), "dog"), Example(rain, ("rain",), "rain"), Example(rain, ("train",), "x")]
    found = make_scenes(examples, tmp_path / "out", 3, "test", seconds=6.0, sample_rate=RATE,
                        events_per_scene=(1, 1), snr_db=(20.0, 20.0), seed=0)
    assert [e.file for e in found] == ["test-0000.wav", "test-0001.wav", "test-0002.wav"]
    for event in found:
        assert event.label == "dog" and event.offset - event.onset == pytest.approx(0.6, abs=0.03)
        wave, rate = sf.read(tmp_path / "out" / event.file, dtype="float32")
        assert rate == RATE and len(wave) == 6 * RATE
        inside = wave[int(event.onset * RATE): int(event.offset * RATE)]
        before = wave[: max(1, int((event.onset - 0.1) * RATE))]
        assert np.sqrt(np.mean(inside**2)) > 5 * np.sqrt(np.mean(before**2))  # the burst is where it is annotated


def test_same_class_overlaps_merge_and_missing_classes_are_one_line_errors(tmp_path):
    events = [SceneEvent("a", 1.0, 3.0, "dog"), SceneEvent("a", 2.5, 4.0, "dog"), SceneEvent("a", 2.0, 2.5, "cat"),
              SceneEvent("b", 0.0, 1.0, "dog")]
    assert merge_overlaps(events) == [SceneEvent("a", 1.0, 4.0, "dog"), SceneEvent("a", 2.0, 2.5, "cat"),
                                      SceneEvent("b", 0.0, 1.0, "dog")]
    rain = write_wav(tmp_path / "rain.wav", tone(1.0, RATE, 200.0), RATE)
    with pytest.raises(TaggerError, match="no event clips among 1 examples"):
        make_scenes([Example(rain, ("rain",), "r")], tmp_path / "o", 1, "x")


def test_scenes_from_real_esc50_clips(tmp_path):
    from tagger.data.manifests import read_manifest

    manifest = read_manifest(shared_path("data", "esc50-folds1-4", "esc50.csv"), folds=[4])
    found = make_scenes(manifest.examples, tmp_path, 4, "test", seed=1)
    assert {e.file for e in found} <= {f"test-{k:04d}.wav" for k in range(4)} and len(found) >= 4
    assert all(0 <= e.onset < e.offset <= 10.0 for e in found)


def test_synthesize_scenes_writes_strong_and_weak_labels_that_agree(tmp_path):
    from typer.testing import CliRunner

    from tagger.cli import app
    from tagger.data.manifests import read_manifest
    from tagger.data.strong import read_strong

    esc50 = fake_esc50(tmp_path / "esc")
    out = tmp_path / "scenes"
    result = CliRunner().invoke(app, ["synthesize", str(out), "--scenes-from", str(esc50), "--clips", "8",
                                      "--seconds", "4", "--sample-rate", str(RATE), "--format", "json"])
    assert result.exit_code == 0, result.output
    for split, count in (("train", 8), ("test", 2)):
        strong = read_strong(out / f"{split}-strong.tsv")
        weak = read_manifest(out / f"{split}.csv")
        assert len(weak.examples) == count and sorted(strong.files) == sorted(e.id for e in weak.examples)
        by_file = strong.by_file()
        for example in weak.examples:
            assert set(example.labels) == {label for _, _, label in by_file[example.id]}
            assert sf.info(example.path).duration == pytest.approx(4.0)
    assert (out / "audioset-label-map.csv").read_text().splitlines()[1] == "dog,Dog"
    result = CliRunner().invoke(app, ["synthesize", str(tmp_path / "x"), "--scenes-from", str(esc50),
                                      "--test-fold", "5"])
    assert result.exit_code == 2 and "need fold 5 for testing" in result.output
