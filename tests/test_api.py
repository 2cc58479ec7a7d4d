"""The public API: tagger.load -> Tagger.predict / embed on files, folders and arrays; typed, readable results;
one-line errors; a real imported checkpoint that hears speech; `import tagger` without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import shared_path, spread_model, tone, write_wav
from typer.testing import CliRunner

import tagger
from tagger.checkpoint import save_checkpoint
from tagger.cli import app
from tagger.labels import LabelSet

NAMES = ["Speech", "Music", "Dog"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    save_checkpoint(root / "model.pt", spread_model("efficientat-mn01", 3, seed=1).eval(), LabelSet(NAMES))
    write_wav(root / "a.wav", tone(2.0, 32000, 500.0), 32000)
    write_wav(root / "b.wav", tone(3.0, 16000, 900.0, seed=2), 16000)
    return root


def test_predict_gives_typed_results_best_first(setup):
    t = tagger.load(setup / "model.pt", device="cpu")
    assert t.labels == NAMES and t.sample_rate == 32000 and t.label_ids == NAMES
    p = t.predict(setup / "a.wav", top_k=2)
    assert isinstance(p, tagger.Prediction) and p.duration == pytest.approx(2.0)
    assert [label.name for label in p.labels] == [NAMES[i] for i in np.argsort(-p.scores)[:2]]
    assert p.labels[0].score >= p.labels[1].score and p.events is None and p.embedding is None
    text = str(p).splitlines()
    assert text[0] == f"{setup / 'a.wav'} (2.00 s)" and text[1].split()[0] == p.labels[0].name
    assert len(t.predict(setup / "a.wav", top_k=0).labels) == 3
    assert all(label.score >= 0.5 for label in t.predict(setup / "a.wav", top_k=0, threshold=0.5).labels)


def test_the_api_scores_as_the_cli_does(setup):
    t = tagger.load(setup / "model.pt", device="cpu")
    result = CliRunner().invoke(app, ["predict", str(setup / "b.wav"), "--model", str(setup / "model.pt"),
                                      "--top-k", "0", "--format", "json"])
    assert result.exit_code == 0, result.output
    import json

    cli = {item["label"]: item["score"] for item in json.loads(result.stdout)[0]["labels"]}
    api = {label.name: label.score for label in t.predict(setup / "b.wav", top_k=0).labels}
    assert api == pytest.approx(cli, abs=1e-6)


def test_arrays_at_any_rate_score_as_their_files(setup):
    t = tagger.load(setup / "model.pt", device="cpu")
    wave, rate = sf.read(setup / "b.wav", dtype="float32")
    from_file = t.predict(setup / "b.wav", top_k=0)
    from_array = t.predict(wave, sample_rate=rate, top_k=0)
    assert from_array.source == "array-0" and from_array.duration == pytest.approx(3.0)
    np.testing.assert_allclose(from_array.scores, from_file.scores, atol=1e-6)
    import torch

    from_tensor = t.predict(torch.from_numpy(wave), sample_rate=rate, top_k=0)
    np.testing.assert_allclose(from_tensor.scores, from_file.scores, atol=1e-6)
    batch = t.predict(np.stack([wave, wave[::-1].copy()]), sample_rate=rate)
    assert len(batch) == 2 and np.allclose(batch[0].scores, from_file.scores, atol=1e-6)
    mixed = t.predict([setup / "a.wav", wave], sample_rate=rate)
    assert [p.source for p in mixed] == [str(setup / "a.wav"), "array-1"]
    np.testing.assert_allclose(mixed[1].scores, from_file.scores, atol=1e-6)


def test_folders_events_and_embeddings(setup):
    t = tagger.load(setup / "model.pt", device="cpu")
    results = t.predict(setup, top_k=1)
    assert [p.source for p in results] == [str(setup / "a.wav"), str(setup / "b.wav")]
    p = t.predict(setup / "b.wav", events=tagger.EventRule(on=0.01, off=0.005), embedding=True)
    assert p.events and all(isinstance(e, tagger.Event) and 0 <= e.onset < e.offset <= 3.0 for e in p.events)
    assert p.events[0].name in NAMES and "events:" in str(p) and p.embedding.ndim == 1
    vector, matrix = t.embed(setup / "a.wav"), t.embed([setup / "a.wav", setup / "b.wav"])
    assert matrix.shape == (2, vector.shape[0]) and np.allclose(matrix[0], vector, atol=1e-6)


@pytest.mark.parametrize("audio, message", [
    (np.zeros(32000, np.int16), "float samples"),
    (np.zeros((1, 2, 32000), np.float32), "give (samples,) or (clips, samples)"),
    (np.array([0.0, np.nan] * 16000, np.float32), "NaN or infinite"),
])
def test_bad_arrays_are_one_line_errors(setup, audio, message):
    t = tagger.load(setup / "model.pt", device="cpu")
    with pytest.raises(tagger.TaggerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        t.predict(audio)


def test_missing_files_and_unpulled_releases_are_named(setup):
    t = tagger.load(setup / "model.pt", device="cpu")
    with pytest.raises(tagger.TaggerError, match="nothing.wav: not found"):
        t.predict(setup / "nothing.wav")
    with pytest.raises(tagger.TaggerError, match="run `tagger pull efficientat-mn10`"):
        tagger.load("efficientat-mn10")
    with pytest.raises(tagger.TaggerError, match="top_k must be 0"):
        t.predict(setup / "a.wav", top_k=-1)


def test_evaluate_takes_a_loaded_tagger(setup, tmp_path):
    (tmp_path / "m.csv").write_text(f"path,labels\n{setup / 'a.wav'},Speech\n{setup / 'b.wav'},Music\n")
    t = tagger.load(setup / "model.pt", device="cpu")
    result = tagger.evaluate(t, tmp_path / "m.csv")
    assert result.metrics["clips"] == 2 and result.probabilities.shape == (2, 3)
    again = tagger.evaluate(setup / "model.pt", tmp_path / "m.csv", device="cpu")
    np.testing.assert_allclose(again.probabilities, result.probabilities, atol=1e-6)


def test_import_tagger_loads_no_torch():
    code = ("import sys, tagger\nassert 'torch' not in sys.modules\nassert callable(tagger.load)\n"
            "assert 'torch' in sys.modules\nprint(sorted(set(tagger.__all__) - set(dir(tagger))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_a_real_imported_checkpoint_hears_speech(tmp_path):
    weights = shared_path("data", "pretrained", "efficientat_mn04_as", "mn04_as_mAP_432.pt")
    labels = shared_path("data", "audioset", "class_labels_indices.csv")
    samples = shared_path("data", "samples")
    done = tagger.import_checkpoint("efficientat", weights, tmp_path / "mn04.pt", labels=labels)
    assert done.arch == "efficientat-mn04" and done.num_classes == 527
    t = tagger.load(tmp_path / "mn04.pt", device="cpu")
    speech = t.predict(samples / "speech.wav", top_k=5)
    assert "Speech" in [label.name for label in speech.labels]
    typing = t.predict(samples / "typing.wav", top_k=5)
    assert {"Computer keyboard", "Typing"} & {label.name for label in typing.labels}


def test_a_pulled_release_loads_by_name_from_the_api_and_every_scoring_command(setup, tmp_path):
    import shutil

    from tagger.models.releases import pulled_path

    target = pulled_path("efficientat-mn01")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(setup / "model.pt", target)
    try:
        t = tagger.load("mn01", device="cpu")  # short names resolve as `tagger pull` resolves them
        assert t.source == str(target)
        done = CliRunner().invoke(app, ["predict", str(setup / "a.wav"), "--model", "efficientat-mn01",
                                        "--format", "json"])
        assert done.exit_code == 0, done.output
        (tmp_path / "m.csv").write_text(f"path,labels\n{setup / 'a.wav'},Speech\n{setup / 'b.wav'},Music\n")
        done = CliRunner().invoke(app, ["evaluate", str(tmp_path / "m.csv"), "--model", "efficientat-mn01"])
        assert done.exit_code == 0, done.output
    finally:
        target.unlink()
