"""Event detection: hysteresis, gap merging, length filter, streaming equivalence and window stitching."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.inference import events
from tagger.inference.events import Event, EventRule, EventTracker, Stitcher, detect_events

FS = 0.1  # seconds per frame: round numbers in the expected events


def track(values, rule=EventRule(on=0.5, off=0.3, min_duration=0.0), duration=None, fs=FS) -> list[Event]:
    scores = np.asarray(values, dtype=np.float64)
    return detect_events(scores.reshape(len(scores), -1), fs, rule, duration)


def reference(scores: np.ndarray, fs: float, rule: EventRule, duration: float | None = None) -> list[Event]:
    """The rule spelled out frame by frame, class by class: slow and obviously right."""
    events = []
    on_all, off_all = rule.thresholds(scores.shape[1])
    for label in range(scores.shape[1]):
        runs, start, on, off = [], None, on_all[label], off_all[label]
        for k, value in enumerate(scores[:, label].tolist()):
            if start is None and value >= on:
                start, peak = k, value
            elif start is not None and value < off:
                runs.append([start, k, peak])
                start = None
            elif start is not None:
                peak = max(peak, value)
        if start is not None:
            runs.append([start, len(scores), peak])
        merged = []
        for run in runs:
            if merged and (run[0] - merged[-1][1]) * fs < rule.min_gap - 1e-6 * fs:
                merged[-1][1:] = [run[1], max(merged[-1][2], run[2])]
            else:
                merged.append(run)
        for a, b, peak in merged:
            onset, offset = round(a * fs, 9), round(b * fs, 9)
            if duration is not None:
                onset, offset = min(onset, duration), min(offset, duration)
            if offset > onset and offset - onset >= rule.min_duration - 1e-6 * fs:
                events.append(Event(label, onset, offset, peak))
    return sorted(events, key=lambda e: (e.onset, e.label))


def smooth_noise(frames: int, classes: int, seed: int) -> np.ndarray:
    """Random scores with runs above and below the thresholds, float32 like a model's output."""
    rng = np.random.default_rng(seed)
    raw = rng.random((frames + 4, classes))
    return ((raw[:-4] + raw[1:-3] + raw[2:-2] + raw[3:-1] + raw[4:]) / 5 * 1.6 - 0.3).clip(0, 1).astype(np.float32)


def test_single_event():
    values = [0.0] * 10 + [0.9] * 20 + [0.0] * 5
    assert track(values) == [Event(0, 1.0, 3.0, 0.9)]


def test_hysteresis_keeps_dips_above_off_and_splits_below():
    assert track([0, 0.6, 0.7, 0.4, 0.35, 0.8, 0.6, 0]) == [Event(0, 0.1, 0.7, 0.8)]
    assert track([0, 0.6, 0.7, 0.2, 0.4, 0.8, 0.6, 0]) == [Event(0, 0.1, 0.3, 0.7), Event(0, 0.5, 0.7, 0.8)]
    # Scores between off and on never switch a class on by themselves.
    assert track([0.45, 0.45, 0.45]) == []


def test_default_off_is_half_of_on():
    rule = EventRule(on=0.6)
    assert rule.off == pytest.approx(0.3)
    assert track([0.7, 0.35, 0.25, 0.0], rule=EventRule(on=0.6, min_duration=0)) == [Event(0, 0.0, 0.2, 0.7)]


def test_min_duration_drops_short_events():
    values = [0, 0.9, 0, 0, 0.9, 0.9, 0.9, 0]
    rule = EventRule(on=0.5, off=0.3, min_duration=0.3)
    assert track(values, rule) == [Event(0, 0.4, 0.7, 0.9)]
    assert track(values, EventRule(on=0.5, off=0.3, min_duration=0.31)) == []


def test_min_gap_merges_then_length_filter_applies_to_the_merged_event():
    values = [0.6, 0.0, 0.0, 0.9, 0.0]  # two one-frame events 0.2 s apart
    assert track(values, EventRule(on=0.5, off=0.3, min_duration=0.3, min_gap=0.3)) == [Event(0, 0.0, 0.4, 0.9)]
    # A gap of exactly min_gap is not "less than" it.
    assert track(values, EventRule(on=0.5, off=0.3, min_duration=0, min_gap=0.2)) == [
        Event(0, 0.0, 0.1, 0.6),
        Event(0, 0.3, 0.4, 0.9),
    ]


def test_event_open_at_the_end_is_closed_and_clipped_to_duration():
    values = [0, 0, 0.8, 0.9]
    assert track(values) == [Event(0, 0.2, 0.4, 0.9)]
    assert track(values, duration=0.35) == [Event(0, 0.2, 0.35, 0.9)]
    # Frames past the duration (padding of the last window) cannot make events of their own.
    assert track([0, 0, 0, 0.9], duration=0.3) == []


def test_multi_class_events_sorted_by_onset_then_label():
    scores = np.zeros((10, 3))
    scores[2:6, 2] = 0.9
    scores[2:4, 0] = 0.7
    scores[1:9, 1] = 0.6
    rule = EventRule(on=0.5, off=0.3, min_duration=0)
    assert detect_events(scores, FS, rule) == [
        Event(1, 0.1, 0.9, 0.6),
        Event(0, 0.2, 0.4, 0.7),
        Event(2, 0.2, 0.6, 0.9),
    ]


@pytest.mark.parametrize("seed", range(4))
def test_streaming_in_random_chunks_equals_whole_array_and_reference(seed, monkeypatch):
    if seed % 2:  # tiny internal blocks: every call is split, as a long chunk of 527 classes would be
        monkeypatch.setattr(events, "_BLOCK", 7 * 3)
    rng = np.random.default_rng(seed)
    scores = smooth_noise(600, 7, seed)
    rule = EventRule(on=0.6, off=0.35, min_duration=0.03, min_gap=[0.0, 0.02, 0.05, 0.3][seed])
    duration = 5.955
    whole = detect_events(scores, 0.01, rule, duration)
    assert len(whole) > 5
    assert whole == reference(scores, 0.01, rule, duration)

    tracker = EventTracker(7, 0.01, rule, duration)
    streamed, at = [], 0
    while at < len(scores):
        size = int(rng.integers(0, 40))  # empty chunks too
        batch = tracker.update(scores[at : at + size])
        assert batch == sorted(batch, key=lambda e: (e.onset, e.label))
        streamed += batch
        at += size
    streamed += tracker.finish()
    assert sorted(streamed, key=lambda e: (e.onset, e.label)) == whole


def test_events_are_handed_out_once_no_later_frame_can_change_them():
    rule = EventRule(on=0.5, off=0.3, min_duration=0, min_gap=0.3)
    tracker = EventTracker(1, FS, rule)
    assert tracker.update(np.array([[0.9], [0.0], [0.0]])) == []  # a frame at 0.3 s could still merge
    assert tracker.update(np.array([[0.0]])) == [Event(0, 0.0, 0.1, 0.9)]
    assert tracker.finish() == []


def test_off_zero_keeps_a_class_on_to_the_end():
    assert track([0.0, 0.7, 0.0, 0.0], EventRule(on=0.5, off=0.0, min_duration=0)) == [Event(0, 0.1, 0.4, 0.7)]


def test_stitcher_averages_overlaps():
    stitch = Stitcher(2, FS)
    out = [stitch.add(0.0, np.full((4, 2), 1.0)), stitch.add(0.2, np.full((4, 2), 3.0))]
    assert stitch.position == 2 and stitch.time == pytest.approx(0.2)
    out += [stitch.add(0.4, np.full((4, 2), 5.0)), stitch.finish()]
    timeline = np.concatenate(out)
    assert [len(part) for part in out] == [0, 2, 2, 4]
    np.testing.assert_allclose(timeline[:, 0], [1, 1, 2, 2, 4, 4, 5, 5])
    np.testing.assert_allclose(timeline[:, 1], timeline[:, 0])
    assert stitch.position == 8


def test_stitcher_with_hop_equal_to_window_reproduces_the_concatenation():
    scores = smooth_noise(50, 3, seed=1)
    stitch = Stitcher(3, 0.02)
    parts = [stitch.add(start * 0.02, scores[start : start + 10]) for start in range(0, 50, 10)] + [stitch.finish()]
    timeline = np.concatenate(parts)
    assert timeline.dtype == np.float32
    np.testing.assert_array_equal(timeline, scores)


def test_stitcher_rejects_holes_and_out_of_order_windows():
    stitch = Stitcher(1, FS)
    with pytest.raises(TaggerError, match="without scores"):
        stitch.add(0.5, np.zeros((4, 1)))  # the timeline starts at 0 s
    stitch.add(0.0, np.zeros((4, 1)))
    with pytest.raises(TaggerError, match="without scores"):
        stitch.add(0.5, np.zeros((4, 1)))  # hop 0.5 s > window 0.4 s
    stitch.add(0.3, np.zeros((4, 1)))
    with pytest.raises(TaggerError, match="start order"):
        stitch.add(0.1, np.zeros((4, 1)))
    with pytest.raises(TaggerError, match=r"expected \(frames, 1\)"):
        stitch.add(0.4, np.zeros((4, 2)))


def test_stitched_windows_total_the_timeline_and_keep_boundary_events_whole():
    frames = 230
    truth = np.zeros((frames, 2), dtype=np.float32)
    truth[35:90, 0] = 0.9  # crosses the window boundaries at 40, 60 and 80 frames
    truth[100:101, 1] = 0.8
    stitch = Stitcher(2, 0.01)
    tracker = EventTracker(2, 0.01, EventRule(min_duration=0), duration=2.25)
    total, events = 0, []
    for start in range(0, frames - 40 + 1, 20):  # 0.4 s windows, 0.2 s hop
        ready = stitch.add(start * 0.01, truth[start : start + 40])
        total += len(ready)
        events += tracker.update(ready)
    ready = stitch.finish()
    total += len(ready)
    events += tracker.update(ready) + tracker.finish()
    assert total == 180 + 40  # the last window starts at 1.8 s; the 10 frames after it no window covers
    assert events == [Event(0, 0.35, 0.9, pytest.approx(0.9)), Event(1, 1.0, 1.01, pytest.approx(0.8))]


@pytest.mark.parametrize(
    "kwargs",
    [{"on": 0}, {"on": 1.5}, {"on": float("nan")}, {"on": 0.5, "off": 0.6}, {"off": -0.1}, {"min_duration": -1},
     {"min_gap": -0.1}, {"on": "0.5"}],
)
def test_bad_rule_values_raise_one_line_errors(kwargs):
    with pytest.raises(TaggerError) as info:
        EventRule(**kwargs)
    assert "\n" not in str(info.value) and list(kwargs)[-1] in str(info.value)


def test_bad_inputs_raise():
    with pytest.raises(TaggerError, match="NaN"):
        detect_events(np.array([[0.1], [np.nan]]), FS)
    with pytest.raises(TaggerError, match="shape"):
        EventTracker(3, FS, EventRule()).update(np.zeros((4, 2)))
    with pytest.raises(TaggerError, match="frame_seconds"):
        EventTracker(3, 0, EventRule())
    with pytest.raises(TaggerError, match="duration"):
        EventTracker(3, FS, EventRule(), duration=-1)


@pytest.mark.parametrize("on, off", [(0.5, 0.5), (0.5, 0.0), (0.6, 0.3), (1.0, 0.2)])
def test_scores_exactly_at_the_thresholds_match_the_reference(on, off):
    rng = np.random.default_rng(7)
    scores = np.round(rng.random((400, 5)), 1)  # many scores equal on or off exactly
    rule = EventRule(on=on, off=off, min_duration=0.02, min_gap=0.03)
    expected = reference(scores, 0.01, rule)
    assert detect_events(scores, 0.01, rule) == expected
    tracker = EventTracker(5, 0.01, rule)
    streamed = [e for at in range(0, 400, 13) for e in tracker.update(scores[at : at + 13])] + tracker.finish()
    assert sorted(streamed, key=lambda e: (e.onset, e.label)) == expected


# ------------------------------------------------------------------------------------------ per-class thresholds


def test_per_class_thresholds_act_class_by_class_and_match_the_reference():
    scores = smooth_noise(400, 4, seed=7)
    rule = EventRule(on=(0.5, 0.7, 0.95, 0.55), off=(0.3, 0.6, 0.5, 0.1), min_duration=0.02)
    found = detect_events(scores, 0.01, rule)
    assert found == reference(scores, 0.01, rule)
    for label in range(4):  # each class alone, with its own scalar thresholds, gives the same events
        alone = EventRule(on=rule.on[label], off=rule.off[label], min_duration=0.02)
        mine = [Event(0, e.onset, e.offset, e.peak) for e in found if e.label == label]
        assert detect_events(scores[:, [label]], 0.01, alone) == mine
    assert {e.label for e in found} >= {0, 3}


def test_per_class_rules_fill_in_and_check_their_values():
    rule = EventRule(on=[0.6, 0.8])
    assert rule.on == (0.6, 0.8) and rule.off == (0.3, 0.4)
    assert EventRule(on=0.6, off=(0.1, 0.2, 0.3)).on == (0.6, 0.6, 0.6)
    assert rule.to_dict() == {"on": [0.6, 0.8], "off": [0.3, 0.4], "median_filter": 0.0, "min_gap": 0.0,
                              "min_duration": 0.1}
    for kwargs, message in ((dict(on=(0.5, 0.6), off=(0.1, 0.2, 0.3)), "3 classes need one each"),
                            (dict(on=(0.5, 0.6), off=(0.1, 0.7)), "off\\[1\\]=0.7 is invalid"),
                            (dict(on=()), "empty list")):
        with pytest.raises(TaggerError, match=message):
            EventRule(**kwargs)
    with pytest.raises(TaggerError, match="2 per-class thresholds for a model with 3 classes"):
        detect_events(np.zeros((5, 3)), 0.1, rule)


# ------------------------------------------------------------------------------------------ median filter


@pytest.mark.parametrize("width", [3, 5, 11])
def test_the_streamed_median_filter_equals_scipy_on_the_whole_array(width):
    from scipy.ndimage import median_filter

    rng = np.random.default_rng(width)
    for frames in (1, width // 2, width, 3 * width + 2, 200):
        scores = rng.random((frames, 3)).astype(np.float32)
        expected = median_filter(scores, size=(width, 1), mode="reflect")
        smoother, parts, at = events.MedianSmoother(width), [], 0
        while at < frames:
            size = int(rng.integers(0, 7))
            parts.append(smoother.update(scores[at : at + size]))
            at += size
        parts.append(smoother.finish())
        got = np.concatenate([part.reshape(-1, 3) for part in parts])
        np.testing.assert_array_equal(got, expected)


def test_median_filtering_removes_a_one_frame_dropout_and_a_one_frame_spike():
    scores = np.array([0.9, 0.9, 0.1, 0.9, 0.9, 0.0, 0.0, 0.95, 0.0, 0.0])
    plain = EventRule(on=0.5, off=0.3, min_duration=0.0)
    assert len(track(scores, plain)) == 3
    smoothed = EventRule(on=0.5, off=0.3, min_duration=0.0, median_filter=0.3)  # 3 frames of 0.1 s
    assert smoothed.median_frames(FS) == 3 and EventRule(median_filter=0.2).median_frames(FS) == 3
    assert track(scores, smoothed) == [Event(0, 0.0, 0.5, 0.9)]


def test_a_median_filtered_tracker_fed_in_chunks_equals_filtering_then_detecting():
    from scipy.ndimage import median_filter

    scores = smooth_noise(500, 5, seed=3)
    rule = EventRule(on=0.6, off=0.4, min_duration=0.02, min_gap=0.03, median_filter=0.07)
    width = rule.median_frames(0.01)
    unfiltered = EventRule(on=0.6, off=0.4, min_duration=0.02, min_gap=0.03)
    expected = detect_events(median_filter(scores, size=(width, 1), mode="reflect"), 0.01, unfiltered, 4.99)
    tracker, found = EventTracker(5, 0.01, rule, 4.99), []
    for start in range(0, 500, 37):
        found += tracker.update(scores[start : start + 37])
    found += tracker.finish()
    assert sorted(found, key=lambda e: (e.onset, e.label)) == expected and len(expected) > 3
