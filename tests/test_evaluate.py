"""tagger evaluate: targets from manifests, scoring through predict_files, metrics, saved files, errors, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tagger.checkpoint import save_checkpoint
from tagger.cli import app
from tagger.data.manifests import read_manifest
from tagger.errors import TaggerError
from tagger.evaluation import metrics
from tagger.evaluation.evaluate import (
    PER_CLASS_COLUMNS,
    EvaluationResult,
    evaluate,
    label_mapper,
    load_predictions,
    score,
)
from tagger.fileio import atomic_write_csv
from tagger.inference.predict import PredictOptions, predict_files
from tagger.inference.runtime import Scorer
from tagger.labels import LabelSet
from tagger.models import create_model

runner = CliRunner()


def make_checkpoint(path: Path, labels: LabelSet, task: str) -> Path:
    """An untrained efficientat-mn01 with a random classifier, so clips get distinct, untied scores."""
    torch.manual_seed(0)
    model = create_model("efficientat-mn01", num_classes=len(labels))
    with torch.no_grad():
        for parameter in model.classifier.parameters():
            if parameter.ndim == 2:
                torch.nn.init.normal_(parameter, std=50.0)
    return save_checkpoint(path, model, labels, task=task)


@pytest.fixture(scope="module")
def setup(synth_set, tmp_path_factory) -> dict:
    """Checkpoints of both tasks and manifests around the synthetic set (absolute paths, own folder)."""
    folder = tmp_path_factory.mktemp("evaluate")
    labels = LabelSet.from_csv(synth_set["labels"])
    every = read_manifest(synth_set["train"]).examples + read_manifest(synth_set["valid"]).examples
    rows = [[str(e.path), ",".join(e.labels), e.id] for e in every]
    single = [[str(e.path), e.labels[0], e.id] for e in every]
    paths = {
        "multi": folder / "multi.csv",
        "single": folder / "single.csv",
        "ml_ckpt": make_checkpoint(folder / "ml.pt", labels, "multilabel"),
        "mc_ckpt": make_checkpoint(folder / "mc.pt", labels, "multiclass"),
        "folder": folder,
    }
    atomic_write_csv(paths["multi"], ["path", "labels", "id"], rows)
    atomic_write_csv(paths["single"], ["path", "labels", "id"], single)
    paths["small"] = folder / "small.csv"  # one batch: quick CLI runs
    atomic_write_csv(paths["small"], ["path", "labels", "id"], rows[:6])
    esc = [[Path(e.path).name, 1 + i % 3, labels.index(e.labels[0]), e.labels[0], "False", e.id, "A"]
           for i, e in enumerate(every)]
    paths["esc50"] = folder / "esc50.csv"
    atomic_write_csv(paths["esc50"], ["filename", "fold", "target", "category", "esc10", "src_file", "take"], esc)
    paths["audio"] = Path(every[0].path).parent
    paths["examples"] = every
    return paths


@pytest.fixture(scope="module")
def ml_tagger(setup) -> Scorer:
    return Scorer.load(setup["ml_ckpt"], device="cpu")


@pytest.fixture(scope="module")
def mc_tagger(setup) -> Scorer:
    return Scorer.load(setup["mc_ckpt"], device="cpu")


@pytest.fixture(scope="module")
def ml_result(setup, ml_tagger) -> EvaluationResult:
    return evaluate(ml_tagger, setup["multi"])


def test_multilabel_metrics_equal_summarize_over_saved_predictions(setup, ml_result, tmp_path):
    result = ml_result
    examples = setup["examples"]
    assert result.ids == [e.id for e in examples]  # manifest order
    assert result.task == "multilabel" and result.metrics["task"] == "multilabel"
    assert result.metrics["clips"] == 24 and result.metrics["skipped"] == 0 and result.metrics["classes"] == 6
    assert "accuracy" not in result.metrics  # clips have 1-3 labels: not a single-label set
    npz = result.save_predictions(tmp_path / "preds.npz")
    with np.load(npz, allow_pickle=False) as data:
        assert {"ids", "paths", "probabilities", "logits", "targets", "label_ids", "label_names", "task"} <= set(
            data.files)
        probs, logits, targets = data["probabilities"], data["logits"], data["targets"]
        assert probs.shape == logits.shape == targets.shape == (24, 6)
        assert probs.dtype == logits.dtype == targets.dtype == np.float32
        assert list(data["ids"]) == result.ids
        assert list(data["paths"]) == [str(e.path) for e in examples]
        assert list(data["label_ids"]) == list(result.labels.ids)
        assert list(data["label_names"]) == list(result.labels.names)
        assert str(data["task"]) == "multilabel"
        assert np.isnan(float(data["clip_seconds"]))
    expected = metrics.summarize(targets, probs, "multilabel")
    assert {k: result.metrics[k] for k in expected} == pytest.approx(expected)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6)
    np.testing.assert_array_equal(targets, result.labels.encode_many([e.labels for e in examples]))
    assert 0 < result.metrics["mAP"] < 1 and result.metrics["mAUC"] != 0.5  # the random classifier is not flat
    again = load_predictions(npz)
    assert again.metrics == pytest.approx(result.metrics)
    assert again.ids == result.ids and again.labels == result.labels


def test_scores_come_from_predict_files_whole_clip_or_cropped(setup, ml_tagger, ml_result):
    paths = [e.path for e in setup["examples"]]
    whole = np.stack([r.probabilities for r in predict_files(ml_tagger, paths)])
    np.testing.assert_allclose(ml_result.probabilities, whole, atol=1e-5)
    cropped = evaluate(ml_tagger, setup["multi"], clip_seconds=0.5, batch_size=5)
    direct = np.stack([r.probabilities for r in predict_files(ml_tagger, paths, PredictOptions(clip_seconds=0.5))])
    np.testing.assert_allclose(cropped.probabilities, direct, atol=1e-5)
    assert not np.allclose(cropped.probabilities, ml_result.probabilities, atol=1e-4)
    assert cropped.clip_seconds == 0.5


def test_multiclass_checkpoint_gives_accuracy_and_softmax(setup, mc_tagger, tmp_path):
    result = evaluate(mc_tagger, setup["single"])
    assert result.task == "multiclass"
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    indices = result.targets.argmax(axis=1)
    assert result.metrics["accuracy"] == metrics.accuracy(indices, result.probabilities)
    assert result.metrics["top5_accuracy"] == metrics.top_k_accuracy(indices, result.probabilities, 5)
    expected = metrics.summarize(result.targets, result.probabilities, "multiclass")
    assert {k: result.metrics[k] for k in expected} == pytest.approx(expected)
    png = result.plot(tmp_path / "mc.png")  # bars and a confusion matrix
    from PIL import Image

    with Image.open(png) as image:
        assert image.size[0] > 800 and image.size[1] > 300


def test_multilabel_checkpoint_on_single_label_set_reports_accuracy(setup, ml_tagger):
    result = evaluate(ml_tagger, setup["single"])
    assert "accuracy" in result.metrics and "top5_accuracy" in result.metrics
    assert result.metrics["accuracy"] == metrics.accuracy(result.targets, result.probabilities)


def test_multiclass_checkpoint_refuses_multi_label_clips(setup, mc_tagger):
    with pytest.raises(TaggerError, match="exactly one per clip") as error:
        evaluate(mc_tagger, setup["multi"])
    assert ".wav" in str(error.value)


def test_per_class_csv_has_one_row_per_class(ml_result, tmp_path):
    path = ml_result.write_per_class(tmp_path / "classes.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(PER_CLASS_COLUMNS)
    assert [r["id"] for r in rows] == list(ml_result.labels.ids)
    assert [int(r["positives"]) for r in rows] == ml_result.targets.sum(axis=0).astype(int).tolist()
    ap = metrics.average_precision(ml_result.targets, ml_result.probabilities)
    np.testing.assert_allclose([float(r["AP"]) for r in rows], ap)


def test_missing_and_unreadable_files_fail_or_skip(setup, ml_tagger, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    rows = [[str(e.path), ",".join(e.labels), e.id] for e in setup["examples"][:6]]
    rows[2] = [str(tmp_path / "nowhere.wav"), "tone", "gone"]
    rows[4] = [str(bad), "hum", "bad"]
    manifest = tmp_path / "broken.csv"
    atomic_write_csv(manifest, ["path", "labels", "id"], rows)
    with pytest.raises(TaggerError, match="nowhere.wav: audio file not found"):
        evaluate(ml_tagger, manifest)
    seen, progress = [], []
    result = evaluate(ml_tagger, manifest, on_error="skip", on_skip=seen.append,
                      on_progress=lambda done, total: progress.append((done, total)))
    assert [p.path.name for p in result.skipped] == ["nowhere.wav", "bad.wav"] == [p.path.name for p in seen]
    assert result.metrics["skipped"] == 2 and result.metrics["clips"] == 4
    assert result.ids == [rows[i][2] for i in (0, 1, 3, 5)]
    assert progress[-1] == (6, 6)
    good = evaluate(ml_tagger, setup["multi"])
    keep = [good.ids.index(i) for i in result.ids]
    np.testing.assert_allclose(result.probabilities, good.probabilities[keep], atol=1e-5)
    del rows[2]  # only the unreadable file is left: it fails with its name
    atomic_write_csv(manifest, ["path", "labels", "id"], rows)
    with pytest.raises(TaggerError, match="bad.wav"):
        evaluate(ml_tagger, manifest)


def test_unknown_label_names_the_label_and_the_file(setup, ml_tagger, tmp_path):
    rows = [[str(e.path), ",".join(e.labels), e.id] for e in setup["examples"][:4]]
    rows[1][1] = "tone,bogus"
    rows[3][1] = "other"
    manifest = tmp_path / "unknown.csv"
    atomic_write_csv(manifest, ["path", "labels", "id"], rows)
    with pytest.raises(TaggerError) as error:
        evaluate(ml_tagger, manifest)
    message = str(error.value)
    assert "'bogus'" in message and Path(rows[1][0]).name in message and "1 more unknown" in message
    assert "\n" not in message


def test_label_mapper():
    model = LabelSet(["/m/a", "/m/b", "/m/c"], ["Alpha", "Beta", "Gamma"])
    plain = label_mapper(model)
    assert [plain(x) for x in ("/m/b", "Gamma", "nope")] == [1, 2, None]
    numbered = LabelSet(["class_000", "class_001", "class_002"])  # imported without --labels
    by_position = label_mapper(numbered, model)
    assert [by_position(x) for x in ("/m/c", "Beta", "class_000", "nope")] == [2, 1, 0, None]
    renamed = LabelSet(["dog", "cat"], ["/m/b", "/m/a"])  # manifest words -> the model's ids
    mapped = label_mapper(model, renamed)
    assert [mapped("dog"), mapped("cat"), mapped("Gamma")] == [1, 0, 2]


def test_labels_file_maps_manifest_vocabulary(setup, ml_tagger, ml_result, tmp_path):
    names = [f"Sound {i}" for i in range(6)]
    mapping = tmp_path / "map.csv"
    atomic_write_csv(mapping, ["index", "mid", "display_name"],
                     [[i, f"/m/{i}", names[i]] for i in range(6)])
    rows = [[str(e.path), ";".join(names[ml_tagger.labels.index(x)] for x in e.labels), e.id]
            for e in setup["examples"]]
    manifest = tmp_path / "renamed.csv"
    atomic_write_csv(manifest, ["path", "labels", "id"], rows)
    with pytest.raises(TaggerError, match="'Sound"):
        evaluate(ml_tagger, manifest)
    result = evaluate(ml_tagger, manifest, labels=mapping)  # by position: both have 6 classes
    np.testing.assert_array_equal(result.targets, ml_result.targets)


def test_score_checks_shapes():
    labels = LabelSet(["a", "b"])
    with pytest.raises(TaggerError, match="same"):
        score(np.zeros((3, 2)), np.zeros((3, 3)), None, labels, "multilabel")
    with pytest.raises(TaggerError, match="2 classes"):
        score(np.zeros((3, 3)), np.zeros((3, 3)), None, labels, "multilabel")


def invoke(*args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_cli_formats(setup, fmt, tmp_path):
    files = {"per-class": tmp_path / "pc.csv", "save-predictions": tmp_path / "p.npz", "plot": tmp_path / "p.png"}
    extra = [x for name, path in files.items() for x in (f"--{name}", path)] if fmt == "table" else []
    manifest = setup["multi"] if fmt == "table" else setup["small"]
    result = invoke(manifest, "--model", setup["ml_ckpt"], "--format", fmt, "--device", "cpu", *extra)
    assert result.exit_code == 0, result.output
    if fmt == "json":
        row = json.loads(result.stdout)[0]
        assert row["clips"] == 6 and set(metrics.summarize(np.eye(2), np.eye(2))) <= set(row)
    elif fmt == "csv":
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("clips,skipped,classes,task,mAP,mAUC,d_prime,lwlrap")
    else:
        assert "mAP" in result.stdout and "lwlrap" in result.stdout
        assert all(path.is_file() for path in files.values())
        assert load_predictions(files["save-predictions"]).metrics["clips"] == 24


def test_cli_esc50_folds_single_label(setup):
    result = invoke(setup["esc50"], "--model", setup["mc_ckpt"], "--folds", "1,2", "--audio-dir", setup["audio"],
                    "--format", "json", "--clip-seconds", "0.5")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert row["clips"] == 16 and row["task"] == "multiclass" and "top5_accuracy" in row


def test_cli_skip_lists_files_on_stderr(setup, tmp_path):
    rows = [[str(e.path), ",".join(e.labels), e.id] for e in setup["examples"][:5]]
    rows.append([str(tmp_path / "nowhere.wav"), "tone", "gone"])
    manifest = tmp_path / "m.csv"
    atomic_write_csv(manifest, ["path", "labels", "id"], rows)
    result = invoke(manifest, "--model", setup["ml_ckpt"], "--on-error", "skip", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["skipped"] == 1
    assert "nowhere.wav" in result.stderr
    failed = invoke(manifest, "--model", setup["ml_ckpt"])
    assert failed.exit_code == 2 and "nowhere.wav" in failed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{folder}/absent.csv"], "does not exist"),
        (["{folder}/empty.csv"], "lists no clips"),
        (["{folder}/nolabels.csv"], "no clip has a label"),
        (["{esc50}", "--folds", "1,x"], "--folds '1,x'"),
        (["{esc50}", "--folds", "9", "--audio-dir", "{audio}"], "no clips in folds"),
        (["{small}", "--on-error", "ignore"], "--on-error 'ignore'"),
        (["{small}", "--format", "yaml"], "--format 'yaml'"),
        (["{small}", "--clip-seconds", "-1"], "--clip-seconds"),
        (["{small}", "--long-input", "crops"], "--long-input does not apply"),
    ],
)
def test_cli_user_errors_are_one_line(setup, args, message):
    (setup["folder"] / "empty.csv").write_text("path,labels,id\n")
    (setup["folder"] / "nolabels.csv").write_text(f"path\n{setup['examples'][0].path}\n")
    args = [a.format(folder=setup["folder"], esc50=setup["esc50"], small=setup["small"], audio=setup["audio"])
            for a in args]
    result = invoke(*args, "--model", setup["mc_ckpt"] if "esc50" in args[0] else setup["ml_ckpt"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1], result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
