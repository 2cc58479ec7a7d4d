"""An event rule stored in a checkpoint: written in place atomically, read back by class name, used by predict
--events, evaluate --strong and Tagger.predict(events=True) when no event option is given, and stored by
evaluate --strong --tune-rule --store-rule."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
import torch
from conftest import fake_scenes, tiny_htsat
from typer.testing import CliRunner

import tagger
from tagger.checkpoint import save_checkpoint
from tagger.cli import app
from tagger.errors import TaggerError
from tagger.inference.events import EventRule, choose_rule, write_rule
from tagger.labels import LabelSet
from tagger.torchfile import read_torch_file

RATE = 32000
CLASSES = LabelSet.from_list(["dog", "rooster"], ["dog", "rooster"])
# This model's dog and rooster scores stay between 0.5 and 0.7 on the scenes: at the default onset threshold
# (0.5) both classes give events; an onset threshold of 0.9 for dog leaves only rooster's.
NO_DOG = EventRule(on=(0.9, 0.5))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A fake ESC-50's scenes with strong labels, and a tiny frame-level (HTS-AT) checkpoint over dog, rooster."""
    root = fake_scenes(tmp_path_factory.mktemp("rule-store"), RATE)
    torch.manual_seed(0)
    htsat = tiny_htsat()
    save_checkpoint(root / "htsat.pt", htsat.eval(), CLASSES, train={"epoch": 3, "metric": "mAP"})
    return root


@pytest.fixture
def model(scenes, tmp_path):
    """A fresh copy of the checkpoint, for one test to change."""
    return shutil.copy(scenes / "htsat.pt", tmp_path / "model.pt")


def clip(scenes) -> str:
    return str(scenes / "scenes" / "audio" / "test-0000.wav")


def labels_of(events) -> set[str]:
    return {event["label"] if isinstance(event, dict) else event.name for event in events}


def predict_json(scenes, model, *extra):
    result = CliRunner().invoke(app, ["predict", clip(scenes), "--model", str(model), "--events", "--format", "json",
                                      *extra])
    assert result.exit_code == 0, result.output
    (obj,) = json.loads(result.stdout)
    return obj, result.stderr


def test_storing_is_atomic_keeps_the_rest_of_the_payload_and_the_file_mode(model, monkeypatch):
    before = read_torch_file(model)
    os.chmod(model, 0o640)
    assert tagger.store_event_rule(model, NO_DOG) == model
    after = read_torch_file(model)
    assert set(after) == set(before) | {"event_rule"}
    for key in before:
        if key != "state_dict":
            assert after[key] == before[key], key
    assert before["state_dict"].keys() == after["state_dict"].keys()
    assert all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    record = after["event_rule"]
    assert record["format"] == "tagger-event-rule" and record["on"] == {"dog": 0.9, "rooster": 0.5}
    assert record["off"] == {"dog": 0.45, "rooster": 0.25} and "date" in record
    assert os.stat(model).st_mode & 0o777 == 0o640

    # A write that fails half-way leaves the file as it was, and no temporary file beside it.
    saved = model.read_bytes()

    def broken_save(payload, path):
        with open(path, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr("tagger.checkpoint.torch.save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tagger.store_event_rule(model, EventRule(on=0.3))
    assert model.read_bytes() == saved and sorted(p.name for p in model.parent.iterdir()) == ["model.pt"]


def test_the_stored_rule_is_read_by_class_name_and_can_be_removed(model, tmp_path):
    assert tagger.load(model).event_rule is None
    write_rule(tmp_path / "rule.json", EventRule(on=(0.9,)), ["rooster"], {"tuned_on": "valid.tsv"})
    tagger.store_event_rule(model, tmp_path / "rule.json")
    loaded = tagger.load(model)
    assert loaded.event_rule.on == (0.5, 0.9) and loaded.event_rule.off == (0.25, 0.45)  # dog keeps the default
    assert repr(loaded).endswith(", stored event rule)")
    record = read_torch_file(model)["event_rule"]
    assert record["tuned_on"] == "valid.tsv" and record["file"] == str(tmp_path / "rule.json")
    tagger.store_event_rule(model, None)
    assert tagger.load(model).event_rule is None and "event_rule" not in read_torch_file(model)


def test_predict_events_uses_the_stored_rule_unless_an_event_option_is_given(scenes, model, tmp_path):
    default, _ = predict_json(scenes, model)
    assert labels_of(default["events"]) == {"dog", "rooster"} and default["event_rule"]["source"] == "options"
    tagger.store_event_rule(model, NO_DOG)

    stored, log = predict_json(scenes, model)
    assert labels_of(stored["events"]) == {"rooster"}
    assert stored["event_rule"]["on"] == [0.9, 0.5] and stored["event_rule"]["source"] == "checkpoint"
    assert f"the one stored in {model}" in log

    for option in (["--onset-threshold", "0.5"], ["--min-duration", "0.1"], ["--median-filter", "0"]):
        explicit, log = predict_json(scenes, model, *option)
        assert labels_of(explicit["events"]) == {"dog", "rooster"}, option
        assert explicit["event_rule"]["on"] == 0.5 and explicit["event_rule"]["source"] == "options"
        assert "stored in" not in log
    write_rule(tmp_path / "low.json", EventRule(on=(0.3,)), ["dog"])
    from_file, _ = predict_json(scenes, model, "--event-rule", str(tmp_path / "low.json"))
    assert labels_of(from_file["events"]) == {"dog", "rooster"}
    assert from_file["event_rule"]["source"] == str(tmp_path / "low.json")

    # The table output and the API take the same rule.
    t = tagger.load(model)
    assert labels_of(t.predict(clip(scenes), events=True).events) == {"rooster"}
    assert labels_of(t.predict(clip(scenes), events=EventRule()).events) == {"dog", "rooster"}
    assert t.predict(clip(scenes)).events is None


def test_choose_rule_resolves_the_defaults_in_one_place():
    names = ["dog", "rooster"]
    assert choose_rule(names) == (EventRule(on=0.5, off=0.25, min_duration=0.1, min_gap=0.0, median_filter=0.0),
                                  "options")
    assert choose_rule(names, NO_DOG) == (NO_DOG, "checkpoint")
    assert choose_rule(names, NO_DOG, min_gap=0.0) == (EventRule(), "options")
    assert choose_rule(names, NO_DOG, on=0.7)[0] == EventRule(on=0.7, off=0.35)


def test_an_ensemble_file_holds_a_rule_and_averaging_drops_it(scenes, tmp_path):
    from tagger.ensemble.averaging import average_payloads
    from tagger.ensemble.store import save_ensemble

    member = read_torch_file(scenes / "htsat.pt")
    path = save_ensemble(tmp_path / "ensemble.pt", [member, member], ["a.pt", "b.pt"], "mean-prob", [0.5, 0.5],
                         CLASSES, "multilabel")
    tagger.store_event_rule(path, NO_DOG)
    loaded = tagger.load(path)
    assert loaded.event_rule == NO_DOG
    assert labels_of(loaded.predict(clip(scenes), events=True).events) == {"rooster"}
    assert read_torch_file(path)["members"][0].keys() == member.keys()

    tagger.store_event_rule(shutil.copy(scenes / "htsat.pt", tmp_path / "tuned.pt"), NO_DOG)
    tuned = read_torch_file(tmp_path / "tuned.pt")
    assert "event_rule" not in average_payloads([tuned, tuned], ["a", "b"])


def test_a_pulled_release_is_stored_into_by_name(scenes, tmp_path, monkeypatch):
    from tagger.models.releases import pulled_path

    monkeypatch.setenv("TAGGER_HOME", str(tmp_path / "home"))
    target = pulled_path("efficientat-mn10")
    target.parent.mkdir(parents=True)
    shutil.copy(scenes / "htsat.pt", target)
    assert tagger.store_event_rule("efficientat-mn10", NO_DOG) == target
    assert tagger.load("efficientat-mn10").event_rule == NO_DOG


def test_bad_files_and_rules_give_one_line_errors(scenes, model, tmp_path, monkeypatch):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(TaggerError, match="not a readable PyTorch checkpoint"):
        tagger.store_event_rule(text, NO_DOG)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(TaggerError, match="not a tagger checkpoint"):
        tagger.store_event_rule(tmp_path / "plain.pt", NO_DOG)
    torch.save({"format": "tagger-resume", "epoch": 1}, tmp_path / "resume.pt")
    with pytest.raises(TaggerError, match="training state"):
        tagger.store_event_rule(tmp_path / "resume.pt", NO_DOG)
    with pytest.raises(TaggerError, match="checkpoint not found"):
        tagger.store_event_rule(tmp_path / "missing.pt", NO_DOG)
    write_rule(tmp_path / "cat.json", EventRule(on=(0.3,)), ["cat"])
    with pytest.raises(TaggerError, match="classes the model does not have: cat"):
        tagger.store_event_rule(model, tmp_path / "cat.json")
    with pytest.raises(TaggerError, match="3 per-class thresholds for a model with 2 classes"):
        tagger.store_event_rule(model, EventRule(on=(0.1, 0.2, 0.3)))
    with pytest.raises(TaggerError, match="give an EventRule, a rule file's path, or None"):
        tagger.store_event_rule(model, 0.3)
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(TaggerError, match="not an event-rule file"):
        tagger.store_event_rule(model, tmp_path / "empty.json")
    assert "event_rule" not in read_torch_file(model)  # nothing was written by the refusals
    with monkeypatch.context() as patch:
        patch.setattr(os, "access", read_only(model))
        with pytest.raises(TaggerError, match="not writable here"):
            tagger.store_event_rule(model, NO_DOG)

    # A stored rule that does not fit the model: predict --events says so on one line.
    payload = read_torch_file(model)
    payload["event_rule"] = {"format": "tagger-event-rule", "on": {"cat": 0.3}, "off": {"cat": 0.1},
                             "median_filter": 0, "min_gap": 0, "min_duration": 0.1}
    torch.save(payload, model)
    result = CliRunner().invoke(app, ["predict", clip(scenes), "--model", str(model), "--events"])
    assert result.exit_code == 2
    assert "its stored event rule: classes the model does not have: cat" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["predict", clip(scenes), "--model", str(model)])  # no events, no rule read
    assert result.exit_code == 0, result.output


def read_only(path):
    """os.access saying `path` is read-only: faked, since root (as tests often run) may write to any file."""
    real = os.access

    def access(name, mode, *args, **kwargs):
        return not (mode & os.W_OK and os.fspath(name) == os.fspath(path)) and real(name, mode, *args, **kwargs)

    return access


def evaluate(scenes, model, *extra):
    return CliRunner().invoke(app, ["evaluate", "--model", str(model), "--strong",
                                    str(scenes / "scenes" / "test-strong.tsv"), "--audio-dir",
                                    str(scenes / "scenes" / "audio"), "--format", "json", *extra])


def test_tune_rule_store_rule_round_trip_reproduces_the_tuned_f1(scenes, model, tmp_path):
    pytest.importorskip("sed_scores_eval")
    tuned = tmp_path / "rule.json"
    result = evaluate(scenes, model, "--tune-rule", str(tuned), "--store-rule", "--median-filter", "0.05")
    assert result.exit_code == 0, result.output
    (first,) = json.loads(result.stdout)
    assert first["event_rule"]["source"] == "options" and f"stored it in {model}" in result.stderr
    saved = json.loads(tuned.read_text())
    record = read_torch_file(model)["event_rule"]
    assert {k: v for k, v in record.items() if k != "file"} == saved and record["file"] == str(tuned)
    assert set(saved["reached"]) == {"event_f1", "event_macro_f1", "segment_f1", "segment_macro_f1"}

    # No event option: the stored rule is used, and gives the F1 the tuning reached, overall and per class.
    result = evaluate(scenes, model, "--per-class", str(tmp_path / "pc.csv"))
    assert result.exit_code == 0, result.output
    (used,) = json.loads(result.stdout)
    assert used["event_rule"]["source"] == "checkpoint" and used["event_rule"]["median_filter"] == 0.05
    assert used["event_rule"]["on"] == [saved["on"][c] for c in sorted(saved["on"])]
    assert f"the one stored in {model}, tuned for event F1 on " in result.stderr
    for key, value in saved["reached"].items():
        assert used[key] == pytest.approx(value, abs=1e-6), key
    with open(tmp_path / "pc.csv") as handle:
        rows = {row["class"]: float(row["event_f1"]) for row in csv.DictReader(handle)}
    assert rows == pytest.approx(saved["f1"], abs=1e-6)

    # An explicit option replaces it; a new tuning starts from the options, not from the stored rule.
    result = evaluate(scenes, model, "--onset-threshold", "0.5")
    assert result.exit_code == 0, result.output
    (explicit,) = json.loads(result.stdout)
    assert explicit["event_rule"]["on"] == 0.5 and explicit["event_rule"]["source"] == "options"
    result = evaluate(scenes, model, "--tune-rule", str(tmp_path / "again.json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["event_rule"]["source"] == "options"


def test_store_rule_needs_tuning_and_a_writable_model(scenes, model, tmp_path, monkeypatch):
    def one_line_error(result, text):
        assert result.exit_code == 2, result.output
        assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1

    one_line_error(evaluate(scenes, model, "--store-rule"), "add --tune-rule")
    result = CliRunner().invoke(app, ["evaluate", "--strong", str(scenes / "scenes" / "test-strong.tsv"),
                                      "--audio-dir", str(scenes / "scenes" / "audio"), "--tune-rule",
                                      str(tmp_path / "r.json"), "--store-rule"])
    one_line_error(result, "name it with --model")
    result = CliRunner().invoke(app, ["evaluate", str(scenes / "scenes" / "test.csv"), "--model", str(model),
                                      "--store-rule"])
    one_line_error(result, "with --strong only")
    monkeypatch.setattr(os, "access", read_only(model))
    result = evaluate(scenes, model, "--tune-rule", str(tmp_path / "r.json"), "--store-rule")
    one_line_error(result, "not writable here")
    assert not (tmp_path / "r.json").exists()  # refused before anything was scored or written
