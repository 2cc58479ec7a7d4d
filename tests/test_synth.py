"""The synthetic labelled set: deterministic, labelled consistently with its event list."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from tagger.cli import app
from tagger.data.synth import CLASSES, PARENTS, synth_clip, synthesize
from tagger.errors import TaggerError
from tagger.labels import Ontology

PARENT_OF = {child: parent for parent, children in PARENTS.items() for child in children}
TINY = {"seconds": 1.0, "sample_rate": 16000}


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


def _labels(path) -> dict[str, set[str]]:
    with open(path) as handle:
        return {row["id"]: set(row["labels"].split(",")) for row in csv.DictReader(handle)}


def _events(path) -> dict[str, set[str]]:
    events: dict[str, set[str]] = {}
    with open(path) as handle:
        for row in csv.DictReader(handle):
            events.setdefault(row["id"], set()).add(row["label"])
    return events


def test_every_class_has_exactly_one_parent():
    children = [c for kids in PARENTS.values() for c in kids]
    assert sorted(children) == sorted(CLASSES)


def test_hierarchy_leaves_audio_and_events_unchanged(tmp_path):
    flat = synthesize(tmp_path / "flat", clips=6, seed=5, **TINY)
    tree = synthesize(tmp_path / "tree", clips=6, seed=5, hierarchy=True, missing_labels=0.5, **TINY)
    for i in range(6):
        name = f"audio/clip{i:04d}.wav"
        assert (tmp_path / "flat" / name).read_bytes() == (tmp_path / "tree" / name).read_bytes()
    assert flat["events"].read_text() == tree["events"].read_text()
    assert "ontology" not in flat and not (tmp_path / "flat" / "ontology.csv").exists()


def test_hierarchy_labels_and_ontology(tmp_path):
    paths = synthesize(tmp_path, clips=8, hierarchy=True, **TINY)
    with open(paths["labels"]) as handle:
        ids = [row["mid"] for row in csv.DictReader(handle)]
    assert ids == [*CLASSES, "tonal", "broadband"]
    assert paths["ontology"] == tmp_path / "ontology.csv"
    assert paths["ontology"].read_text().splitlines()[0] == "parent,child"
    ontology = Ontology.from_csv(paths["ontology"])
    assert set(ontology.ids) == set(ids)
    for parent, children in PARENTS.items():
        assert ontology.children(parent) == children
        assert ontology.parents(parent) == ()
    for child, parent in PARENT_OF.items():
        assert ontology.parents(child) == (parent,)


def test_complete_labels_are_events_plus_parents(tmp_path):
    paths = synthesize(tmp_path, clips=12, hierarchy=True, missing_labels=0.5, **TINY)
    events = _events(paths["events"])
    complete = {**_labels(paths["train_complete"]), **_labels(paths["valid"])}
    assert set(complete) == set(events)
    for clip_id, classes in events.items():
        assert complete[clip_id] == classes | {PARENT_OF[c] for c in classes}


def test_no_missing_labels_means_train_is_complete(tmp_path):
    paths = synthesize(tmp_path, clips=8, hierarchy=True, **TINY)
    assert paths["train"].read_text() == paths["train_complete"].read_text()


def test_weak_train_labels_have_both_gap_types(tmp_path):
    paths = synthesize(tmp_path, clips=40, hierarchy=True, missing_labels=0.5, seed=1, **TINY)
    weak, complete = _labels(paths["train"]), _labels(paths["train_complete"])
    assert set(weak) == set(complete) and len(weak) == 30
    type_one = type_two = 0
    for clip_id, labels in weak.items():
        assert labels and "" not in labels
        assert labels <= complete[clip_id]
        present = {c for c in labels if c in PARENT_OF}
        type_one += any(p in labels and not set(kids) & present for p, kids in PARENTS.items())
        type_two += any(PARENT_OF[c] not in labels for c in present)
    assert type_one >= 1 and type_two >= 1
    assert weak != complete
    # Validation stays complete: it is what a repaired model is scored against.
    events = _events(paths["events"])
    for clip_id, labels in _labels(paths["valid"]).items():
        assert labels == events[clip_id] | {PARENT_OF[c] for c in events[clip_id]}


def test_same_seed_same_weak_labels(tmp_path):
    a = synthesize(tmp_path / "a", clips=10, hierarchy=True, missing_labels=0.4, seed=7, **TINY)
    b = synthesize(tmp_path / "b", clips=10, hierarchy=True, missing_labels=0.4, seed=7, **TINY)
    assert a["train"].read_text() == b["train"].read_text()


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_missing_labels_out_of_range(tmp_path, value):
    with pytest.raises(TaggerError, match=str(value)) as caught:
        synthesize(tmp_path, clips=4, hierarchy=True, missing_labels=value, **TINY)
    assert "\n" not in str(caught.value)


def test_missing_labels_needs_hierarchy(tmp_path):
    with pytest.raises(TaggerError, match="--missing-labels needs --hierarchy"):
        synthesize(tmp_path, clips=4, missing_labels=0.3, **TINY)


def test_cli_hierarchy_with_missing_labels(tmp_path):
    out = tmp_path / "s"
    options = "--clips 8 --seconds 1 --hierarchy --missing-labels 0.3 --format json".split()
    result = CliRunner().invoke(app, ["synthesize", str(out), *options])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["split"] for r in rows] == ["train", "valid"]
    assert {"tonal", "broadband"} <= set(rows[0])
    assert (out / "ontology.csv").is_file() and (out / "train-complete.csv").is_file()


def test_cli_missing_labels_without_hierarchy_is_a_user_error(tmp_path):
    result = CliRunner().invoke(app, ["synthesize", str(tmp_path / "s"), "--missing-labels", "0.3"])
    assert result.exit_code == 2
    assert "--missing-labels needs --hierarchy" in result.output
