"""`tagger extract-features` end to end: exact features, statistics, resume, kill safety, errors, sharding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import shared_path
from typer.testing import CliRunner

from tagger.cli import app
from tagger.data.extract import extract_features, parse_part, select_part
from tagger.data.manifests import read_manifest
from tagger.data.store import FeatureStore
from tagger.data.synth import synthesize
from tagger.errors import TaggerError
from tagger.frontends import build_frontend
from tagger.labels import LabelSet

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return synthesize(root, clips=12, seconds=2.0, sample_rate=16000, seed=1)


def _extract(synthetic, out, *extra):
    args = [
        "extract-features",
        str(synthetic["train"]),
        "--labels",
        str(synthetic["labels"]),
        "--out",
        str(out),
        "--workers",
        "0",
        "--format",
        "json",
        *extra,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]


@pytest.mark.parametrize(
    ("frontend", "bins", "frames"), [("kaldi-fbank", 128, 198), ("passt-mel", 128, 200), ("panns-logmel", 64, 201)]
)
def test_features_equal_the_frontend_per_clip(synthetic, tmp_path, frontend, bins, frames):
    row = _extract(synthetic, tmp_path, "--frontend", frontend)
    store = FeatureStore(tmp_path)
    manifest = read_manifest(synthetic["train"])
    assert row["new"] == len(manifest.examples) == len(store) == 9
    assert (row["bins"], row["frames_min"], row["frames_max"]) == (bins, frames, frames)
    module = build_frontend(frontend).eval()
    from tagger import audio

    for example in manifest.examples[:3]:
        wave = torch.from_numpy(audio.load(example.path, module.sample_rate))[None]
        with torch.inference_mode():
            expected = module(wave)[0].numpy()
        stored = store.features(store.ids.index(example.id)).astype(np.float32)
        np.testing.assert_allclose(stored, expected, rtol=1e-3, atol=1e-2)
        assert list(store.labels[store.ids.index(example.id)]) == list(example.labels)
    everything = np.concatenate([store.features(i).astype(np.float64) for i in range(len(store))], axis=1)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["mean"] == pytest.approx(everything.mean(), abs=2e-3)
    assert stats["std"] == pytest.approx(everything.std(), rel=1e-3)
    assert stats["frontend"]["name"] == frontend
    assert LabelSet.from_csv(tmp_path / "labels.csv") == LabelSet.from_csv(synthetic["labels"])


def test_rerun_resumes_and_duration_fixes_length(synthetic, tmp_path):
    first = _extract(synthetic, tmp_path, "--frontend", "kaldi-fbank", "--duration", "1.0")
    again = _extract(synthetic, tmp_path, "--frontend", "kaldi-fbank", "--duration", "1.0")
    assert (first["new"], again["new"], again["already_done"]) == (9, 0, 9)
    assert first["frames_min"] == first["frames_max"] == 98


def test_sharded_jobs_form_one_store(synthetic, tmp_path):
    whole = _extract(synthetic, tmp_path / "whole", "--frontend", "kaldi-fbank")
    for k in (1, 2, 3):
        _extract(synthetic, tmp_path / "parts", "--frontend", "kaldi-fbank", "--shard", f"{k}/3")
    parts = FeatureStore(tmp_path / "parts")
    assert sorted(parts.ids) == sorted(FeatureStore(tmp_path / "whole").ids)
    merged = json.loads((tmp_path / "parts" / "stats.json").read_text())
    assert merged["mean"] == pytest.approx(whole["mean"], abs=1e-9)
    assert merged["std"] == pytest.approx(whole["std"], abs=1e-9)


def test_parts_are_disjoint_and_complete():
    from tagger.data.manifests import Example

    examples = [Example(path=f"{i}.wav", labels=("a",), id=f"clip{i}") for i in range(100)]
    parts = [select_part(examples, (k, 4)) for k in range(1, 5)]
    ids = [e.id for part in parts for e in part]
    assert sorted(ids) == sorted(e.id for e in examples) and len(set(ids)) == 100
    for bad in ("0/3", "4/3", "x", "1/2/3"):
        with pytest.raises(TaggerError):
            parse_part(bad)


def _manifest_with_bad_files(synthetic, tmp_path):
    audio_dir = synthetic["train"].parent / "audio"
    (tmp_path / "broken.wav").write_bytes(os.urandom(2000))
    lines = [
        "path,labels",
        f"{audio_dir / 'clip0000.wav'},tone",
        f"{tmp_path / 'broken.wav'},tone",
        f"{tmp_path / 'gone.wav'},tone",
        f"{audio_dir / 'clip0001.wav'},tone",
    ]
    manifest = tmp_path / "bad.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_on_error_skip_records_errors(synthetic, tmp_path):
    manifest = _manifest_with_bad_files(synthetic, tmp_path)
    result = runner.invoke(
        app,
        [
            "extract-features",
            str(manifest),
            "--frontend",
            "kaldi-fbank",
            "--out",
            str(tmp_path / "f"),
            "--on-error",
            "skip",
            "--workers",
            "0",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert (row["new"], row["failed"]) == (2, 2)
    errors = (tmp_path / "f" / "errors.csv").read_text()
    assert "broken.wav" in errors and "gone.wav" in errors and "not found" in errors


def test_on_error_fail_stops_with_one_line(synthetic, tmp_path):
    manifest = _manifest_with_bad_files(synthetic, tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tagger",
            "extract-features",
            str(manifest),
            "--frontend",
            "kaldi-fbank",
            "--out",
            str(tmp_path / "f"),
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert "gone.wav" in errors[0] and "--on-error skip" in errors[0]


def test_corrupt_file_fails_naming_it(synthetic, tmp_path):
    audio_dir = synthetic["train"].parent / "audio"
    (tmp_path / "broken.wav").write_bytes(os.urandom(2000))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,labels\n{audio_dir / 'clip0000.wav'},tone\n{tmp_path / 'broken.wav'},tone\n")
    result = runner.invoke(
        app,
        [
            "extract-features",
            str(manifest),
            "--frontend",
            "kaldi-fbank",
            "--out",
            str(tmp_path / "f"),
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 2
    assert "broken.wav" in result.output
    assert len(FeatureStore(tmp_path / "f")) == 1  # the good clip before it is kept


def test_unknown_labels_fail_before_work(synthetic, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n0,tone,tone\n")
    examples = read_manifest(synthetic["train"]).examples
    with pytest.raises(TaggerError, match="chirp|clicks|hum|beeps|noise"):
        extract_features(examples, tmp_path / "f", "kaldi-fbank", labels=LabelSet.from_csv(labels), workers=0)
    assert not (tmp_path / "f").exists()


def test_unknown_frontend(synthetic, tmp_path):
    result = runner.invoke(
        app, ["extract-features", str(synthetic["train"]), "--frontend", "mfcc", "--out", str(tmp_path / "f")]
    )
    assert result.exit_code == 2 and "kaldi-fbank" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_leaves_a_valid_store_and_resumes(tmp_path, sig):
    data = synthesize(tmp_path / "data", clips=160, seconds=1.0, sample_rate=16000, valid_fraction=0.01)
    out = tmp_path / "f"
    command = [sys.executable, "-m", "tagger", "extract-features", str(data["train"]), "--frontend", "kaldi-fbank",
               "--out", str(out), "--workers", "0", "--batch-size", "2", "--shard-size", "4"]
    # A job started in the background of a script inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the child the default disposition, as a terminal would.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while len(list(out.glob("shards/part-*.json"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    partial = FeatureStore(out)
    assert 0 < len(partial) < 158, "the kill should land mid-run"
    for i in range(len(partial)):
        assert np.isfinite(partial.features(i).astype(np.float32)).all()
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "rerun the same command" in stderr
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    store = FeatureStore(out)
    assert sorted(store.ids) == sorted(e.id for e in read_manifest(data["train"]).examples)
    module = build_frontend("kaldi-fbank").eval()
    from tagger import audio

    example = read_manifest(data["train"]).examples[0]
    with torch.inference_mode():
        expected = module(torch.from_numpy(audio.load(example.path, 16000))[None])[0].numpy()
    np.testing.assert_allclose(
        store.features(store.ids.index(example.id)).astype(np.float32), expected, rtol=1e-3, atol=1e-2
    )


def test_real_esc50_clips(tmp_path):

    root = shared_path("data", "esc50-folds1-4")
    rows = (root / "esc50.csv").read_text().splitlines()
    (tmp_path / "esc50.csv").write_text("\n".join(rows[:9]) + "\n")  # header + 8 real clips of fold 1
    args = ["--manifest-format", "esc50", "--audio-dir", str(root / "audio"), "--folds", "1"]
    args += ["--labels", str(root / "class_labels_indices.csv"), "--frontend", "kaldi-fbank"]
    result = runner.invoke(
        app,
        [
            "extract-features",
            str(tmp_path / "esc50.csv"),
            *args,
            "--out",
            str(tmp_path / "f"),
            "--workers",
            "2",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert (row["new"], row["frames_min"], row["frames_max"]) == (8, 498, 498)  # 5 s at 16 kHz, AST framing
    # Real ESC-50 fbank statistics sit near AST's published ESC-50 constants (mean -6.63, std 5.36).
    assert -9 < row["mean"] < -4 and 4 < row["std"] < 7
