"""tagger predict: input expansion, length policy, batching, windows, events, embeddings, formats, bad input."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from conftest import shared_path, tone, write_wav
from typer.testing import CliRunner

from tagger import audio
from tagger.checkpoint import save_checkpoint
from tagger.cli import app
from tagger.errors import TaggerError
from tagger.frontends import LogMel
from tagger.inference.events import EventRule
from tagger.inference.predict import PredictOptions, expand_inputs, plan_file, predict_files
from tagger.inference.runtime import Scorer, input_policy
from tagger.labels import LabelSet
from tagger.models import create_model
from tagger.models.base import TaggerModel, TaggerOutput

runner = CliRunner()
RATE = 32000
LABELS = LabelSet.from_list(["/m/loud", "/m/quiet", "/m/x"], ["Loud", "Quiet", "Other"])
TINY = {
    "efficientat-mn01": {},
    "panns-cnn6": {},
    "panns-cnn14-decisionlevel-max": {},
    "panns-res1dnet31": {},
    "ast-tiny224": {"input_tdim": 100},
    "psla-effnet-b0-mean": {},
    "passt-s-p16-s10": {"embed_dim": 64, "depth": 1, "num_heads": 2},
    "htsat-tiny": {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [2, 2, 4, 4]},
}


class LoudnessTagger(TaggerModel):
    """A deterministic model: class 0 fires on loud frames, class 1 on quiet ones, class 2 never.

    Its scores follow the audio's loudness, so events and window scores have known answers.
    """

    family = "test"

    def __init__(self, frame_level: bool = True):
        super().__init__()
        self.frontend = LogMel()
        self.frame_level = frame_level
        self.model_kwargs = {}

    @property
    def num_classes(self) -> int:
        return 3

    def forward_features(self, spec):
        level = spec.max(dim=1).values  # (B, T) dB of the loudest mel bin: ~-44 quiet, ~+19 for the tone
        frames = torch.stack([level + 10, -10 - level, torch.full_like(level, -20.0)], dim=-1) * 0.5
        return TaggerOutput(logits=frames.mean(dim=1), frame_logits=frames if self.frame_level else None,
                            embedding=spec.mean(dim=-1))


def loud_between(seconds: float, start: float, end: float) -> np.ndarray:
    """Quiet noise with a loud 1 kHz tone from `start` to `end` seconds."""
    rng = np.random.default_rng(0)
    wave = 0.001 * rng.standard_normal(round(seconds * RATE))
    t = np.arange(wave.size) / RATE
    inside = (t >= start) & (t < end)
    wave[inside] += 0.3 * np.sin(2 * np.pi * 1000 * t[inside])
    return wave.astype(np.float32)


def tiny(name: str, num_classes: int = 3):
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, **TINY[name]).eval()


@pytest.fixture(scope="module")
def mn01_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "mn01.pt"
    model = tiny("efficientat-mn01")
    with torch.no_grad():  # a non-zero head bias, so scores differ between labels
        model.classifier[-1].bias.copy_(torch.tensor([1.0, -1.0, 0.0]))
    save_checkpoint(path, model, LABELS, task="multilabel")
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {
        "a": write_wav(folder / "a.wav", tone(1.0, RATE, 440, seed=1), RATE),
        "b": write_wav(folder / "sub" / "b.wav", tone(1.0, RATE, 880, seed=2), RATE),
        "c16k": write_wav(folder / "c.flac", tone(2.5, 16000, 300, seed=3), 16000),
        "short": write_wav(folder / "short.wav", tone(0.01, RATE, 440), RATE),
        "events": write_wav(folder / "events.wav", loud_between(12.0, 3.0, 5.5), RATE),
        "bad": folder / "bad.wav",
    }


@pytest.fixture(autouse=True)
def _bad_file(clips):
    clips["bad"].write_bytes(b"this is not audio")


def direct(model, wave: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(wave)[None]).logits)[0].numpy()


# ------------------------------------------------------------------------------------------ inputs


def test_expand_inputs_files_folders_globs_and_missing(clips, tmp_path):
    folder = clips["a"].parent
    files, problems = expand_inputs([str(clips["a"]), str(folder / "sub"), str(folder / "*.flac"),
                                     str(tmp_path / "missing.wav"), str(tmp_path / "*.ogg"), str(tmp_path)])
    assert files == [clips["a"], clips["b"], clips["c16k"]]
    messages = {p.path.name: p.message for p in problems}
    assert "not found" in messages["missing.wav"]
    assert "matches no files" in messages["*.ogg"]
    assert "no audio files" in messages[tmp_path.name]
    everything, _ = expand_inputs([str(folder)])  # recursive
    assert clips["b"] in everything and clips["events"] in everything


# ------------------------------------------------------------------------------------------ length policy


@pytest.mark.parametrize("name", sorted(TINY))
def test_input_policy_bounds_are_exact(name):
    """The policy's minimum runs and one sample less fails; likewise the maximum, where there is one."""
    model = tiny(name)
    policy = input_policy(model)
    with torch.no_grad():
        model(torch.zeros(1, policy.min_samples))
        if policy.min_samples > 1:
            with pytest.raises(TaggerError):
                model(torch.zeros(1, policy.min_samples - 1))
        if policy.max_samples is not None:
            model(torch.zeros(1, policy.max_samples))
            with pytest.raises(TaggerError):
                model(torch.zeros(1, policy.max_samples + 1))


def test_policy_windows_by_family():
    assert input_policy(tiny("panns-cnn6")).window_samples is None  # fully convolutional: whole file
    assert input_policy(tiny("efficientat-mn01")).window_samples is None
    ast = input_policy(tiny("ast-tiny224"))  # 100 frames of 10 ms with 25 ms frames
    assert ast.max_samples is None and ast.window_samples == 400 + 99 * 160
    passt = input_policy(tiny("passt-s-p16-s10"))
    assert passt.window_samples == passt.max_samples and abs(passt.max_samples / RATE - 10.05) < 0.01
    htsat = input_policy(tiny("htsat-tiny"))
    assert htsat.max_samples == 1024 * 320 - 1  # 1024 centred frames


def test_plan_windows_long_files_and_events():
    passt = Scorer(tiny("passt-s-p16-s10"), LABELS, "multilabel")
    assert plan_file(passt, 9.0, PredictOptions()).window is None
    plan = plan_file(passt, 30.0, PredictOptions())
    assert plan.window == pytest.approx(10.05, abs=0.01) and plan.hop == pytest.approx(plan.window / 4)
    assert "longer than the model" in plan.note
    cnn = Scorer(tiny("panns-cnn6"), LABELS, "multilabel")
    assert plan_file(cnn, 100.0, PredictOptions()).window is None
    assert plan_file(cnn, 3600.0, PredictOptions()).window == 10.0  # bounded memory for hour-long files
    assert plan_file(cnn, 5.0, PredictOptions(events=EventRule())).window == 2.0  # clip-level: window scores
    sed = Scorer(tiny("panns-cnn14-decisionlevel-max"), LABELS, "multilabel")
    assert plan_file(sed, 5.0, PredictOptions(events=EventRule())).window is None  # frame-level output
    assert plan_file(cnn, 5.0, PredictOptions(window=3.0)).hop == 1.5


# ------------------------------------------------------------------------------------------ scoring


def test_probabilities_follow_the_task():
    model = tiny("efficientat-mn01")
    wave = tone(1.0, RATE)[None]
    multi = Scorer(model, LABELS, "multilabel")(wave)
    single = Scorer(model, LABELS, "multiclass")(wave)
    np.testing.assert_allclose(multi.probabilities, 1 / (1 + np.exp(-multi.logits)), rtol=1e-5)
    assert single.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(single.logits, multi.logits)


def test_clip_scores_equal_the_model_on_the_whole_file(clips, mn01_checkpoint):
    """Whole-clip mode is the official inference: resample, one forward pass, sigmoid."""
    tagger = Scorer.load(mn01_checkpoint, device="cpu")
    results = list(predict_files(tagger, [clips["a"], clips["c16k"]]))
    for result, key in zip(results, ("a", "c16k"), strict=True):
        expected = direct(tagger.model, audio.load(clips[key], RATE))
        np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    assert results[1].duration == pytest.approx(2.5)


def test_batching_keeps_order_and_scores(clips, mn01_checkpoint):
    """Equal-length files share batches; a windowed file in between keeps the output in input order."""
    tagger = Scorer.load(mn01_checkpoint, device="cpu")
    paths = [clips["a"], clips["c16k"], clips["b"], clips["events"], clips["a"], clips["b"]]
    batched = list(predict_files(tagger, paths, PredictOptions(batch_size=2, window=None)))
    alone = [next(predict_files(tagger, [p], PredictOptions(batch_size=1))) for p in paths]
    assert [r.path for r in batched] == paths
    for one, other in zip(batched, alone, strict=True):
        np.testing.assert_allclose(one.probabilities, other.probabilities, atol=1e-5)
        np.testing.assert_allclose(one.embedding, other.embedding, atol=1e-4)


def test_short_clip_is_zero_padded_to_the_minimum(clips):
    model = tiny("panns-cnn6")
    tagger = Scorer(model, LABELS, "multilabel")
    (result,) = predict_files(tagger, [clips["short"]])
    wave = audio.load(clips["short"], RATE)
    padded = np.pad(wave, (0, tagger.policy.min_samples - wave.size))
    np.testing.assert_allclose(result.probabilities, direct(model, padded), atol=1e-5)
    assert result.duration == pytest.approx(0.01)


def test_clip_seconds_leaves_fbank_padding_to_the_front_end(tmp_path):
    """AST and PSLA loaders pad the fbank (padded frames = -mean / std), not the waveform: only crop for them."""
    tagger = Scorer(tiny("ast-tiny224"), LABELS, "multilabel", device="cpu")  # pads to 100 frames (~1 s)
    wave = tone(0.5, 16000, 440)
    path = write_wav(tmp_path / "half.wav", wave, 16000)
    read = audio.load(path, 16000)
    (result,) = predict_files(tagger, [path], PredictOptions(clip_seconds=1.0))
    np.testing.assert_allclose(result.probabilities, direct(tagger.model, read), atol=1e-6)
    padded_wave = direct(tagger.model, audio.crop_or_pad(read, 16000))
    assert np.abs(result.probabilities - padded_wave).max() > 1e-3
    (cut,) = predict_files(tagger, [path], PredictOptions(clip_seconds=0.25))
    np.testing.assert_allclose(cut.probabilities, direct(tagger.model, read[:4000]), atol=1e-6)


def test_last_window_is_scored_as_the_short_clip_it_is(tmp_path):
    """The window past the end holds only the audio left, which the front-end pads at fbank level (AST)."""
    tagger = Scorer(tiny("ast-tiny224"), LABELS, "multilabel", device="cpu")  # 1.015 s windows every 0.254 s
    path = write_wav(tmp_path / "long.wav", tone(1.28, 16000, 300), 16000)  # the tail: 0.77 s, 76 frames
    wave = audio.load(path, 16000)
    (result,) = predict_files(tagger, [path], PredictOptions(per_window=True, batch_size=8))
    assert [round(w.start * 16000) for w in result.windows] == [0, 4060, 8120]
    tail = wave[8120:]
    np.testing.assert_allclose(result.windows[-1].probabilities, direct(tagger.model, tail), atol=1e-6)
    window = round(result.window * 16000)
    assert np.abs(result.windows[-1].probabilities - direct(tagger.model, audio.crop_or_pad(tail, window))).max() > 1e-3
    np.testing.assert_allclose(result.windows[0].probabilities, direct(tagger.model, wave[:window]), atol=1e-6)


def test_windows_match_slices_and_aggregate(clips):
    model = tiny("efficientat-mn01")
    tagger = Scorer(model, LABELS, "multilabel")
    wave = audio.load(clips["events"], RATE)
    options = PredictOptions(window=4.0, hop=2.0, per_window=True, batch_size=3, block_seconds=1.5)
    (result,) = predict_files(tagger, [clips["events"]], options)
    assert [w.start for w in result.windows] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert result.windows[-1].end == pytest.approx(12.0)
    for window in result.windows:
        start = round(window.start * RATE)
        np.testing.assert_allclose(window.probabilities, direct(model, wave[start:start + 4 * RATE]), atol=1e-5)
    stacked = np.stack([w.probabilities for w in result.windows])
    np.testing.assert_allclose(result.probabilities, stacked.mean(axis=0), atol=1e-6)
    (peak,) = predict_files(tagger, [clips["events"]], PredictOptions(window=4.0, hop=2.0, aggregate="max"))
    np.testing.assert_allclose(peak.probabilities, stacked.max(axis=0), atol=1e-6)


def test_window_longer_than_the_model_allows_is_refused(clips):
    tagger = Scorer(tiny("htsat-tiny"), LABELS, "multilabel")
    with pytest.raises(TaggerError, match="longer than the model takes"):
        list(predict_files(tagger, [clips["events"]], PredictOptions(window=11.0)))


def test_bad_files_go_to_the_error_callback(clips, mn01_checkpoint):
    tagger = Scorer.load(mn01_checkpoint, device="cpu")
    errors = []
    results = list(predict_files(tagger, [clips["a"], clips["bad"], clips["b"]], on_error=errors.append))
    assert [r.path for r in results] == [clips["a"], clips["b"]]
    assert errors[0].path == clips["bad"] and "cannot decode" in errors[0].message


# ------------------------------------------------------------------------------------------ events


def test_frame_level_events_find_the_loud_part(clips):
    """A frame-level model: the event follows the tone (3.0-5.5 s) to within a few frames."""
    tagger = Scorer(LoudnessTagger(frame_level=True), LABELS, "multilabel")
    rule = EventRule(on=0.5, min_duration=0.2)
    (whole,) = predict_files(tagger, [clips["events"]], PredictOptions(events=rule))
    loud = [e for e in whole.events if e.label == 0]
    assert len(loud) == 1
    assert loud[0].onset == pytest.approx(3.0, abs=0.05) and loud[0].offset == pytest.approx(5.5, abs=0.05)
    quiet = [e for e in whole.events if e.label == 1]
    assert [round(e.onset, 1) for e in quiet] == [0.0, 5.5] and quiet[-1].offset == pytest.approx(12.0)
    # In windows whose boundaries cut the event, it still comes out whole and at the same times.
    (windowed,) = predict_files(tagger, [clips["events"]], PredictOptions(events=rule, window=2.0, hop=1.0))
    loud_w = [e for e in windowed.events if e.label == 0]
    assert len(loud_w) == 1
    assert loud_w[0].onset == pytest.approx(loud[0].onset, abs=0.03)
    assert loud_w[0].offset == pytest.approx(loud[0].offset, abs=0.03)


def test_clip_level_events_come_from_window_scores(clips):
    tagger = Scorer(LoudnessTagger(frame_level=False), LABELS, "multilabel")
    (result,) = predict_files(tagger, [clips["events"]], PredictOptions(events=EventRule(on=0.5)))
    assert result.window == 2.0 and result.hop == 0.5
    loud = [e for e in result.events if e.label == 0]
    assert len(loud) == 1  # window means are loud when over half the window is: about 3.0-5.5 s
    assert loud[0].onset == pytest.approx(3.0, abs=0.5) and loud[0].offset == pytest.approx(5.5, abs=0.5)


def test_timeline_for_plots(clips):
    tagger = Scorer(LoudnessTagger(frame_level=True), LABELS, "multilabel")
    (result,) = predict_files(tagger, [clips["events"]], PredictOptions(timeline=True, window=5.0, hop=2.5))
    assert result.timeline.shape[1] == 3
    assert result.timeline_seconds * len(result.timeline) == pytest.approx(12.0, abs=0.05)
    assert result.timeline[int(4.0 / result.timeline_seconds), 0] > 0.99


# ------------------------------------------------------------------------------------------ CLI


def invoke(*args: str):
    return runner.invoke(app, ["predict", *map(str, args)])


def test_cli_table(clips, mn01_checkpoint):
    result = invoke(clips["a"], clips["b"], "--model", mn01_checkpoint, "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "Loud" in result.stdout and "a.wav" in result.stdout and "b.wav" in result.stdout


def test_cli_json_with_labels_ids_and_embeddings(clips, mn01_checkpoint):
    result = invoke(clips["a"], "--model", mn01_checkpoint, "--format", "json", "--top-k", "0",
                    "--embeddings", "json")
    assert result.exit_code == 0, result.output
    (obj,) = json.loads(result.stdout)
    assert [item["id"] for item in obj["labels"]] == ["/m/loud", "/m/x", "/m/quiet"]  # head bias 1, 0, -1
    assert obj["labels"][0]["label"] == "Loud" and obj["labels"][0]["rank"] == 1
    assert len(obj["embedding"]) > 0 and obj["duration"] == pytest.approx(1.0)


def test_cli_csv_long_form_with_windows_and_events(clips, mn01_checkpoint):
    result = invoke(clips["events"], "--model", mn01_checkpoint, "--format", "csv", "--window", "4",
                    "--hop", "4", "--per-window", "--events", "--onset-threshold", "0.6", "--top-k", "1")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    kinds = [row["kind"] for row in rows]
    assert kinds.count("clip") == 1 and kinds.count("window") == 3
    assert all(row["label"] == "Loud" for row in rows if row["kind"] == "event")
    assert set(rows[0]) == {"path", "kind", "start", "end", "rank", "label", "id", "score"}


def test_cli_jsonl_threshold_and_output_file(clips, mn01_checkpoint, tmp_path):
    out = tmp_path / "preds.jsonl"
    result = invoke(clips["a"], clips["b"], "--model", mn01_checkpoint, "--format", "jsonl", "--threshold", "0.5",
                    "--output", out)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2 and all(item["score"] >= 0.5 for line in lines for item in line["labels"])
    assert not list(tmp_path.glob("*.tmp*"))


def test_cli_embeddings_files(clips, mn01_checkpoint, tmp_path):
    npy, npz = tmp_path / "e.npy", tmp_path / "e.npz"
    assert invoke(clips["a"], clips["b"], "--model", mn01_checkpoint, "--embeddings", npy).exit_code == 0
    assert np.load(npy).shape[0] == 2
    assert invoke(clips["events"], "--model", mn01_checkpoint, "--window", "4", "--per-window",
                  "--embeddings", npz).exit_code == 0
    data = np.load(npz)
    assert data["embeddings"].shape[0] == 1 and data["window_embeddings"].shape[0] == len(data["window_starts"])


def test_cli_plot(clips, mn01_checkpoint, tmp_path):
    from PIL import Image

    png = tmp_path / "timeline.png"
    result = invoke(clips["events"], "--model", mn01_checkpoint, "--plot", png, "--window", "2")
    assert result.exit_code == 0, result.output
    assert Image.open(png).size[0] > 100


def test_cli_some_bad_inputs_are_skipped(clips, mn01_checkpoint):
    result = invoke(clips["a"], clips["bad"], "nowhere.wav", "--model", mn01_checkpoint, "--format", "json")
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)) == 1
    assert "bad.wav" in result.stderr and "nowhere.wav" in result.stderr


def test_cli_all_bad_inputs_fail(clips, mn01_checkpoint):
    result = invoke(clips["bad"], "--model", mn01_checkpoint)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: none of the 1 inputs")


@pytest.mark.parametrize("args, message", [
    (["--window", "0.001"], "shorter than the model's minimum"),
    (["--hop", "1"], "--hop needs --window"),
    (["--window", "1", "--hop", "2"], "longer than --window"),
    (["--aggregate", "median"], "--aggregate"),
    (["--format", "xml"], "--format"),
    (["--top-k", "-1"], "--top-k"),
    (["--embeddings", "e.txt"], ".npy or .npz"),
    (["--events", "--onset-threshold", "2"], "on"),
    (["--device", "tpu"], "--device"),
    (["--short-input", "tile"], "--short-input does not apply to efficientat-mn01"),
])
def test_cli_bad_options_are_one_line(clips, mn01_checkpoint, args, message):
    result = invoke(clips["a"], "--model", mn01_checkpoint, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1]


def test_cli_without_model_names_the_pull_command(clips, monkeypatch, tmp_path):
    monkeypatch.delenv("TAGGER_MODEL", raising=False)
    monkeypatch.setenv("TAGGER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("tagger.inference.runtime.Path.is_file", lambda self: False)
    result = invoke(clips["a"], "--top-k", "5")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "run `tagger pull efficientat-mn10`" in line and "--model" in line


def test_default_model_from_the_environment(clips, mn01_checkpoint, monkeypatch):
    monkeypatch.setenv("TAGGER_MODEL", str(mn01_checkpoint))
    assert invoke(clips["a"]).exit_code == 0


# ------------------------------------------------------------------------------------------ HTS-AT clip lengths


@pytest.fixture(scope="module")
def htsat_checkpoint(tmp_path_factory):
    """A tiny HTS-AT that tiles short clips (as imported official checkpoints do), class 0 on everywhere."""
    path = tmp_path_factory.mktemp("htsat") / "htsat.pt"
    model = tiny("htsat-tiny")
    model.configure_inputs(short_input="tile")
    with torch.no_grad():
        model.tscam_conv.bias.copy_(torch.tensor([8.0, -8.0, -8.0]))
    save_checkpoint(path, model, LABELS, task="multilabel")
    return path


def test_htsat_tiled_events_stay_inside_the_clip(tmp_path, htsat_checkpoint):
    """The network sees 3 copies of a 3 s clip; frames and events are reported in the clip's own 3 s."""
    clip = write_wav(tmp_path / "three.wav", tone(3.0, RATE, 440), RATE)
    tile = Scorer.load(htsat_checkpoint, device="cpu")
    assert tile.model.copies(301) == 3
    (result,) = predict_files(tile, [clip], PredictOptions(events=EventRule(on=0.5), timeline=True))
    assert result.timeline.shape == (300, 3)  # the 301st frame starts at 3.0 s
    (event,) = result.events
    assert event.label == 0 and event.onset == 0.0 and 2.9 < event.offset <= 3.0

    result = invoke(clip, "--model", htsat_checkpoint, "--format", "json", "--events", "--top-k", "0")
    assert result.exit_code == 0, result.output
    (tiled,) = json.loads(result.stdout)
    assert [(e["label"], e["onset"]) for e in tiled["events"]] == [("Loud", 0.0)]
    assert tiled["events"][0]["offset"] <= 3.0
    assert tiled["event_rule"] == {"on": 0.5, "off": 0.25, "median_filter": 0.0, "min_gap": 0.0, "min_duration": 0.1,
                                   "source": "options"}
    result = invoke(clip, "--model", htsat_checkpoint, "--format", "json", "--events", "--median-filter", "0.5")
    assert result.exit_code == 0, result.output
    (smoothed,) = json.loads(result.stdout)
    assert smoothed["event_rule"]["median_filter"] == 0.5 and smoothed["events"][0]["label"] == "Loud"
    result = invoke(clip, "--model", htsat_checkpoint, "--format", "json", "--top-k", "0", "--short-input", "stretch")
    assert result.exit_code == 0, result.output
    (stretched,) = json.loads(result.stdout)
    scores = {item["id"]: item["score"] for item in tiled["labels"]}
    assert any(item["score"] != pytest.approx(scores[item["id"]], abs=1e-6) for item in stretched["labels"])
    stretch = Scorer.load(htsat_checkpoint, device="cpu", input_settings={"short_input": "stretch"})
    expected = stretch(audio.load(clip, RATE)[None]).probabilities[0]
    np.testing.assert_allclose([item["score"] for item in stretched["labels"]],
                               [expected[LABELS.ids.index(item["id"])] for item in stretched["labels"]], atol=1e-6)


def test_htsat_long_clip_in_one_pass_with_crops(tmp_path, htsat_checkpoint):
    """--long-input crops takes a 15 s clip whole (no windows) and still reports its own frames."""
    clip = write_wav(tmp_path / "long.wav", loud_between(15.0, 3.0, 5.5), RATE)
    crops = Scorer.load(htsat_checkpoint, device="cpu", input_settings={"long_input": "crops"})
    (whole,) = predict_files(crops, [clip], PredictOptions(timeline=True))
    assert whole.window is None and whole.timeline.shape == (1500, 3)
    windows = Scorer.load(htsat_checkpoint, device="cpu")
    (windowed,) = predict_files(windows, [clip], PredictOptions())
    assert windowed.window == pytest.approx(10.24, abs=0.01)
    result = invoke(clip, "--model", htsat_checkpoint, "--long-input", "chunks")
    assert result.exit_code == 2 and "--long-input 'chunks' is not one of windows, crops" in result.stderr


# ------------------------------------------------------------------------------------------ real checkpoint


def test_real_mn04_tags_the_sample_clips(tmp_path):
    """The imported EfficientAT mn04_as ranks each sample's own class in its top 3."""
    folder = shared_path("data", "pretrained", "efficientat_mn04_as")
    samples = shared_path("data", "samples")
    from tagger.weights.importing import import_checkpoint

    out = tmp_path / "mn04.pt"
    import_checkpoint("efficientat", folder / "mn04_as_mAP_432.pt", out,
                      labels=LabelSet.from_csv(folder / "class_labels_indices.csv"))
    result = invoke(samples / "speech.wav", samples / "music.wav", samples / "typing.wav", "--model", out,
                    "--format", "json", "--top-k", "3")
    assert result.exit_code == 0, result.output
    top = {obj["path"].rsplit("/", 1)[-1]: [item["label"] for item in obj["labels"]]
           for obj in json.loads(result.stdout)}
    assert "Speech" in top["speech.wav"]
    assert "Music" in top["music.wav"]
    assert {"Typing", "Computer keyboard"} & set(top["typing.wav"])


def test_cli_ctrl_c_exits_130_and_leaves_output_alone(clips, mn01_checkpoint, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tagger.inference.report.run_predict", interrupted)
    out = tmp_path / "preds.json"
    result = invoke(clips["a"], "--model", mn01_checkpoint, "--output", out)
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and not out.exists()


def test_the_timeline_keeps_every_frame_when_asked_and_is_pooled_otherwise(tmp_path, htsat_checkpoint):
    clip = write_wav(tmp_path / "three.wav", tone(3.0, RATE, 440), RATE)
    tagger = Scorer.load(htsat_checkpoint, device="cpu")
    (full,) = predict_files(tagger, [clip], PredictOptions(timeline=True, timeline_columns=None))
    (pooled,) = predict_files(tagger, [clip], PredictOptions(timeline=True, timeline_columns=100))
    assert full.timeline.shape == (300, 3) and full.timeline_seconds == pytest.approx(0.01)
    assert pooled.timeline.shape == (100, 3) and pooled.timeline_seconds == pytest.approx(0.03)
    np.testing.assert_array_equal(pooled.timeline, full.timeline.reshape(100, 3, 3).max(axis=1))
