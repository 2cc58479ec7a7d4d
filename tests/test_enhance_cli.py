"""`tagger enhance-labels` end to end on the weakly labelled synthetic set (tonal/broadband above six classes)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tagger.checkpoint import save_checkpoint
from tagger.cli import app
from tagger.data.synth import synthesize
from tagger.evaluation.evaluate import load_predictions, score
from tagger.labels import LabelSet
from tagger.models import create_model
from tagger.training.data import Teacher

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def labels_of(path) -> dict[str, set[str]]:
    with open(path, newline="") as handle:
        return {row["id"]: set(filter(None, row["labels"].split(","))) for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    """24 one-second clips whose train labels miss parents and children (Type I and II gaps), plus the truth."""
    return synthesize(tmp_path_factory.mktemp("weak"), clips=24, seconds=1.0, sample_rate=16000, seed=5,
                      hierarchy=True, missing_labels=0.5)


@pytest.fixture(scope="module")
def oracle(weak, tmp_path_factory):
    """A predictions file scoring the complete labels 0.9 and everything else 0.1: a perfect teacher."""
    labels = LabelSet.from_csv(weak["labels"])
    complete = labels_of(weak["train_complete"])
    ids = list(complete)
    probabilities = np.where(labels.encode_many([sorted(complete[i]) for i in ids]) > 0, 0.9, 0.1)
    path = tmp_path_factory.mktemp("oracle") / "oracle.npz"
    score(probabilities, probabilities, None, labels, "multilabel", ids=ids).save_predictions(path)
    return path


def test_perfect_teacher_restores_exactly_the_complete_labels(weak, oracle, tmp_path):
    out = tmp_path / "enhanced.csv"
    result = invoke("enhance-labels", weak["train"], "--teacher", oracle, "--ontology", weak["ontology"],
                    "--threshold", "0.5", "--out", out)
    assert result.exit_code == 0, result.output
    before, after, truth = labels_of(weak["train"]), labels_of(out), labels_of(weak["train_complete"])
    assert before != truth and after == truth
    assert len((tmp_path / "enhanced_weight.csv").read_text().splitlines()) == len(truth)
    report = (tmp_path / "enhanced-report.md").read_text()
    assert "## Most common additions" in report and "| Type I |" in report and "| Type II |" in report
    with open(tmp_path / "enhanced-report.csv", newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    missing = {label: sum(label in truth[i] - before[i] for i in truth) for label in rows}
    assert {label: int(row["added"]) for label, row in rows.items()} == missing

    again = invoke("enhance-labels", out, "--teacher", oracle, "--ontology", weak["ontology"], "--threshold", "0.5",
                   "--out", tmp_path / "twice.csv")
    assert again.exit_code == 0 and labels_of(tmp_path / "twice.csv") == truth  # nothing new the second time


def test_checkpoint_teacher_is_cached_and_its_logits_train_a_student(weak, tmp_path):
    labels = LabelSet.from_csv(weak["labels"])
    torch.manual_seed(0)
    model = create_model("efficientat-mn01", num_classes=len(labels))
    teacher = save_checkpoint(tmp_path / "teacher.pt", model, labels, task="multilabel")
    out = tmp_path / "run" / "enhanced.csv"
    logits = tmp_path / "logits.npz"
    first = invoke("enhance-labels", weak["train"], "--teacher", teacher, "--ontology", weak["ontology"], "--out", out,
                   "--store-teacher-logits", logits, "--top-k", "3", "--format", "json")
    assert first.exit_code == 0, first.output
    assert (tmp_path / "run" / "teacher_scores.npz").is_file() and out.is_file()
    stored = Teacher.load(logits, labels, temperature=1.0)
    assert len(stored.row) == len(labels_of(weak["train"])) and ((stored.probs > 0).sum(axis=1) == 3).all()

    second = invoke("enhance-labels", weak["train"], "--teacher", teacher, "--ontology", weak["ontology"], "--out",
                    out, "--threshold", "p10", "--force")
    assert second.exit_code == 0 and "teacher scores come from" in second.output

    student = invoke("train", "--arch", "efficientat-mn01", "--train", out, "--valid", weak["valid"], "--labels",
                     weak["labels"], "--out", tmp_path / "student", "--set", "run.epochs=1",
                     "--set", "data.clip_seconds=1", "--set", "data.batch_size=8", "--set", f"loss.teacher={logits}")
    assert student.exit_code == 0, student.output
    assert (tmp_path / "student" / "last.pt").is_file()


def test_dry_run_and_no_overwrite_without_force(weak, oracle, tmp_path):
    out = tmp_path / "enhanced.csv"
    dry = invoke("enhance-labels", weak["train"], "--teacher", oracle, "--ontology", weak["ontology"], "--out", out,
                 "--dry-run")
    assert dry.exit_code == 0 and (tmp_path / "enhanced-report.md").is_file() and not out.exists()
    refused = invoke("enhance-labels", weak["train"], "--teacher", oracle, "--ontology", weak["ontology"], "--out",
                     out)
    assert refused.exit_code == 2 and "exists; pass --force" in refused.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs the class hierarchy"),
        (["--ontology", "ONTO", "--top-k", "3"], "--top-k applies to --store-teacher-logits"),
        (["--ontology", "ONTO", "--threshold", "p50"], "--threshold 'p50'"),
        (["--ontology", "ONTO", "--fix", "type3"], "--fix"),
        (["--ontology", "ONTO", "--out", "TRAIN"], "would replace the input manifest"),
    ],
)
def test_user_errors_are_one_line(weak, oracle, tmp_path, extra, message):
    extra = [str(weak["ontology"]) if a == "ONTO" else str(weak["train"]) if a == "TRAIN" else a for a in extra]
    result = invoke("enhance-labels", weak["train"], "--teacher", oracle, "--out", tmp_path / "o.csv", *extra)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_audioset_labels_without_ontology_say_where_it_is(weak, oracle, tmp_path):
    rows = weak["train"].read_text().splitlines()
    manifest = weak["train"].with_name("audioset-ids.csv")  # the same clips, labelled with AudioSet ids
    manifest.write_text("\n".join([rows[0], *(f"{row.split(',')[0]},/m/09x0r,{k}" for k, row in enumerate(rows[1:]))])
                        + "\n")
    result = invoke("enhance-labels", manifest, "--teacher", oracle, "--out", tmp_path / "o.csv")
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert "these are AudioSet labels" in line and "ontology.json" in line and "--ontology ontology.json" in line


def test_teacher_with_other_classes_names_the_missing_ones(weak, tmp_path):
    other = LabelSet(["tone", "chirp"])
    probabilities = np.full((2, 2), 0.5)
    path = tmp_path / "other.npz"
    score(probabilities, probabilities, None, other, "multilabel", ids=["x", "y"]).save_predictions(path)
    result = invoke("enhance-labels", weak["train"], "--teacher", path, "--ontology", weak["ontology"], "--out",
                    tmp_path / "o.csv")
    assert result.exit_code == 2 and "teacher's 2 classes lack" in result.output and "'tonal'" in result.output


def test_cache_scores_only_new_clips_and_merges_them(weak, tmp_path):
    labels = LabelSet.from_csv(weak["labels"])
    torch.manual_seed(1)
    teacher = save_checkpoint(tmp_path / "teacher.pt", create_model("efficientat-mn01", num_classes=len(labels)),
                              labels, task="multilabel")
    rows = weak["train"].read_text().splitlines()
    half = weak["train"].with_name("train-half.csv")
    half.write_text("\n".join(rows[: 1 + (len(rows) - 1) // 2]) + "\n")
    out = tmp_path / "out"
    first = invoke("enhance-labels", half, "--teacher", teacher, "--ontology", weak["ontology"], "--out",
                   out / "half.csv")
    assert first.exit_code == 0, first.output
    before = load_predictions(out / "teacher_scores.npz", with_metrics=False)
    second = invoke("enhance-labels", weak["train"], "--teacher", teacher, "--ontology", weak["ontology"], "--out",
                    out / "all.csv")
    assert second.exit_code == 0, second.output
    scored = len(rows) - 1
    assert f"{len(before.ids)} clips' teacher scores come from" in second.output
    assert f"{scored - len(before.ids)} to score" in second.output
    after = load_predictions(out / "teacher_scores.npz", with_metrics=False)
    assert sorted(after.ids) == sorted(labels_of(weak["train"])) and after.ids[: len(before.ids)] == before.ids
    assert np.array_equal(after.logits[: len(before.ids)], before.logits)
