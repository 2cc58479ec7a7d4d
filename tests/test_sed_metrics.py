"""tagger.evaluation.sed: PSDS, event- and segment-based F1 against the field's reference tools.

sed_scores_eval and sed_eval are the `sed` extra (and dev): without them these tests skip, except the ones that
need no library.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from tagger.errors import TaggerError
from tagger.evaluation import sed

CLASSES = ["Speech", "Dog", "Alarm_bell_ringing", "Frying"]
DURATION = 60.0  # six files of a minute: 0.1 h, so the PSD-ROC up to 100 false positives per hour has room
FRAME = 0.064  # frame boundaries that do not fall on event or segment boundaries


def _ground_truth(rng: np.random.Generator, files: int = 6) -> dict[str, list[tuple[float, float, str]]]:
    truth = {}
    for i in range(files):
        events = []
        for name in CLASSES:
            start = rng.uniform(0.0, 1.5)
            for _ in range(rng.integers(2, 7)):
                length = rng.uniform(0.3, 3.0)
                if start + length > DURATION:
                    break
                events.append((round(start, 3), round(start + length, 3), name))
                start += length + rng.uniform(0.5, 12.0)
        truth[f"clip_{i}"] = sorted(events)
    return truth


def _detections(rng: np.random.Generator, truth: dict) -> dict[str, list[tuple[float, float, str]]]:
    """The ground truth moved by up to ±0.35 s at each end, some events dropped, some false alarms added:
    per class the detections stay apart so that sed_eval and the frame view count the same events."""
    out = {}
    for key, events in truth.items():
        found = []
        for name in CLASSES:
            spans = []
            for onset, offset, label in events:
                if label == name and rng.random() < 0.85:
                    a, b = onset + rng.uniform(-0.35, 0.35), offset + rng.uniform(-0.35, 0.35)
                    spans.append((max(a, 0.0), min(max(b, a + 0.1), DURATION)))
            if rng.random() < 0.6:
                a = rng.uniform(0, DURATION - 1)
                spans.append((a, a + rng.uniform(0.2, 1.0)))
            spans.sort()
            kept = []
            for a, b in spans:
                if kept and a <= kept[-1][1] + 0.05:
                    continue
                kept.append((a, b))
            found += [(a, b, name) for a, b in kept]
        out[key] = sorted(found)
    return out


def _scores(rng: np.random.Generator, truth: dict, noise: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Frame scores: the ground truth's activity (noise 0) blended with smoothed noise (noise 1: no signal)."""
    timestamps = np.arange(0.0, DURATION + FRAME / 2, FRAME)
    centres = (timestamps[:-1] + timestamps[1:]) / 2
    out = {}
    for key, events in truth.items():
        active = np.zeros((len(centres), len(CLASSES)))
        for onset, offset, name in events:
            active[(centres >= onset) & (centres < offset), CLASSES.index(name)] = 1.0
        smooth = np.apply_along_axis(lambda c: np.convolve(c, np.ones(15) / 15, mode="same"), 0,
                                     rng.random(active.shape))
        out[key] = (timestamps.copy(), (1 - noise) * active + noise * smooth)
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(18)
    truth = _ground_truth(rng)
    return {"truth": truth, "detections": _detections(rng, truth), "durations": dict.fromkeys(truth, DURATION),
            "scores": _scores(rng, truth, noise=0.85), "random": _scores(rng, truth, noise=1.0),
            "perfect": _scores(rng, truth, noise=0.0)}


@pytest.fixture(scope="module")
def sse():
    return pytest.importorskip("sed_scores_eval", reason="sed_scores_eval is the `sed` extra")


def _sed_eval_metrics(metrics, truth, detections):
    dcase_util = pytest.importorskip("dcase_util")
    for key in truth:
        ref = dcase_util.containers.MetaDataContainer(
            [{"filename": key, "onset": a, "offset": b, "event_label": c} for a, b, c in truth[key]])
        est = dcase_util.containers.MetaDataContainer(
            [{"filename": key, "onset": a, "offset": b, "event_label": c} for a, b, c in detections.get(key, [])])
        if isinstance(metrics, pytest.importorskip("sed_eval").sound_event.SegmentBasedMetrics):
            metrics.evaluate(reference_event_list=ref, estimated_event_list=est, evaluated_length_seconds=DURATION)
        else:
            metrics.evaluate(reference_event_list=ref, estimated_event_list=est)
    return metrics


def _assert_same(result: sed.F1Result, metrics) -> None:
    overall = metrics.results_overall_metrics()["f_measure"]
    average = metrics.results_class_wise_average_metrics()["f_measure"]
    by_class = metrics.results_class_wise_metrics()
    assert result.f1 == pytest.approx(overall["f_measure"], abs=1e-9)
    assert result.precision == pytest.approx(overall["precision"], abs=1e-9)
    assert result.recall == pytest.approx(overall["recall"], abs=1e-9)
    assert result.macro_f1 == pytest.approx(average["f_measure"], abs=1e-9)
    assert result.macro_precision == pytest.approx(average["precision"], abs=1e-9)
    assert result.macro_recall == pytest.approx(average["recall"], abs=1e-9)
    assert [row["class"] for row in result.per_class] == CLASSES
    for row in result.per_class:
        reference = by_class[row["class"]]
        assert row["f1"] == pytest.approx(reference["f_measure"]["f_measure"], abs=1e-9), row
        assert row["precision"] == pytest.approx(reference["f_measure"]["precision"], abs=1e-9), row
        assert row["recall"] == pytest.approx(reference["f_measure"]["recall"], abs=1e-9), row
        counts = reference["count"]
        assert (row["reference"], row["tp"] + row["fp"]) == (counts["Nref"], counts["Nsys"]), row
        assert row["tp"] + row["fn"] == row["reference"], row


def test_settings_are_dcase_task4s():
    assert sed.PSDS1 == dict(dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=None, alpha_ct=0.0, alpha_st=1.0,
                             max_efpr=100.0)
    assert sed.PSDS2 == dict(dtc_threshold=0.1, gtc_threshold=0.1, cttc_threshold=0.3, alpha_ct=0.5, alpha_st=1.0,
                             max_efpr=100.0)


@pytest.mark.parametrize("setting", [sed.PSDS1, sed.PSDS2], ids=["psds1", "psds2"])
def test_psds_equals_sed_scores_eval_on_the_written_folder(sse, data, tmp_path, setting):
    result = sed.psds(data["scores"], CLASSES, data["truth"], data["durations"], setting)
    written = sed.write_scores(tmp_path / "scores", data["scores"], CLASSES)
    assert sorted(p.name for p in written) == sorted(f"{k}.tsv" for k in data["truth"])
    folder = sse.io.read_sed_scores(tmp_path / "scores")  # the library's own reader
    assert list(folder["clip_0"].columns) == ["onset", "offset", *CLASSES]
    # pandas' default float parser may land one ulp off; the text itself round-trips exactly
    np.testing.assert_allclose(folder["clip_0"].to_numpy()[:, 2:], data["scores"]["clip_0"][1], rtol=1e-15)
    exact = np.loadtxt(tmp_path / "scores" / "clip_0.tsv", delimiter="\t", skiprows=1)
    np.testing.assert_array_equal(exact[:, 2:], data["scores"]["clip_0"][1])
    np.testing.assert_array_equal(np.append(exact[:, 0], exact[-1, 1]), data["scores"]["clip_0"][0])
    value, per_class, (etpr, efpr), _ = sse.intersection_based.psds(
        scores=str(tmp_path / "scores"), ground_truth=data["truth"], audio_durations=data["durations"],
        unit_of_time="hour", **setting)
    assert result.value == value
    assert result.per_class == per_class
    np.testing.assert_array_equal(result.etpr, etpr)
    np.testing.assert_array_equal(result.efpr, efpr)
    assert 0.0 < result.value < 1.0


def test_psds_is_high_for_perfect_scores_and_low_for_random_ones(sse, data):
    perfect = sed.psds(data["perfect"], CLASSES, data["truth"], data["durations"], sed.PSDS1)
    noisy = sed.psds(data["scores"], CLASSES, data["truth"], data["durations"], sed.PSDS1)
    chance = sed.psds(data["random"], CLASSES, data["truth"], data["durations"], sed.PSDS1)
    assert perfect.value > 0.95
    assert chance.value < 0.3
    assert chance.value < noisy.value < perfect.value
    assert set(perfect.per_class) == set(CLASSES)
    assert perfect.etpr.shape == perfect.efpr.shape


def test_event_f1_equals_sed_eval(sse, data):
    sed_eval = pytest.importorskip("sed_eval")
    result = sed.event_f1(data["detections"], data["truth"], CLASSES)
    reference = _sed_eval_metrics(sed_eval.sound_event.EventBasedMetrics(
        event_label_list=CLASSES, t_collar=0.2, percentage_of_length=0.2), data["truth"], data["detections"])
    _assert_same(result, reference)
    assert 0.2 < result.f1 < 0.95  # neither trivial nor hopeless: the comparison means something
    assert any(0 < row["f1"] < 1 for row in result.per_class)


def test_segment_f1_equals_sed_eval(sse, data):
    sed_eval = pytest.importorskip("sed_eval")
    result = sed.segment_f1(data["detections"], data["truth"], CLASSES, data["durations"])
    reference = _sed_eval_metrics(sed_eval.sound_event.SegmentBasedMetrics(
        event_label_list=CLASSES, time_resolution=1.0), data["truth"], data["detections"])
    _assert_same(result, reference)
    assert 0.3 < result.f1 < 1.0


def test_thresholded_scores_give_what_their_detections_give(sse, data):
    sed_eval = pytest.importorskip("sed_eval")
    thresholds = {"Speech": 0.5, "Dog": 0.45, "Alarm_bell_ringing": 0.55, "Frying": 0.5}
    frames = {key: sse.base_modules.scores.create_score_dataframe(values, timestamps, CLASSES)
              for key, (timestamps, values) in data["scores"].items()}
    detections = sse.base_modules.detection.scores_to_event_list(frames, thresholds)
    detections = {key: [(float(a), float(b), c) for a, b, c in events] for key, events in detections.items()}
    by_scores = sed.event_f1(data["scores"], data["truth"], CLASSES, thresholds=thresholds)
    by_detections = sed.event_f1(detections, data["truth"], CLASSES)
    assert by_scores == by_detections
    _assert_same(by_scores, _sed_eval_metrics(sed_eval.sound_event.EventBasedMetrics(
        event_label_list=CLASSES, t_collar=0.2, percentage_of_length=0.2), data["truth"], detections))
    segments = sed.segment_f1(data["scores"], data["truth"], CLASSES, data["durations"], thresholds=thresholds)
    _assert_same(segments, _sed_eval_metrics(sed_eval.sound_event.SegmentBasedMetrics(
        event_label_list=CLASSES, time_resolution=1.0), data["truth"], detections))


def test_a_file_without_detections_counts_its_events_as_missed(sse, data):
    detections = {k: v for k, v in data["detections"].items() if k != "clip_0"}
    left_out = sed.event_f1(detections, data["truth"], CLASSES)
    empty = sed.event_f1({**detections, "clip_0": []}, data["truth"], CLASSES)
    assert left_out == empty
    full = sed.event_f1(data["detections"], data["truth"], CLASSES)
    assert sum(r["reference"] for r in empty.per_class) == sum(r["reference"] for r in full.per_class)
    assert empty.recall < full.recall


def test_the_plot_is_a_png_of_the_expected_size(sse, data, tmp_path):
    result = sed.psds(data["scores"], CLASSES, data["truth"], data["durations"], sed.PSDS2)
    path = sed.plot_psd_roc(tmp_path / "plots" / "psd_roc.png", result, title="synthetic")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == sed.PLOT_SIZE
        pixels = np.asarray(image.convert("RGB"))
    assert (np.abs(pixels.astype(int) - np.array([44, 110, 180])).sum(axis=2) < 10).sum() > 200  # the curve
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["psd_roc.png"]  # no temporary file left


def test_write_scores_refuses_a_folder_with_other_score_files(data, tmp_path):
    (tmp_path / "old.tsv").write_text("onset\toffset\tSpeech\n")
    with pytest.raises(TaggerError, match="old.tsv"):
        sed.write_scores(tmp_path, data["scores"], CLASSES)
    with pytest.raises(TaggerError, match="key"):
        sed.write_scores(tmp_path / "new", {"a/b": data["scores"]["clip_0"]}, CLASSES)


def _one_line_error(call, match: str) -> None:
    with pytest.raises(TaggerError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_errors_are_one_line(sse, data):
    scores, truth, durations = data["scores"], data["truth"], data["durations"]
    key = "clip_0"
    timestamps, values = scores[key]
    _one_line_error(lambda: sed.psds(scores, CLASSES, {**truth, "extra": []}, durations), "extra, which has no scores")
    _one_line_error(lambda: sed.psds(scores, CLASSES, {key: [(1.0, 2.0, "Cat")]}, durations), "'Cat'")
    backwards = timestamps.copy()
    backwards[3] = backwards[2]
    _one_line_error(lambda: sed.psds({key: (backwards, values)}, CLASSES, truth, {key: DURATION}), "not increasing")
    _one_line_error(lambda: sed.psds({key: (timestamps[:-1], values)}, CLASSES, {}, {key: DURATION}), "shape")
    _one_line_error(lambda: sed.psds({key: (timestamps, values[:, :2])}, CLASSES, {}, {key: DURATION}), "shape")
    _one_line_error(lambda: sed.psds({}, CLASSES, truth, durations), "no scores")
    _one_line_error(lambda: sed.psds(scores, [], truth, durations), "no classes")
    _one_line_error(lambda: sed.psds(scores, CLASSES, truth, {}), "no durations")
    _one_line_error(lambda: sed.psds(scores, CLASSES, truth, {**durations, key: 0}), "positive")
    _one_line_error(lambda: sed.psds(scores, CLASSES, {key: [(1.0, 2.0, "Dog"), (2.0, 3.0, "Dog")]}, durations),
                    "overlap or touch")
    _one_line_error(lambda: sed.psds(scores, CLASSES, {key: [(2.0, 1.0, "Dog")]}, durations), "onset")
    _one_line_error(lambda: sed.psds(scores, CLASSES, truth, durations, {"dtc_threshold": 0.7}), "gtc_threshold")
    _one_line_error(lambda: sed.event_f1({}, truth, CLASSES), "no detections")
    _one_line_error(lambda: sed.event_f1(data["detections"], {key: [(1.0, 2.0, "Dog")]}, CLASSES), "'Speech' has no")
    _one_line_error(lambda: sed.event_f1(scores, truth, CLASSES, thresholds={"Dog": 0.5}), "thresholds")
    _one_line_error(lambda: sed.segment_f1(data["detections"], truth, CLASSES, durations, segment=0), "segment")


def test_touching_detections_count_as_one(sse):
    truth = {"a": [(1.0, 3.0, "Dog")]}
    split = sed.event_f1({"a": [(1.0, 2.0, "Dog"), (2.0, 3.05, "Dog")]}, truth, ["Dog"], durations={"a": 5.0})
    assert split.f1 == 1.0 and split.per_class[0]["tp"] == 1 and split.per_class[0]["fp"] == 0
    assert not math.isnan(split.macro_f1)
