"""Sound events from frame-level class scores: the one post-processing that predict and evaluation share.

Frame scores are median-filtered (optional, `median_filter` seconds), then each class switches on at its `on`
threshold and off below its `off` threshold (hysteresis; one value for all classes or one per class), short gaps are
merged and short events dropped. Everything streams over overlapping windows, so a recording of any length is
processed in bounded memory and gives the events of the whole score array.

Timing: frame k covers [k * frame_seconds, (k + 1) * frame_seconds). An event that switches on at frame a and off at
frame b (the first frame whose score is below `off`) spans [a * frame_seconds, b * frame_seconds), clipped to the
recording's duration when one is given. Gaps are merged (`min_gap`) before short events are dropped (`min_duration`),
so fragments of one sound that merge into a long enough event survive.

Rules: a rule with per-class thresholds is saved by class name (`rule_record`), in a rule file or in a checkpoint
(`runtime.store_event_rule`); `choose_rule` decides between the options, a rule file and the checkpoint's rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError

_BLOCK = 1 << 20  # score elements per internal block: bounds temporary memory whatever chunk size a caller passes
_Runs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # label, onset frame, offset frame, peak


@dataclass(frozen=True)
class Event:
    """One detection: class `label` active over [onset, offset) seconds, with its highest frame score."""

    label: int
    onset: float
    offset: float
    peak: float


@dataclass(frozen=True)
class EventRule:
    """When a class counts as sounding, all in seconds and probabilities.

    on / off: switch on at `on`, off below `off` (default on/2); a number for every class, or a tuple with one per
        class (thresholds tuned per class).
    median_filter: width in seconds of a median filter over each class's frame scores before thresholding (0: none),
        as the DCASE baselines smooth; it becomes an odd number of frames, at least 1.
    min_gap: same-class events closer than this merge; min_duration: shorter events are then dropped.
    """

    on: float | tuple[float, ...] = 0.5
    off: float | tuple[float, ...] | None = None
    min_duration: float = 0.1
    min_gap: float = 0.0
    median_filter: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.on, (tuple, list)) or isinstance(self.off, (tuple, list)):
            on = _values("on", self.on)
            off = tuple(v / 2 for v in on) if self.off is None else _values("off", self.off)
            count = max(len(on), len(off))
            on, off = _stretch("on", on, count), _stretch("off", off, count)
            for k, (high, low) in enumerate(zip(on, off, strict=True)):
                _check(f"on[{k}]", high, lambda v: 0 < v <= 1, "a number in (0, 1]")
                _check(f"off[{k}]", low, lambda v, high=high: 0 <= v <= high, f"a number in [0, on={high:g}]")
            object.__setattr__(self, "on", on)
            object.__setattr__(self, "off", off)
        else:
            _check("on", self.on, lambda v: 0 < v <= 1, "a number in (0, 1]")
            if self.off is None:
                object.__setattr__(self, "off", self.on / 2)
            _check("off", self.off, lambda v: 0 <= v <= self.on, f"a number in [0, on={self.on:g}]")
        _check("min_duration", self.min_duration, lambda v: v >= 0, "a number of seconds >= 0")
        _check("min_gap", self.min_gap, lambda v: v >= 0, "a number of seconds >= 0")
        _check("median_filter", self.median_filter, lambda v: v >= 0, "a number of seconds >= 0")

    def thresholds(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(on, off) as (C,) arrays for a model with `num_classes` classes."""
        on, off = np.asarray(self.on, np.float64), np.asarray(self.off, np.float64)
        if on.ndim and on.size != num_classes:
            raise TaggerError(f"event rule has {on.size} per-class thresholds for a model with {num_classes} classes")
        return np.broadcast_to(on, (num_classes,)).copy(), np.broadcast_to(off, (num_classes,)).copy()

    def median_frames(self, frame_seconds: float) -> int:
        """The median filter's width in frames: odd, at least 1 (1: no filtering)."""
        frames = max(1, round(self.median_filter / frame_seconds))
        return frames if frames % 2 else frames + 1

    def to_dict(self) -> dict:
        """The rule as results record it (JSON-ready)."""
        return {"on": _plain(self.on), "off": _plain(self.off), "median_filter": self.median_filter,
                "min_gap": self.min_gap, "min_duration": self.min_duration}


RULE_FORMAT = "tagger-event-rule"
RULE_KEY = "event_rule"  # where a checkpoint (or ensemble) file keeps its stored rule: a `rule_record`
RULE_SOURCES = ("checkpoint", "options")  # where a rule came from, besides a rule file's path


def rule_record(rule: EventRule, classes: list[str], extra: dict | None = None) -> dict:
    """A rule as a rule file and a checkpoint hold it: thresholds keyed by class name, so any model with those
    classes can use it; `extra` records how it was made (what it was tuned on, the F1 each class reached)."""
    on, off = rule.thresholds(len(classes))
    return {"format": RULE_FORMAT, "on": dict(zip(classes, on.tolist(), strict=True)),
            "off": dict(zip(classes, off.tolist(), strict=True)), "median_filter": rule.median_filter,
            "min_gap": rule.min_gap, "min_duration": rule.min_duration, **(extra or {})}


def write_rule(path, rule: EventRule, classes: list[str], extra: dict | None = None) -> None:
    """Save a rule whose thresholds are per class as JSON keyed by class name (`rule_record`); `read_rule` reads it."""
    import json

    from tagger.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(rule_record(rule, classes, extra), indent=2) + "\n")


def read_rule(path, names: list[str], default: EventRule) -> EventRule:
    """The rule of a `write_rule` file for a model whose classes are `names` (in score order): its classes get
    their saved thresholds, the others `default`'s; its filter, gap and length settings apply to all."""
    return rule_from_record(read_record(path), names, default, str(path))


def read_record(path) -> dict:
    """The contents of a rule file, checked to be one."""
    import json

    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TaggerError(f"{path}: not a readable event-rule file ({error.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != RULE_FORMAT:
        raise TaggerError(f"{path}: not an event-rule file (write one with `tagger evaluate --strong ... --tune-rule`)")
    return payload


def rule_from_record(record: dict, names: list[str], default: EventRule, where: str) -> EventRule:
    """`read_rule` on a record already read (a rule file's contents, or a checkpoint's stored rule)."""
    try:
        saved_on, saved_off = dict(record["on"]), dict(record["off"])
        settings = {key: record[key] for key in ("median_filter", "min_gap", "min_duration")}
    except (KeyError, TypeError, ValueError) as error:
        raise TaggerError(f"{where}: a broken event rule (missing or bad {error}); write it again with "
                          "`tagger evaluate --strong ... --tune-rule`") from None
    unknown = sorted(set(saved_on) - set(names))
    if unknown:
        raise TaggerError(f"{where}: classes the model does not have: {', '.join(unknown[:10])}")
    on, off = default.thresholds(len(names))
    for k, name in enumerate(names):
        if name in saved_on:
            try:
                on[k], off[k] = float(saved_on[name]), float(saved_off.get(name, float(saved_on[name]) / 2))
            except (TypeError, ValueError):
                raise TaggerError(f"{where}: the thresholds of {name!r} are not numbers") from None
    return EventRule(on=tuple(on.tolist()), off=tuple(off.tolist()), **settings)


def choose_rule(names: list[str], stored: EventRule | None = None, rule_file=None, *, on: float | None = None,
                off: float | None = None, min_duration: float | None = None, min_gap: float | None = None,
                median_filter: float | None = None) -> tuple[EventRule, str]:
    """The rule `predict --events` and `evaluate --strong` find events with, and where it came from.

    Options left as None were not given, and take EventRule's defaults (on 0.5, off on / 2, min_duration 0.1 s,
    min_gap 0, median_filter 0). A rule file (`rule_file`, laid over the options: classes it does not name keep
    `on`/`off`) wins, and its path is the source; then any option given ("options"); then the checkpoint's stored
    rule ("checkpoint"); else the defaults ("options")."""
    given = {key: value for key, value in (("on", on), ("off", off), ("min_duration", min_duration),
                                           ("min_gap", min_gap), ("median_filter", median_filter))
             if value is not None}
    rule = EventRule(**given)
    if rule_file is not None:
        return read_rule(rule_file, names, rule), str(rule_file)
    if given or stored is None:
        return rule, "options"
    return stored, "checkpoint"


def stored_rule_note(model: str, record: dict) -> str:
    """The line predict and evaluate log when they use the rule stored in `model`."""
    return f"event rule: the one stored in {model}, {describe_record(record)}; any event option replaces it"


def describe_record(record: dict) -> str:
    """What a stored rule says about itself, in a few words: 'tuned for event F1 on valid.tsv, where it reached
    0.66 (2026-12-04; from rule.json)'."""
    tuned_for, tuned_on = record.get("tuned_for"), record.get("tuned_on")
    text = "set by hand" if not tuned_for else f"tuned for {str(tuned_for).replace('_f1', '')} F1"
    if tuned_on:
        text += f" on {tuned_on}"
    reached = record.get("reached")
    if isinstance(reached, dict) and isinstance(reached.get(tuned_for), (int, float)):
        text += f", where it reached {reached[tuned_for]:.3g}"
    extra = [str(record["date"])[:10]] if record.get("date") else []
    extra += [f"from {record['file']}"] if record.get("file") else []
    return text + (f" ({'; '.join(extra)})" if extra else "")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _values(name: str, values) -> tuple:
    """One threshold, or one per class, as a tuple (checked one by one afterwards)."""
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    if not values:
        raise TaggerError(f"event rule {name}: an empty list of per-class thresholds")
    return values


def _stretch(name: str, values: tuple, count: int) -> tuple:
    """A single value stands for every class; otherwise there must be `count` of them."""
    if len(values) == count:
        return values
    if len(values) == 1:
        return values * count
    raise TaggerError(f"event rule {name}: {len(values)} thresholds where {count} classes need one each")


def _check(name: str, value: object, ok, want: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not ok(value):
        raise TaggerError(f"event rule {name}={value!r} is invalid; it must be {want}")


def _check_common(num_classes: int, frame_seconds: float) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 1:
        raise TaggerError(f"num_classes={num_classes!r} is invalid; it must be a whole number >= 1")
    if not (isinstance(frame_seconds, Real) and math.isfinite(frame_seconds) and frame_seconds > 0):
        raise TaggerError(f"frame_seconds={frame_seconds!r} is invalid; it must be a number of seconds > 0")


def _frames(scores: object, num_classes: int, what: str) -> np.ndarray:
    array = np.asarray(scores)
    if array.ndim != 2 or array.shape[1] != num_classes:
        raise TaggerError(f"{what} have shape {array.shape}; expected (frames, {num_classes})")
    return array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float64)


class Stitcher:
    """Overlap-averages per-window frame scores onto one timeline and hands out frames no later window can change.

    Frame index of a time = round(time / frame_seconds); the timeline starts at frame 0. Windows must cover it without
    holes (first window at 0 s, each next one starting at or before the previous one's end): a hole would have no
    score at all, so it raises TaggerError instead of inventing one. Only frames from the latest window start on are
    kept.
    """

    def __init__(self, num_classes: int, frame_seconds: float):
        _check_common(num_classes, frame_seconds)
        self.num_classes = int(num_classes)
        self.frame_seconds = float(frame_seconds)
        self.position = 0  # frame index of the next frame handed out
        self._sums = np.zeros((0, self.num_classes))
        self._counts = np.zeros(0, dtype=np.int64)
        self._dtype: np.dtype = np.dtype(np.float32)

    @property
    def time(self) -> float:
        """Seconds at which the next frame handed out starts."""
        return float(_seconds(self.position, self.frame_seconds))

    def add(self, start: float, scores: np.ndarray) -> np.ndarray:
        """Add a window's (T, C) frame scores (frame 0 at `start` s); return the (N, C) frames now final."""
        scores = _frames(scores, self.num_classes, "window scores")
        first = int(round(start / self.frame_seconds))
        end = self.position + len(self._counts)
        if first < self.position:
            raise TaggerError(f"window at {start:g} s starts before an earlier window; add windows in start order")
        if first > end:
            raise TaggerError(
                f"window at {start:g} s leaves frames {end}..{first - 1} without scores; windows must touch or overlap "
                f"(frames per window x {self.frame_seconds:g} s >= hop)"
            )
        if len(scores):
            self._dtype = np.result_type(scores.dtype, np.float32)
        ready = self._take(first - self.position)
        size = len(scores)
        if size > len(self._counts):  # grow into a fresh array, so the dropped head is freed
            sums, counts = np.zeros((size, self.num_classes)), np.zeros(size, dtype=np.int64)
            sums[: len(self._counts)], counts[: len(self._counts)] = self._sums, self._counts
            self._sums, self._counts = sums, counts
        self._sums[:size] += scores
        self._counts[:size] += 1
        return ready

    def finish(self) -> np.ndarray:
        """The frames still held: the tail of the last window(s)."""
        return self._take(len(self._counts))

    def _take(self, count: int) -> np.ndarray:
        ready = (self._sums[:count] / self._counts[:count, None]).astype(self._dtype)
        self._sums, self._counts = self._sums[count:], self._counts[count:]
        self.position += count
        return ready


class MedianSmoother:
    """A median filter along time over (N, C) frames fed in chunks, equal to filtering the whole array at once.

    The ends are extended by reflection (the last frame repeated first, as scipy.ndimage.median_filter's default
    "reflect" mode does), so the output has as many frames as the input, delayed by half the width until `finish`.
    """

    def __init__(self, width: int):
        if width < 1 or width % 2 == 0:
            raise TaggerError(f"median filter width {width} must be an odd number of frames")
        self.half = width // 2
        self._held: np.ndarray | None = None  # frames not yet output, with the reflected head once it is known
        self._started = False

    def update(self, frames: np.ndarray) -> np.ndarray:
        held = frames if self._held is None else np.concatenate([self._held, frames])
        if not self._started:
            if len(held) < self.half + 1:  # the head's reflection needs this many frames
                self._held = held
                return held[:0]
            held = np.concatenate([held[: self.half][::-1], held])
            self._started = True
        ready = len(held) - 2 * self.half
        self._held = held[max(ready, 0):]
        return self._median(held) if ready > 0 else held[:0]

    def finish(self) -> np.ndarray:
        held, self._held = self._held, None
        if held is None or not len(held):
            return np.zeros((0, 0))
        if not self._started:  # fewer frames than half the width: reflect as often as needed, as np.pad does
            return self._median(np.pad(held, ((self.half, self.half), (0, 0)), mode="symmetric"))
        tail = held[len(held) - self.half:][::-1] if self.half else held[:0]
        return self._median(np.concatenate([held, tail]))

    def _median(self, padded: np.ndarray) -> np.ndarray:
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * self.half + 1, axis=0)
        return np.median(windows, axis=-1).astype(padded.dtype, copy=False)


class EventTracker:
    """Hysteresis event detection fed frames in chunks, so events that span chunk or window boundaries stay whole.

    State carried between calls is per class (open flag, onset, running peak, and one closed event that a later onset
    within `min_gap` could still extend), so memory does not grow with the recording. An event is handed out once
    nothing later can change it; each returned list is sorted by (onset, label), but a long event may come out after
    shorter ones that began later, so sort the concatenation if you need global order.
    """

    def __init__(self, num_classes: int, frame_seconds: float, rule: EventRule, duration: float | None = None):
        _check_common(num_classes, frame_seconds)
        if duration is not None and not (isinstance(duration, Real) and math.isfinite(duration) and duration >= 0):
            raise TaggerError(f"duration={duration!r} is invalid; it must be a number of seconds >= 0")
        self.num_classes = c = int(num_classes)
        self.frame_seconds = float(frame_seconds)
        self.rule = rule
        self._on, self._off = rule.thresholds(c)
        width = rule.median_frames(self.frame_seconds)
        self._smoother = MedianSmoother(width) if width > 1 else None
        self.duration = None if duration is None else float(duration)
        self.frames_seen = 0
        # Per class: the open event (onset frame, running peak) and the last closed one, held while it may still merge.
        self._open, self._start, self._peak = np.zeros(c, bool), np.zeros(c, np.int64), np.full(c, -np.inf)
        self._held, self._held_on, self._held_off = np.zeros(c, bool), np.zeros(c, np.int64), np.zeros(c, np.int64)
        self._held_peak = np.zeros(c)
        self._eps = 1e-6 * self.frame_seconds  # float slack so a gap of exactly min_gap is not merged by rounding

    def update(self, frames: np.ndarray) -> list[Event]:
        """Consume the next (N, C) frames (time continues from the previous call); return the events now final."""
        frames = _frames(frames, self.num_classes, "frame scores")
        if self._smoother is not None:
            frames = self._smoother.update(frames)
        out: list[_Runs] = []
        self._blocks(frames, out)
        # A held event is final once even an onset at the very next frame would be min_gap or more away.
        gap = (self.frames_seen - self._held_off) * self.frame_seconds
        self._release(self._held & (gap >= self.rule.min_gap - self._eps), out)
        return self._events(out)

    def finish(self) -> list[Event]:
        """Close the events still open at the end (offsets clipped to `duration`); call once, after the last update."""
        out: list[_Runs] = []
        if self._smoother is not None:  # the frames the filter still holds
            self._blocks(self._smoother.finish(), out)
        opened = self._open
        self._held[opened], self._held_on[opened] = True, self._start[opened]
        self._held_off[opened], self._held_peak[opened] = self.frames_seen, self._peak[opened]
        self._open[:] = False
        self._release(self._held.copy(), out)
        return self._events(out)

    def _blocks(self, frames: np.ndarray, out: list[_Runs]) -> None:
        step = max(1, _BLOCK // self.num_classes)
        for i in range(0, len(frames), step):
            self._block(frames[i : i + step], out)

    def _block(self, x: np.ndarray, out: list[_Runs]) -> None:
        col_max, col_min = x.max(axis=0), x.min(axis=0)
        if np.isnan(col_max).any():
            raise TaggerError(f"frame scores contain NaN near frame {self.frames_seen}; check the model's output")
        # Only classes whose state can flip in this block need the per-frame work; the rest just update peaks.
        changing = np.where(self._open, col_min < self._off, col_max >= self._on)
        steady = self._open & ~changing
        self._peak[steady] = np.maximum(self._peak[steady], col_max[steady])
        cols = np.flatnonzero(changing)
        if cols.size:
            self._runs(x, cols, out)
        self.frames_seen += len(x)

    def _runs(self, x: np.ndarray, cols: np.ndarray, out: list[_Runs]) -> None:
        """Hysteresis on the changing classes, then gap merging, all as array operations over the runs found."""
        n, base, fs = len(x), self.frames_seen, self.frame_seconds
        # Class-major copy with a -inf sentinel after it, so reduceat can take run peaks up to the very end.
        flat = np.empty(len(cols) * n + 1, dtype=x.dtype)
        flat[-1] = -np.inf
        xt = flat[:-1].reshape(len(cols), n)
        np.take(x.T, cols, axis=0, out=xt, mode="clip")
        # Each frame takes the state of the latest decisive frame (>= on, or < off); frames in between keep it.
        high = xt >= self._on[cols, None]
        last = np.where(high | (xt < self._off[cols, None]), np.arange(n, dtype=np.int32), np.int32(-1))
        np.maximum.accumulate(last, axis=1, out=last)
        was = self._open[cols]
        state = np.where(last >= 0, np.take_along_axis(high, np.maximum(last, 0), axis=1), was[:, None])
        # Edges with a virtual rise before the block (class open on entry) and a virtual fall after it (open on
        # exit), so every class row reads rise, fall, rise, fall ... and run i is edges 2i and 2i + 1.
        edges = np.empty((len(cols), n + 2), dtype=bool)
        edges[:, 0], edges[:, n + 1] = was, state[:, -1]
        np.not_equal(state[:, 0], was, out=edges[:, 1])
        np.not_equal(state[:, 1:], state[:, :-1], out=edges[:, 2 : n + 1])
        row, at = np.nonzero(edges)
        local, rise, start, end = row[0::2], at[0::2], np.maximum(at[0::2] - 1, 0), at[1::2] - 1

        # A carried event that ends at frame 0 has start == end: reduceat then gives x[0] (< off), which the max with
        # its running peak (>= on) ignores.
        bounds = np.empty(2 * len(start), dtype=np.intp)
        bounds[0::2], bounds[1::2] = local * n + start, local * n + end
        peak = np.maximum.reduceat(flat, bounds)[0::2].astype(np.float64)

        label, onset, offset = cols[local], base + start.astype(np.int64), base + end.astype(np.int64)
        carried = rise == 0  # the event open before this block goes on
        onset[carried] = self._start[label[carried]]
        peak[carried] = np.maximum(peak[carried], self._peak[label[carried]])
        held = np.flatnonzero(self._held[cols])
        if held.size:  # a class's held event goes before its runs, as a candidate for merging
            h = cols[held]
            order = np.argsort(np.concatenate([held, local]), kind="stable")
            local = np.concatenate([held, local])[order]
            label = np.concatenate([h, label])[order]
            onset = np.concatenate([self._held_on[h], onset])[order]
            offset = np.concatenate([self._held_off[h], offset])[order]
            peak = np.concatenate([self._held_peak[h], peak])[order]
            self._held[h] = False

        join = (local[1:] == local[:-1]) & ((onset[1:] - offset[:-1]) * fs < self.rule.min_gap - self._eps)
        first = np.flatnonzero(np.concatenate([[True], ~join]))
        label, onset, peak = label[first], onset[first], np.maximum.reduceat(peak, first)
        offset = offset[np.append(first[1:] - 1, len(join))]

        tail = np.append(label[1:] != label[:-1], True)  # the last event of each class may still change
        still_open = tail & (offset == base + n)
        self._start[label[still_open]], self._peak[label[still_open]] = onset[still_open], peak[still_open]
        hold = tail & ~still_open
        h = label[hold]
        self._held[h], self._held_on[h] = True, onset[hold]
        self._held_off[h], self._held_peak[h] = offset[hold], peak[hold]
        out.append((label[~tail], onset[~tail], offset[~tail], peak[~tail]))
        self._open[cols] = state[:, -1]

    def _release(self, mask: np.ndarray, out: list[_Runs]) -> None:
        labels = np.flatnonzero(mask)
        out.append((labels, self._held_on[labels], self._held_off[labels], self._held_peak[labels]))
        self._held[labels] = False

    def _events(self, parts: list[_Runs]) -> list[Event]:
        """Final (label, onset frame, offset frame, peak) arrays -> Events: clipped, length-filtered, sorted."""
        if not parts:
            return []
        label, onset, offset, peak = (np.concatenate(column) for column in zip(*parts, strict=True))
        on, off = _seconds(onset, self.frame_seconds), _seconds(offset, self.frame_seconds)
        if self.duration is not None:
            on, off = np.minimum(on, self.duration), np.minimum(off, self.duration)
        length = off - on
        keep = np.flatnonzero((length > 0) & (length >= self.rule.min_duration - self._eps))
        keep = keep[np.lexsort((label[keep], on[keep]))]
        return list(map(Event, label[keep].tolist(), on[keep].tolist(), off[keep].tolist(), peak[keep].tolist()))


def _seconds(frames, frame_seconds: float):
    """Frame starts in seconds, rounded to the nanosecond so 7 frames of 0.1 s read 0.7, not 0.7000000000000001."""
    return np.round(np.asarray(frames, dtype=np.float64) * frame_seconds, 9)


def detect_events(
    scores: np.ndarray, frame_seconds: float, rule: EventRule = EventRule(), duration: float | None = None
) -> list[Event]:
    """Events of a whole (T, C) score array: an EventTracker over all frames at once, sorted by (onset, label)."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise TaggerError(f"frame scores have shape {scores.shape}; expected (frames, classes)")
    tracker = EventTracker(scores.shape[1], frame_seconds, rule, duration)
    return sorted(tracker.update(scores) + tracker.finish(), key=lambda event: (event.onset, event.label))
