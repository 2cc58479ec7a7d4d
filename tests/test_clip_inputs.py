"""Every command that reads a labelled manifest takes a stored data set too (anything `open_clips` opens).

A test-only stored format stands in for packs and HDF5 files: a folder of .npy waveforms with a marker file,
registered for the test and unregistered after. Its clips are no files, so everything must go through
`clips.load`; each command must give on it exactly what it gives on the same audio as loose files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import spread_model, tone, write_wav
from typer.testing import CliRunner

from tagger import audio
from tagger.checkpoint import read_torch_file, save_checkpoint
from tagger.cli import app
from tagger.data import clips as clips_module
from tagger.data.clips import Clips, open_clips, register_format
from tagger.data.manifests import read_manifest
from tagger.data.store import FeatureStore, scan_store
from tagger.data.synth import synthesize
from tagger.errors import TaggerError
from tagger.evaluation.evaluate import load_predictions
from tagger.fileio import atomic_write_csv
from tagger.inference.predict import PredictOptions, predict_clips, predict_files
from tagger.inference.runtime import Scorer
from tagger.labels import LabelSet

MARKER = "test-clips.json"
runner = CliRunner()


class NpyAudio:
    """Waveforms kept as one .npy per clip at their stored rate, resampled on load as a pack does."""

    def __init__(self, folder: Path, rate: int):
        self.folder, self.rate = folder, rate

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        try:
            wave = np.load(self.folder / f"{index}.npy")
        except (OSError, ValueError):
            raise TaggerError(f"{self.where(index)}: cannot read the stored clip") from None
        return audio.resample(wave, self.rate, sample_rate)

    def where(self, index: int) -> str:
        return f"{self.folder.name} row {index}"


def open_npy_set(folder: Path) -> Clips:
    from tagger.data.table import ClipTable

    meta = json.loads((folder / MARKER).read_text())
    table = ClipTable.from_lists(meta["ids"], meta["labels"])
    return Clips(table, NpyAudio(folder, meta["rate"]), folder, "npy-test", sample_rate=meta["rate"])


def store_manifest(manifest: Path, folder: Path) -> Path:
    """The manifest's clips as the test format: the same decoded audio, ids and labels."""
    examples = read_manifest(manifest).examples
    folder.mkdir(parents=True)
    rates = set()
    for i, example in enumerate(examples):
        wave, rate = audio.load_with_rate(example.path)
        np.save(folder / f"{i}.npy", wave)
        rates.add(rate)
    (rate,) = rates
    meta = {"ids": [e.id for e in examples], "labels": [list(e.labels) for e in examples], "rate": rate}
    (folder / MARKER).write_text(json.dumps(meta))
    return folder


@pytest.fixture
def registered(monkeypatch):
    """The test format registered for one test; the registry is restored afterwards."""
    if not clips_module._OPENERS:
        clips_module._load_openers()  # load packs/HDF5 first: restoring an empty list would lose them for good
    monkeypatch.setattr(clips_module, "_OPENERS", list(clips_module._OPENERS))
    register_format(lambda path: (path / MARKER).is_file(), open_npy_set)


def _save(path: Path, arch: str, labels: LabelSet, seed: int, task: str = "multilabel", **kwargs) -> Path:
    """A random model with a spread-out classifier, so clips get distinct scores."""
    model = spread_model(arch, len(labels), seed, **kwargs)
    return save_checkpoint(path, model, labels, task=task, train={"epoch": float(seed), "step": seed})


@pytest.fixture(scope="module")
def data(synth_set, tmp_path_factory) -> dict:
    """8 synthetic clips plus a 2.5 s one (windowed by AST), as a manifest and as the stored test format."""
    folder = tmp_path_factory.mktemp("clip-inputs")
    rows = [[str(e.path), ",".join(e.labels), e.id] for e in read_manifest(synth_set["train"]).examples[:8]]
    long = write_wav(folder / "long.wav", tone(2.5, 32000, seed=4), 32000)
    rows.append([str(long), "tone", "long"])
    manifest = folder / "clips.csv"
    atomic_write_csv(manifest, ["path", "labels", "id"], rows)
    labels = LabelSet.from_csv(synth_set["labels"])
    return {"manifest": manifest, "stored": store_manifest(manifest, folder / "stored"), "labels": labels,
            "mn01": _save(folder / "mn01.pt", "efficientat-mn01", labels, 1),
            "mn01b": _save(folder / "mn01b.pt", "efficientat-mn01", labels, 2),
            "ast": _save(folder / "ast.pt", "ast-tiny224", labels, 7, input_tdim=100), "folder": folder}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_stored_clips_score_exactly_as_the_same_files(data, registered):
    """The in-memory scoring path against the file path: whole clips, windows (AST, resampled), crops."""
    clips = open_clips(data["stored"])
    files = [e.path for e in read_manifest(data["manifest"]).examples]
    windowed = []
    for checkpoint, options in ((data["mn01"], PredictOptions()), (data["ast"], PredictOptions(batch_size=3)),
                                (data["ast"], PredictOptions(clip_seconds=0.7))):
        # A Scorer each: one switches to its traced fast path for shapes it has seen, which rounds differently.
        stored = list(predict_clips(Scorer.load(checkpoint, device="cpu"), clips, options))
        loose = list(predict_files(Scorer.load(checkpoint, device="cpu"), files, options))
        assert [i for i, _ in stored] == list(range(len(files)))
        for (_, a), b in zip(stored, loose, strict=True):
            np.testing.assert_array_equal(a.logits, b.logits)
            np.testing.assert_array_equal(a.probabilities, b.probabilities)
            assert a.duration == pytest.approx(b.duration) and a.window == b.window
        assert stored[0][1].path == Path(clips.where(0))
        windowed.append(stored[-1][1].window is not None)
    assert windowed == [False, True, False]  # the long clip took both paths


def _features(store: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    opened = FeatureStore(store)
    return {clip: (labels, opened.features(i)) for i, (clip, labels) in enumerate(zip(opened.ids, opened.labels,
                                                                                        strict=True))}


def test_extract_features_from_a_stored_set_equals_the_files(data, registered, tmp_path):
    for name in ("manifest", "stored"):
        result = invoke("extract-features", data[name], "--frontend", "passt-mel", "--out", tmp_path / name,
                        "--workers", "0", "--format", "json")
        assert result.exit_code == 0, result.output
    loose, stored = _features(tmp_path / "manifest"), _features(tmp_path / "stored")
    assert list(stored) == list(loose) and len(stored) == 9
    for clip, (labels, features) in loose.items():
        assert stored[clip][0] == labels
        np.testing.assert_array_equal(stored[clip][1], features)
    assert scan_store(tmp_path / "stored")[0][0]["path"] == "stored row 0"  # where(i): there is no file

    for k in (1, 2):  # sharding by id hash and resuming work on stored sets as on manifests
        result = invoke("extract-features", data["stored"], "--frontend", "passt-mel", "--out", tmp_path / "parts",
                        "--workers", "0", "--shard", f"{k}/2", "--format", "json")
        assert result.exit_code == 0, result.output
    assert sorted(FeatureStore(tmp_path / "parts").ids) == sorted(loose)
    again = invoke("extract-features", data["stored"], "--frontend", "passt-mel", "--out", tmp_path / "parts",
                   "--workers", "0", "--format", "json")
    assert json.loads(again.stdout)[0]["already_done"] == 9


def test_unreadable_stored_clip_is_named_by_where(data, registered, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in data["stored"].iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "3.npy").write_bytes(b"not an array")
    failed = invoke("extract-features", broken, "--frontend", "passt-mel", "--out", tmp_path / "f", "--workers", "0")
    assert failed.exit_code == 2 and "broken row 3: cannot read the stored clip" in failed.output
    skipped = invoke("extract-features", broken, "--frontend", "passt-mel", "--out", tmp_path / "g", "--workers",
                     "0", "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    with open(tmp_path / "g" / "errors.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["path"] == "broken row 3" and "cannot read the stored clip" in row["reason"]
    evaluated = invoke("evaluate", broken, "--model", data["mn01"], "--on-error", "skip", "--format", "json")
    assert evaluated.exit_code == 0 and "skipped broken row 3" in evaluated.output
    assert json.loads(evaluated.stdout)[0]["clips"] == 8


def test_evaluate_a_stored_set_equals_the_files(data, registered, tmp_path):
    results = []
    for name in ("manifest", "stored"):
        out = tmp_path / f"{name}.npz"
        result = invoke("evaluate", data[name], "--model", data["ast"], "--save-predictions", out, "--format", "json")
        assert result.exit_code == 0, result.output
        results.append((json.loads(result.stdout)[0], load_predictions(out)))
    (loose_metrics, loose), (stored_metrics, stored) = results
    assert stored_metrics == loose_metrics and stored.ids == loose.ids
    for name in ("probabilities", "logits", "targets"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(loose, name))
    assert str(stored.paths[0]) == "stored row 0"


@pytest.mark.parametrize("option", [("--folds", "1"), ("--split", "train"), ("--audio-dir", "."),
                                    ("--manifest-format", "csv")])
def test_manifest_options_with_a_stored_set_fail_in_one_line(data, registered, option):
    for command in (("evaluate", data["stored"], "--model", data["mn01"]),
                    ("extract-features", data["stored"], "--frontend", "passt-mel", "--out", data["folder"] / "x")):
        result = invoke(*command, *option)
        assert result.exit_code == 2, result.output
        assert "is a stored data set" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (data["folder"] / "x").exists()


def _labels_by_id(path: Path) -> dict[str, set[str]]:
    with open(path, newline="") as handle:
        return {row["id"]: set(filter(None, row["labels"].split(","))) for row in csv.DictReader(handle)}


def test_enhance_labels_on_a_stored_set_equals_the_files(registered, tmp_path):
    weak = synthesize(tmp_path / "weak", clips=10, seconds=1.0, sample_rate=16000, seed=5, hierarchy=True,
                      missing_labels=0.5)
    stored = store_manifest(weak["train"], tmp_path / "weak-stored")
    teacher = _save(tmp_path / "teacher.pt", "efficientat-mn01", LabelSet.from_csv(weak["labels"]), 3)
    outputs = {}
    for name, source in (("manifest", weak["train"]), ("stored", stored)):
        out = tmp_path / name / "enhanced.csv"
        result = invoke("enhance-labels", source, "--teacher", teacher, "--ontology", weak["ontology"],
                        "--threshold", "p25", "--out", out)
        assert result.exit_code == 0, result.output
        outputs[name] = out
    assert "id,labels rows" in result.output
    loose, kept = (load_predictions(outputs[n].parent / "teacher_scores.npz", with_metrics=False) for n in outputs)
    assert kept.ids == loose.ids
    np.testing.assert_array_equal(kept.probabilities, loose.probabilities)
    enhanced = _labels_by_id(outputs["stored"])
    assert enhanced == _labels_by_id(outputs["manifest"]) and enhanced != _labels_by_id(weak["train"])
    with open(outputs["stored"], newline="") as handle:
        assert next(csv.reader(handle)) == ["id", "labels"]
    assert (tmp_path / "stored" / "enhanced_weight.csv").read_text() == \
        (tmp_path / "manifest" / "enhanced_weight.csv").read_text()

    refused = invoke("enhance-labels", stored, "--teacher", teacher, "--ontology", weak["ontology"], "--out",
                     tmp_path / "enhanced.json")
    assert refused.exit_code == 2 and "id,labels table" in refused.output


def test_ensemble_validated_and_recalibrated_on_a_stored_set_equals_the_files(data, registered, tmp_path):
    members = (data["mn01"], data["mn01b"])
    reports, averages = [], []
    for name in ("manifest", "stored"):
        result = invoke("ensemble", *members, "--mode", "predictions", "--valid", data[name], "--out",
                        tmp_path / name / "ens.pt", "--format", "json")
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
        out = tmp_path / name / "wa.pt"
        result = invoke("ensemble", *members, "--mode", "weights", "--bn-recalibrate", data[name], "--out", out,
                        "--format", "json")
        assert result.exit_code == 0, result.output
        averages.append(read_torch_file(out)["state_dict"])
    loose, stored = reports
    assert [m["value"] for m in stored["members"]] == [m["value"] for m in loose["members"]]
    assert stored["ensemble"] == loose["ensemble"] is not None
    assert all(torch.equal(averages[1][key], value) for key, value in averages[0].items())
    assert any("running_mean" in key for key in averages[0])
