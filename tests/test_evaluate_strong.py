"""`tagger evaluate --strong`: PSDS and event/segment F1 of a model's frame scores against strong labels, equal to
sed_scores_eval run on the scores the command saves."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fake_scenes, spread_model, tiny_htsat
from typer.testing import CliRunner

from tagger.checkpoint import save_checkpoint
from tagger.cli import app
from tagger.labels import LabelSet

sse = pytest.importorskip("sed_scores_eval")
RATE = 32000
CLASSES = LabelSet.from_list(["dog", "rooster"], ["dog", "rooster"])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A fake ESC-50 (dog, rooster, rain clips in folds 1-4), its scenes, and two tiny checkpoints."""
    root = fake_scenes(tmp_path_factory.mktemp("strong"), RATE)
    torch.manual_seed(0)
    htsat = tiny_htsat()
    save_checkpoint(root / "htsat.pt", htsat.eval(), CLASSES)
    save_checkpoint(root / "mn01.pt", spread_model("efficientat-mn01", 2, seed=0).eval(), CLASSES)
    return root


def evaluate(scenes, model, *extra):
    return CliRunner().invoke(app, ["evaluate", "--model", str(scenes / model), "--strong",
                                    str(scenes / "scenes" / "test-strong.tsv"), "--audio-dir",
                                    str(scenes / "scenes" / "audio"), "--format", "json", *extra])


def test_psds_equals_sed_scores_eval_on_the_saved_scores(scenes, tmp_path):
    result = evaluate(scenes, "htsat.pt", "--save-scores", str(tmp_path / "scores"), "--per-class",
                      str(tmp_path / "per-class.csv"), "--plot", str(tmp_path / "roc.png"), "--median-filter", "0.1")
    assert result.exit_code == 0, result.output
    (metrics,) = json.loads(result.stdout)
    assert metrics["files"] == 2 and metrics["time_axis"] == "frames" and metrics["classes"] <= 2
    assert metrics["event_rule"]["median_filter"] == 0.1
    for key in ("psds1", "psds2", "event_f1", "segment_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    saved = sorted(p.name for p in (tmp_path / "scores").glob("*.tsv"))
    assert saved == ["test-0000.tsv", "test-0001.tsv"]
    durations = {p.stem: 4.0 for p in (tmp_path / "scores").glob("*.tsv")}
    psds, *_ = sse.intersection_based.psds(
        scores=str(tmp_path / "scores"), ground_truth=str(scenes / "scenes" / "test-strong.tsv"),
        audio_durations=durations, dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=None, alpha_ct=0.0,
        alpha_st=1.0, max_efpr=100.0, unit_of_time="hour", time_decimals=6)
    assert metrics["psds1"] == pytest.approx(psds, abs=1e-6)
    assert (tmp_path / "per-class.csv").read_text().startswith("class,events,psds1,psds2")
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_a_clip_level_model_is_scored_from_windows_and_says_so(scenes):
    result = evaluate(scenes, "mn01.pt")
    assert result.exit_code == 0, result.output
    (metrics,) = json.loads(result.stdout)
    assert metrics["time_axis"].startswith("2 s windows every 0.5 s") and "no frame-level output" in result.stderr


def test_unknown_labels_and_missing_options_are_one_line_errors(scenes, tmp_path):
    other = tmp_path / "other.tsv"
    other.write_text("filename\tonset\toffset\tevent_label\ntest-0000.wav\t0.5\t1.0\tcat\n")
    result = CliRunner().invoke(app, ["evaluate", "--model", str(scenes / "htsat.pt"), "--strong", str(other),
                                      "--audio-dir", str(scenes / "scenes" / "audio")])
    assert result.exit_code == 2 and "--label-map" in result.stderr.strip().splitlines()[-1]
    result = CliRunner().invoke(app, ["evaluate", "--model", str(scenes / "htsat.pt"), "--strong", str(other)])
    assert result.exit_code == 2 and "give --audio-dir" in result.stderr


def test_overlapping_same_class_annotations_are_joined_with_a_note(scenes, tmp_path):
    from tagger.evaluation.strong import _join_overlaps

    truth, joined = _join_overlaps({"a": [(1.0, 2.0, "dog"), (2.0, 3.0, "dog"), (1.5, 1.8, "rooster"),
                                          (4.0, 5.0, "dog")]})
    assert joined == 1 and truth["a"] == [(1.0, 3.0, "dog"), (1.5, 1.8, "rooster"), (4.0, 5.0, "dog")]
    overlapping = tmp_path / "overlap.tsv"
    overlapping.write_text("filename\tonset\toffset\tevent_label\ntest-0000.wav\t0.5\t1.5\tdog\n"
                           "test-0000.wav\t1.0\t2.0\tdog\ntest-0001.wav\t0.2\t0.9\trooster\n")
    result = CliRunner().invoke(app, ["evaluate", "--model", str(scenes / "htsat.pt"), "--strong", str(overlapping),
                                      "--audio-dir", str(scenes / "scenes" / "audio"), "--window", "2"])
    assert result.exit_code == 0, result.output
    assert "1 annotated events overlapped" in result.stderr


def test_tuned_thresholds_reach_their_f1_when_used_and_travel_to_predict(scenes, tmp_path):
    tuned = tmp_path / "rule.json"
    result = evaluate(scenes, "htsat.pt", "--tune-rule", str(tuned), "--median-filter", "0.05")
    assert result.exit_code == 0, result.output
    (default,) = json.loads(result.stdout)
    saved = json.loads(tuned.read_text())
    assert saved["format"] == "tagger-event-rule" and saved["tuned_for"] == "event_f1"
    assert saved["median_filter"] == 0.05 and set(saved["on"]) <= {"dog", "rooster"}
    assert all(0.05 <= v <= 0.95 and saved["off"][c] == pytest.approx(v / 2) for c, v in saved["on"].items())
    # The rule, used on the same files, gives each class the F1 the tuning reached (one post-processing path).
    result = evaluate(scenes, "htsat.pt", "--event-rule", str(tuned), "--per-class", str(tmp_path / "pc.csv"))
    assert result.exit_code == 0, result.output
    (used,) = json.loads(result.stdout)
    import csv

    rows = {row["class"]: float(row["event_f1"]) for row in csv.DictReader(open(tmp_path / "pc.csv"))}
    assert rows == pytest.approx(saved["f1"], abs=1e-6)
    assert used["event_macro_f1"] >= default["event_macro_f1"] - 1e-9
    assert used["event_rule"]["on"] == [saved["on"][c] for c in sorted(saved["on"])]
    clip = str(scenes / "scenes" / "audio" / "test-0000.wav")
    result = CliRunner().invoke(app, ["predict", clip, "--model", str(scenes / "htsat.pt"), "--events",
                                      "--event-rule", str(tuned), "--format", "json"])
    assert result.exit_code == 0, result.output
    (obj,) = json.loads(result.stdout)
    assert obj["event_rule"]["on"] == [saved["on"].get(name, 0.5) for name in ("dog", "rooster")]
    result = CliRunner().invoke(app, ["predict", clip, "--model", str(scenes / "htsat.pt"), "--event-rule", str(tuned)])
    assert result.exit_code == 2 and "add --events" in result.stderr


def test_a_saved_rule_names_classes_the_model_lacks(tmp_path):
    from tagger.errors import TaggerError
    from tagger.inference.events import EventRule, read_rule, write_rule

    write_rule(tmp_path / "r.json", EventRule(on=(0.3, 0.8), off=(0.1, 0.4)), ["dog", "cat"])
    rule = read_rule(tmp_path / "r.json", ["cat", "cow", "dog"], EventRule(on=0.6))
    assert rule.on == (0.8, 0.6, 0.3) and rule.off == (0.4, 0.3, 0.1)
    with pytest.raises(TaggerError, match="classes the model does not have: cat"):
        read_rule(tmp_path / "r.json", ["dog"], EventRule())
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(TaggerError, match="not an event-rule file"):
        read_rule(tmp_path / "x.json", ["dog"], EventRule())
