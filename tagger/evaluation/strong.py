"""`tagger evaluate --strong`: score a model's frame-level output against strong labels as DCASE does.

Every annotated file is scored through `inference.predict` (so it is read as `tagger predict` reads it) with the
full-resolution score timeline: the model's own frames where it has frame output, else the scores of 2 s windows
every 0.5 s (the result says which). From those scores: PSDS1 and PSDS2 (threshold-free), and the events that the
shared post-processing (`inference.events`, the rule `predict --events` uses) finds, scored with event-based and
segment-based F1. The classes scored are those of the annotation, matched to the model's labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagger.data.strong import StrongLabels, audio_finder, check_durations, read_label_map, read_strong
from tagger.errors import TaggerError
from tagger.evaluation import sed
from tagger.inference.events import EventRule, detect_events
from tagger.inference.predict import EVENT_WINDOW, FileResult, PredictOptions, predict_files
from tagger.inference.runtime import Scorer

PER_CLASS_COLUMNS = ("class", "events", "psds1", "psds2", "event_f1", "event_precision", "event_recall",
                     "segment_f1")


@dataclass
class StrongResult:
    """What one strong-label evaluation produced; `scores` are the frame scores per file (for --save-scores)."""

    metrics: dict[str, Any]
    per_class: list[dict[str, Any]]
    scores: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: list[str]
    psds1: sed.PsdsResult
    psds2: sed.PsdsResult
    truth: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    rule: EventRule = EventRule()
    frame_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def tune(self, metric: str = "event") -> tuple[EventRule, dict[str, dict[str, float]]]:
        """Per-class onset thresholds that maximise each class's event (or segment) F1 on these files, with the
        rule's off/on ratio, median filter, gap and length kept; (the rule, {class: {"on", "f1"}})."""
        return tune_thresholds(self.scores, self.truth, self.durations, self.classes, self.frame_seconds, self.rule,
                               metric)

    def f1_of(self, rule: EventRule) -> dict[str, float]:
        """Event and segment F1 (micro and macro) of the events `rule` finds in these files' scores: what the
        evaluation reports when run with that rule (`rule` over the scored classes, as `tune` returns it)."""
        found = _found(self.scores, self.durations, self.classes, self.frame_seconds, rule)
        event = sed.event_f1(found, self.truth, self.classes, durations=self.durations)
        segment = sed.segment_f1(found, self.truth, self.classes, self.durations)
        return {"event_f1": round(event.f1, 6), "event_macro_f1": round(event.macro_f1, 6),
                "segment_f1": round(segment.f1, 6), "segment_macro_f1": round(segment.macro_f1, 6)}

    def save_scores(self, out_dir: str | Path) -> Path:
        sed.write_scores(out_dir, self.scores, self.classes)
        return Path(out_dir)

    def plot(self, path: str | Path) -> Path:
        return sed.plot_psd_roc(path, self.psds1, title=f"PSD-ROC (PSDS1 {self.psds1.value:.3f})")

    def write_per_class(self, path: str | Path) -> Path:
        from tagger.fileio import atomic_write_csv

        atomic_write_csv(path, list(PER_CLASS_COLUMNS), [[row[c] for c in PER_CLASS_COLUMNS] for row in self.per_class])
        return Path(path)


def evaluate_strong(
    scorer: Scorer,
    annotations: str | Path,
    audio_dir: str | Path,
    *,
    label_map: str | Path | None = None,
    rule: EventRule = EventRule(),
    rule_source: str = "options",
    window: float | None = None,
    hop: float | None = None,
    batch_size: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> StrongResult:
    """Score every file of `annotations` (a DCASE or AudioSet-Strong TSV, or tagger predict output) found in
    `audio_dir`; see the module docstring for what is computed. `rule_source`: where `rule` came from
    ("options", "checkpoint" or a rule file), recorded with it. `window`/`hop`: score windows of this many
    seconds (a clip-level model's time axis; by default 2 s every 0.5 s)."""
    mapping = read_label_map(label_map) if label_map is not None else None
    strong: StrongLabels = read_strong(annotations, labels=scorer.labels, label_map=mapping)
    if not strong.files:
        raise TaggerError(f"{annotations}: no annotated files")
    find = audio_finder(audio_dir)
    keys = strong.files
    paths = [find(key) for key in keys]
    classes = sorted(strong.labels)
    if not classes:
        raise TaggerError(f"{annotations}: no events to score against")
    columns = [scorer.labels.names.index(name) for name in classes]
    rule = _scored_rule(rule, columns, scorer.num_classes)
    options = PredictOptions(window=window, hop=hop, events=_for_columns(rule, columns, scorer.num_classes),
                             timeline=True, timeline_columns=None, batch_size=batch_size)
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    detections: dict[str, list[tuple[float, float, str]]] = {}
    durations: dict[str, float] = {}
    step = None
    for done, (key, result) in enumerate(zip(keys, predict_files(scorer, paths, options), strict=True), 1):
        frames = result.timeline[:, columns]
        step = result.timeline_seconds
        bounds = np.minimum(np.arange(len(frames) + 1) * step, result.duration)
        scores[key] = (bounds, frames)
        durations[key] = result.duration
        detections[key] = _detections(result, scorer, set(classes))
        if on_progress is not None:
            on_progress(done, len(keys))
    check_durations(strong, durations)
    truth, joined = _join_overlaps(strong.by_file())
    psds1 = sed.psds(scores, classes, truth, durations, sed.PSDS1)
    psds2 = sed.psds(scores, classes, truth, durations, sed.PSDS2)
    event = sed.event_f1(detections, truth, classes, durations=durations)
    segment = sed.segment_f1(detections, truth, classes, durations)
    seconds = (window, hop or window / 2) if window is not None else EVENT_WINDOW
    time_axis = "frames" if scorer.frame_level else f"{seconds[0]:g} s windows every {seconds[1]:g} s"
    metrics = {"files": len(keys), "events": len(strong), "classes": len(classes), "time_axis": time_axis,
               "frame_seconds": round(float(step), 6), "psds1": round(psds1.value, 6), "psds2": round(psds2.value, 6),
               "event_f1": round(event.f1, 6), "event_macro_f1": round(event.macro_f1, 6),
               "segment_f1": round(segment.f1, 6), "segment_macro_f1": round(segment.macro_f1, 6),
               "event_rule": {**rule.to_dict(), "source": rule_source}}
    by_class_event = {row["class"]: row for row in event.per_class}
    by_class_segment = {row["class"]: row for row in segment.per_class}
    counts = {c: sum(e.label == c for e in strong.events) for c in classes}
    per_class = [{"class": c, "events": counts[c], "psds1": round(psds1.per_class[c], 6),
                  "psds2": round(psds2.per_class[c], 6), "event_f1": round(by_class_event[c]["f1"], 6),
                  "event_precision": round(by_class_event[c]["precision"], 6),
                  "event_recall": round(by_class_event[c]["recall"], 6),
                  "segment_f1": round(by_class_segment[c]["f1"], 6)} for c in classes]
    notes = [] if scorer.frame_level else [f"the model has no frame-level output: its time axis is {time_axis}"]
    if joined:
        notes.append(f"{joined} annotated events overlapped or touched another of their class in the same file and "
                     "were joined with it (sed_scores_eval scores one event per stretch of a class)")
    return StrongResult(metrics, per_class, scores, classes, psds1, psds2, truth, durations, rule, float(step), notes)


TUNING_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # onset thresholds tried: 0.05 ... 0.95


def tune_thresholds(scores: dict[str, tuple[np.ndarray, np.ndarray]], truth: dict, durations: dict[str, float],
                    classes: list[str], frame_seconds: float, rule: EventRule, metric: str = "event",
                    ) -> tuple[EventRule, dict[str, dict[str, float]]]:
    """For each class, the onset threshold of TUNING_GRID whose events (found by the shared post-processing, with
    off = on x the rule's off/on ratio) give that class the best event-based (or segment-based) F1; ties go to the
    lowest threshold. Returns the per-class rule over `classes` and what each class reached."""
    if metric not in ("event", "segment"):
        raise TaggerError(f"tuning metric {metric!r} is not one of event, segment")
    if isinstance(rule.on, tuple):
        raise TaggerError("tune from one onset threshold for every class, not per-class thresholds")
    ratio = rule.off / rule.on
    best: dict[str, dict[str, float]] = {c: {"on": TUNING_GRID[0], "f1": -1.0} for c in classes}
    for on in TUNING_GRID:
        trial = EventRule(on=on, off=on * ratio, min_duration=rule.min_duration, min_gap=rule.min_gap,
                          median_filter=rule.median_filter)
        found = _found(scores, durations, classes, frame_seconds, trial)
        if metric == "event":
            result = sed.event_f1(found, truth, classes, durations=durations)
        else:
            result = sed.segment_f1(found, truth, classes, durations)
        for row in result.per_class:
            if row["f1"] > best[row["class"]]["f1"]:
                best[row["class"]] = {"on": on, "f1": float(row["f1"])}
    on = tuple(best[c]["on"] for c in classes)
    tuned = EventRule(on=on, off=tuple(v * ratio for v in on), min_duration=rule.min_duration, min_gap=rule.min_gap,
                      median_filter=rule.median_filter)
    return tuned, best


def _found(scores: dict[str, tuple[np.ndarray, np.ndarray]], durations: dict[str, float], classes: list[str],
           frame_seconds: float, rule: EventRule) -> dict[str, list[tuple[float, float, str]]]:
    """The events `rule` finds in each file's scores (columns: `classes`), as (onset, offset, class)."""
    return {key: [(e.onset, e.offset, classes[e.label]) for e in detect_events(frames, frame_seconds, rule,
                                                                                durations[key])]
            for key, (_, frames) in scores.items()}


def _scored_rule(rule: EventRule, columns: list[int], num_classes: int) -> EventRule:
    """The rule over the scored classes only: per-class thresholds given for every class of the model (a saved
    rule read for it) are narrowed to the scored ones, so results list one threshold per scored class."""
    if not isinstance(rule.on, tuple) or len(rule.on) == len(columns) or len(rule.on) != num_classes:
        return rule
    return EventRule(on=tuple(rule.on[c] for c in columns), off=tuple(rule.off[c] for c in columns),
                     min_duration=rule.min_duration, min_gap=rule.min_gap, median_filter=rule.median_filter)


def _for_columns(rule: EventRule, columns: list[int], num_classes: int) -> EventRule:
    """The rule for the whole model: per-class thresholds are given for the scored classes only, so spread them."""
    if not isinstance(rule.on, tuple):
        return rule
    if len(rule.on) != len(columns):
        raise TaggerError(f"{len(rule.on)} per-class thresholds for {len(columns)} scored classes")
    on, off = [1.0] * num_classes, [1.0] * num_classes
    for k, column in enumerate(columns):
        on[column], off[column] = rule.on[k], rule.off[k]
    return EventRule(on=tuple(on), off=tuple(off), min_duration=rule.min_duration, min_gap=rule.min_gap,
                     median_filter=rule.median_filter)


def _join_overlaps(truth: dict[str, list[tuple[float, float, str]]]) -> tuple[dict, int]:
    """Same-class events of a file that overlap or touch become one; (the truth, how many were joined)."""
    joined, out = 0, {}
    for key, events in truth.items():
        merged: list[list] = []
        for onset, offset, label in sorted(events, key=lambda e: (e[2], e[0])):
            if merged and merged[-1][2] == label and onset <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], offset)
                joined += 1
            else:
                merged.append([onset, offset, label])
        out[key] = sorted((tuple(event) for event in merged), key=lambda e: (e[0], e[2]))
    return out, joined


def _detections(result: FileResult, scorer: Scorer, classes: set[str]) -> list[tuple[float, float, str]]:
    found = [(e.onset, e.offset, scorer.labels.name_of(e.label)) for e in result.events or ()]
    return [event for event in found if event[2] in classes]
