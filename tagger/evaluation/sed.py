"""Sound event detection metrics, scored as DCASE task 4 scores them: PSDS, event-based and segment-based F1.

Pure functions on plain inputs; the numbers come from the field's own library, sed_scores_eval (which follows
sed_eval for the collar- and segment-based F1), so they equal the published tools':
- `scores`: {audio key: (timestamps (T+1,) frame boundaries in seconds, frame scores (T, C) probabilities)} with
  `classes`, the C column names;
- `ground_truth` and `detections`: {audio key: [(onset, offset, class name), ...]};
- `durations`: {audio key: seconds}. The evaluated files are the scored ones (or the detected ones); a file missing
  from the ground truth has no events, and every ground-truth file must be among them.

sed_scores_eval (with sed_eval, dcase_util, pandas and matplotlib under it) is the optional `sed` extra and is
imported inside the functions that need it. May import: numpy, Pillow, sed_scores_eval, tagger.errors,
tagger.fileio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tagger.errors import TaggerError
from tagger.fileio import atomic_path, atomic_write_text

# DCASE 2021-2024 task 4 settings; the false-positive rate is counted per hour.
PSDS1 = dict(dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=None, alpha_ct=0.0, alpha_st=1.0, max_efpr=100.0)
PSDS2 = dict(dtc_threshold=0.1, gtc_threshold=0.1, cttc_threshold=0.3, alpha_ct=0.5, alpha_st=1.0, max_efpr=100.0)
EVENT_COLLAR, EVENT_OFFSET_RATE, SEGMENT = 0.2, 0.2, 1.0  # sed_eval's event-based and segment-based defaults
TIME_DECIMALS = 6  # sed_scores_eval rounds times to this many decimals so that a boundary hit is not lost to floats

Event = tuple[float, float, str]
Scores = Mapping[str, tuple[np.ndarray, np.ndarray]]
Events = Mapping[str, Sequence[Event]]


@dataclass(frozen=True)
class PsdsResult:
    """PSDS and its PSD-ROC: `etpr` (effective true-positive rate) against `efpr` (effective false positives per
    hour), a staircase up to `setting["max_efpr"]`; `per_class` is the area under each class's own ROC."""

    value: float
    per_class: dict[str, float]
    efpr: np.ndarray
    etpr: np.ndarray
    setting: dict[str, Any] = field(default_factory=dict)
    per_class_roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # class: (efpr, tpr)


@dataclass(frozen=True)
class F1Result:
    """Micro-averaged (over all events or segments) and macro-averaged (mean over classes) F1, precision and
    recall, and one row per class: class, f1, precision, recall, tp, fp, fn, reference (events or active
    segments in the ground truth)."""

    f1: float
    precision: float
    recall: float
    macro_f1: float
    macro_precision: float
    macro_recall: float
    per_class: list[dict[str, Any]]


def psds(scores: Scores, classes: Sequence[str], ground_truth: Events, durations: Mapping[str, float],
         setting: Mapping[str, Any] = PSDS1) -> PsdsResult:
    """Polyphonic sound detection score from the frame scores themselves (every threshold, no operating point),
    computed by sed_scores_eval's `intersection_based.psds`. `setting` is PSDS1, PSDS2 or a dict like them."""
    sse = _library()
    known = {"dtc_threshold", "gtc_threshold", "cttc_threshold", "alpha_ct", "alpha_st", "max_efpr"}
    unknown = sorted(set(setting) - known)
    if unknown or not {"dtc_threshold", "gtc_threshold"} <= set(setting):
        raise TaggerError(f"a PSDS setting needs dtc_threshold and gtc_threshold and may also set "
                          f"{', '.join(sorted(known - {'dtc_threshold', 'gtc_threshold'}))}; got {dict(setting)}")
    frames = _score_frames(scores, classes)
    truth = _ground_truth(ground_truth, frames, classes)
    lengths = _durations(durations, frames)
    value, per_class, (etpr, efpr), per_class_roc = sse.intersection_based.psds(
        scores=frames, ground_truth=truth, audio_durations=lengths, **dict(setting), unit_of_time="hour",
        time_decimals=TIME_DECIMALS)
    return PsdsResult(
        value=float(value), per_class={c: float(per_class[c]) for c in classes},
        efpr=np.asarray(efpr, dtype=np.float64), etpr=np.asarray(etpr, dtype=np.float64), setting=dict(setting),
        per_class_roc={c: (np.asarray(roc[1], dtype=np.float64), np.asarray(roc[0], dtype=np.float64))
                       for c, roc in per_class_roc.items()})


def event_f1(predicted: Events | Scores, ground_truth: Events, classes: Sequence[str], *,
             thresholds: Mapping[str, float] | None = None, durations: Mapping[str, float] | None = None,
             collar: float = EVENT_COLLAR, offset_rate: float = EVENT_OFFSET_RATE) -> F1Result:
    """Event-based (collar) F1 as sed_eval's `EventBasedMetrics(t_collar=collar, percentage_of_length=offset_rate)`:
    a detection matches a same-class event whose onset is within `collar` seconds and whose offset is within
    max(collar, offset_rate x the event's length); each event matches at most once.

    `predicted` is detections, or frame scores with per-class `thresholds` (a frame is active at score >=
    threshold, thresholded by sed_scores_eval). Detections of one class that overlap or touch count as one event,
    as they would come out of thresholded scores. The files evaluated are those of `durations` (optional here), or
    else those detected or in the ground truth: a file without detections may be left out. Frame scores must
    cover every ground-truth file."""
    frames, threshold_map = _predicted_frames(predicted, classes, thresholds, durations, ground_truth)
    truth = _ground_truth(ground_truth, frames, classes)
    sse = _library()
    f, p, r, stats = sse.collar_based.fscore(
        scores=frames, ground_truth=truth, threshold=threshold_map, onset_collar=collar, offset_collar=collar,
        offset_collar_rate=offset_rate, time_decimals=TIME_DECIMALS)
    return _f1_result(f, p, r, stats, classes)


def segment_f1(predicted: Events | Scores, ground_truth: Events, classes: Sequence[str],
               durations: Mapping[str, float], *, thresholds: Mapping[str, float] | None = None,
               segment: float = SEGMENT) -> F1Result:
    """Segment-based F1 as sed_eval's `SegmentBasedMetrics(time_resolution=segment)`: each file is cut into
    `segment`-second pieces from 0 to its duration, and a class is active in a piece if any event of it overlaps
    the piece. `predicted` is detections, or frame scores with per-class `thresholds` (see `event_f1`)."""
    frames, threshold_map = _predicted_frames(predicted, classes, thresholds, durations, ground_truth)
    truth = _ground_truth(ground_truth, frames, classes)
    lengths = _durations(durations, frames)
    if not (isinstance(segment, (int, float)) and segment > 0):
        raise TaggerError(f"the segment length must be a positive number of seconds, got {segment!r}")
    sse = _library()
    f, p, r, stats = sse.segment_based.fscore(
        scores=frames, ground_truth=truth, audio_durations=lengths, threshold=threshold_map,
        segment_length=segment, time_decimals=TIME_DECIMALS)
    return _f1_result(f, p, r, stats, classes)


def write_scores(out_dir: str | Path, scores: Scores, classes: Sequence[str]) -> list[Path]:
    """One `<key>.tsv` per file in sed_scores_eval's format (columns onset, offset, then the classes; one row per
    frame; floats written to round-trip exactly), each written atomically. sed_scores_eval's psds on the folder
    gives `psds(...)`'s value. The folder must hold no other .tsv files, which the library would read as well."""
    frames = _score_frames(scores, classes, as_arrays=True)
    out_dir = Path(out_dir)
    for key in frames:
        if not key or "/" in key or "\\" in key or key in (".", ".."):
            raise TaggerError(f"audio key {key!r} cannot name a score file: use the file name without folders")
    stale = sorted(p.name for p in out_dir.glob("*.tsv") if p.stem not in frames) if out_dir.is_dir() else []
    if stale:
        raise TaggerError(f"{out_dir} already holds {stale[0]} (and {len(stale) - 1} more .tsv files) that would "
                          "be scored with these files: write into an empty folder")
    header = "\t".join(["onset", "offset", *classes])
    written = []
    for key, (timestamps, values) in frames.items():
        lines = [header]
        for onset, offset, row in zip(timestamps[:-1].tolist(), timestamps[1:].tolist(), values.tolist(), strict=True):
            lines.append("\t".join(repr(x) for x in (onset, offset, *row)))
        path = out_dir / f"{key}.tsv"
        atomic_write_text(path, "\n".join(lines) + "\n")
        written.append(path)
    return written


PLOT_SIZE = (720, 520)
_LINE, _CLASS, _TEXT, _AXIS, _GRID = (44, 110, 180), (190, 200, 215), (30, 30, 30), (90, 90, 90), (228, 228, 228)


def plot_psd_roc(path: str | Path, result: PsdsResult, title: str = "") -> Path:
    """Draw the PSD-ROC (eFPR per hour across, eTPR up; each class's own ROC faint behind it) as a PNG of
    PLOT_SIZE pixels, written atomically."""
    width, height = PLOT_SIZE
    left, right, top, bottom = 70, width - 30, 60, height - 60
    max_efpr = float(result.setting.get("max_efpr") or (result.efpr.max() if result.efpr.size else 1.0) or 1.0)
    font, small = _font(13), _font(11)
    image = Image.new("RGB", PLOT_SIZE, "white")
    draw = ImageDraw.Draw(image)

    def point(x: float, y: float) -> tuple[float, float]:
        x = min(max(x, 0.0), max_efpr)
        return left + (right - left) * x / max_efpr, bottom - (bottom - top) * min(max(y, 0.0), 1.0)

    for i in range(6):
        gx, gy = left + (right - left) * i / 5, bottom - (bottom - top) * i / 5
        draw.line([(gx, top), (gx, bottom)], fill=_GRID)
        draw.line([(left, gy), (right, gy)], fill=_GRID)
        draw.text((gx - 10, bottom + 6), f"{max_efpr * i / 5:g}", fill=_AXIS, font=small)
        draw.text((left - 34, gy - 7), f"{i / 5:.1f}", fill=_AXIS, font=small)
    draw.rectangle([left, top, right, bottom], outline=_AXIS)
    for efpr, tpr in result.per_class_roc.values():
        _staircase(draw, point, efpr, tpr, max_efpr, _CLASS, 1)
    _staircase(draw, point, result.efpr, result.etpr, max_efpr, _LINE, 3)
    setting = result.setting
    draw.text((12, 8), title or "PSD-ROC", fill=_TEXT, font=font)
    draw.text((12, 28), f"PSDS {_fmt(result.value)}   DTC {setting.get('dtc_threshold')}  GTC "
                        f"{setting.get('gtc_threshold')}  CTTC {setting.get('cttc_threshold')}  alpha_ct "
                        f"{setting.get('alpha_ct')}  alpha_st {setting.get('alpha_st')}", fill=_TEXT, font=small)
    draw.text(((left + right) / 2 - 90, bottom + 26), "eFPR (false positives per hour)", fill=_AXIS, font=small)
    draw.text((8, top - 18), "eTPR", fill=_AXIS, font=small)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def _staircase(draw: ImageDraw.ImageDraw, point: Any, efpr: np.ndarray, tpr: np.ndarray, max_efpr: float,
               colour: tuple[int, int, int], width: int) -> None:
    """The ROC as its area counts it: each tpr holds from its eFPR to the next one, the last one to max_efpr."""
    order = np.argsort(efpr, kind="stable")
    xs, ys = np.asarray(efpr, dtype=np.float64)[order], np.asarray(tpr, dtype=np.float64)[order]
    keep = np.isfinite(xs) & np.isfinite(ys) & (xs <= max_efpr)
    xs, ys = xs[keep].tolist(), ys[keep].tolist()
    if not xs:
        return
    corners, previous = [], 0.0
    for x, y, following in zip(xs, ys, [*xs[1:], max_efpr], strict=True):
        corners += [point(x, previous), point(x, y), point(following, y)]
        previous = y
    draw.line(corners, fill=colour, width=width)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


# -- inputs ------------------------------------------------------------------------------------------------------


def _library() -> Any:
    import warnings

    try:
        with warnings.catch_warnings():  # dcase_util, under it, warns about pkg_resources on import: not the user's
            warnings.simplefilter("ignore")
            import sed_scores_eval
    except ImportError as exc:
        raise TaggerError(f"sound event detection metrics need sed_scores_eval ({exc}): pip install 'tagger[sed]'"
                          ) from None
    return sed_scores_eval


def _classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str) or not classes:
        raise TaggerError("no classes given: pass the score columns' class names as a list")
    names = list(classes)
    for name in names:
        if not isinstance(name, str) or not name or any(c in name for c in "\t\n\r\\"):
            raise TaggerError(f"class name {name!r} is not usable: a non-empty string without tabs, newlines or \\")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise TaggerError(f"class {twice[0]!r} appears twice among the classes")
    if {"onset", "offset"} & set(names):
        raise TaggerError("a class may not be called 'onset' or 'offset' (the score files' time columns)")
    return names


def _score_frames(scores: Scores, classes: Sequence[str], as_arrays: bool = False) -> dict[str, Any]:
    """Check the scores and give {key: DataFrame} as sed_scores_eval reads it (or {key: (timestamps, scores)})."""
    names = _classes(classes)
    if not isinstance(scores, Mapping) or not scores:
        raise TaggerError("no scores given: pass {audio key: (timestamps, frame scores)} for at least one file")
    checked = {}
    for key, value in scores.items():
        if not isinstance(key, str) or not key:
            raise TaggerError(f"audio key {key!r} is not a non-empty string")
        try:
            timestamps, values = value
        except (TypeError, ValueError):
            raise TaggerError(f"scores for {key} are not a (timestamps, frame scores) pair") from None
        timestamps = np.asarray(timestamps, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] != len(names):
            raise TaggerError(f"frame scores for {key} have shape {values.shape}; expected (frames, {len(names)}) "
                              f"for the {len(names)} classes")
        if timestamps.shape != (values.shape[0] + 1,):
            raise TaggerError(f"timestamps for {key} have shape {timestamps.shape}; expected ({values.shape[0] + 1},)"
                              ": the frame boundaries, one more than the frames")
        if not np.isfinite(timestamps).all() or timestamps[0] < 0 or not (np.diff(timestamps) > 0).all():
            raise TaggerError(f"timestamps for {key} are not increasing finite seconds from 0 or later")
        if np.isnan(values).any():
            raise TaggerError(f"frame scores for {key} contain NaN")
        checked[key] = (timestamps, values)
    if as_arrays:
        return checked
    sse = _library()
    return {key: sse.base_modules.scores.create_score_dataframe(values, timestamps, names)
            for key, (timestamps, values) in checked.items()}


def _events(events: Events, what: str, classes: Sequence[str], keys: Any, merge: bool) -> dict[str, list[Event]]:
    """Check {key: [(onset, offset, class)]}: known keys and classes, onset < offset; same-class events that
    overlap or touch are merged (detections) or refused (ground truth, which sed_scores_eval rejects)."""
    if not isinstance(events, Mapping):
        raise TaggerError(f"{what} must be a dict of audio key -> [(onset, offset, class), ...]")
    known = set(classes)
    out: dict[str, list[Event]] = {}
    for key, items in events.items():
        if key not in keys:
            raise TaggerError(f"{what} has {key}, which has no scores" if what == "ground truth"
                              else f"{what} has {key}, which is not among the files with durations")
        per_class: dict[str, list[tuple[float, float]]] = {}
        for item in items:
            try:
                onset, offset, name = item
                onset, offset = float(onset), float(offset)
            except (TypeError, ValueError):
                raise TaggerError(f"{what} for {key} has {item!r}, not an (onset, offset, class) triple") from None
            if name not in known:
                raise TaggerError(f"{what} for {key} has class {name!r}, which is not among the {len(known)} "
                                  f"classes scored ({', '.join(list(classes)[:5])}{', ...' if len(known) > 5 else ''})")
            if not (math.isfinite(onset) and math.isfinite(offset) and 0 <= onset < offset):
                raise TaggerError(f"{what} for {key} has an event {item!r} whose onset is not before its offset")
            per_class.setdefault(name, []).append((onset, offset))
        merged: list[Event] = []
        for name, spans in per_class.items():
            spans.sort()
            current = [list(spans[0])]
            for onset, offset in spans[1:]:
                if onset <= current[-1][1]:
                    if not merge:
                        raise TaggerError(f"{what} for {key} has {name} events that overlap or touch at "
                                          f"{onset:g} s: merge them into one event")
                    current[-1][1] = max(current[-1][1], offset)
                else:
                    current.append([onset, offset])
            merged += [(a, b, name) for a, b in current]
        out[key] = sorted(merged)
    return out


def _ground_truth(ground_truth: Events, frames: Mapping[str, Any], classes: Sequence[str]) -> dict[str, list[Event]]:
    truth = _events(ground_truth, "ground truth", classes, frames, merge=False)
    present = {name for events in truth.values() for _, _, name in events}
    absent = [name for name in classes if name not in present]
    if absent:  # sed_scores_eval asserts this; a rate over no events is undefined
        raise TaggerError(f"class {absent[0]!r} has no ground-truth events ({len(absent)} classes have none): "
                          "leave such classes out of `classes` and their score columns")
    return {key: truth.get(key, []) for key in frames}


def _durations(durations: Mapping[str, float] | None, frames: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(durations, Mapping) or not durations:
        raise TaggerError("no durations given: pass {audio key: seconds} for every scored file")
    missing = [key for key in frames if key not in durations]
    if missing:
        raise TaggerError(f"no duration for {missing[0]} ({len(missing)} scored files have none)")
    extra = [key for key in durations if key not in frames]
    if extra:
        raise TaggerError(f"durations has {extra[0]}, which has no scores ({len(extra)} such files)")
    out = {}
    for key in frames:
        try:
            seconds = float(durations[key])
        except (TypeError, ValueError):
            seconds = float("nan")
        if not (math.isfinite(seconds) and seconds > 0):
            raise TaggerError(f"the duration of {key} is {durations[key]!r}; it must be a positive number of seconds")
        out[key] = seconds
    return out


def _predicted_frames(predicted: Events | Scores, classes: Sequence[str], thresholds: Mapping[str, float] | None,
                      durations: Mapping[str, float] | None, ground_truth: Events) -> tuple[dict[str, Any], Any]:
    """Frame scores and per-class thresholds for sed_scores_eval: scores as given, or detections as 0/1 frames
    between their boundaries (thresholded at 0.5, which gives the detections back)."""
    names = _classes(classes)
    if thresholds is not None:
        if not isinstance(thresholds, Mapping) or set(thresholds) != set(names):
            given = set(thresholds) if isinstance(thresholds, Mapping) else set()
            odd = sorted(set(names) ^ given)
            raise TaggerError(f"thresholds must give one number per class; {odd[0] if odd else 'none'} is missing "
                              "or unknown")
        threshold_map = {}
        for name in names:
            value = thresholds[name]
            if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(float(value)):
                raise TaggerError(f"threshold for {name} is {value!r}, not a finite number")
            threshold_map[name] = float(value)
        return _score_frames(predicted, names), threshold_map
    if not isinstance(predicted, Mapping) or not predicted:
        raise TaggerError("no detections given: pass {audio key: [(onset, offset, class), ...]} (an empty list for a "
                          "file without detections) or frame scores with thresholds")
    truth = ground_truth if isinstance(ground_truth, Mapping) else {}
    keys = set(durations) if isinstance(durations, Mapping) and durations else set(predicted) | set(truth)
    detections = _events(predicted, "detections", names, keys, merge=True)
    sse = _library()
    frames = {}
    for key in sorted(keys):
        events = detections.get(key, [])
        end = max([b for _, b, _ in events] + [float(e[1]) for e in truth.get(key, []) if _is_triple(e)] + [0.0])
        if isinstance(durations, Mapping) and key in durations:
            try:
                end = max(end, float(durations[key]))
            except (TypeError, ValueError):
                pass
        bounds = np.unique(np.array([0.0, end if end > 0 else 1.0] + [t for a, b, _ in events for t in (a, b)]))
        values = np.zeros((len(bounds) - 1, len(names)))
        centres = (bounds[:-1] + bounds[1:]) / 2
        for onset, offset, name in events:
            values[(centres > onset) & (centres < offset), names.index(name)] = 1.0
        frames[key] = sse.base_modules.scores.create_score_dataframe(values, bounds, names)
    return frames, dict.fromkeys(names, 0.5)


def _is_triple(item: Any) -> bool:
    try:
        return len(item) == 3 and math.isfinite(float(item[1]))
    except (TypeError, ValueError):
        return False


def _f1_result(f: Mapping[str, float], p: Mapping[str, float], r: Mapping[str, float],
               stats: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> F1Result:
    rows = []
    for name in classes:
        tp, fp, n_ref = int(stats[name]["tps"]), int(stats[name]["fps"]), int(stats[name]["n_ref"])
        rows.append({"class": name, "f1": float(f[name]), "precision": float(p[name]), "recall": float(r[name]),
                     "tp": tp, "fp": fp, "fn": n_ref - tp, "reference": n_ref})
    return F1Result(f1=float(f["micro_average"]), precision=float(p["micro_average"]),
                    recall=float(r["micro_average"]), macro_f1=float(f["macro_average"]),
                    macro_precision=float(p["macro_average"]), macro_recall=float(r["macro_average"]),
                    per_class=rows)
