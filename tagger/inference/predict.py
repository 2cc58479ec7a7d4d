"""Tag files, folders and long recordings: clip scores, sliding windows, events, embeddings.

Each file is scored in one of two ways. A clip the model takes whole is loaded, padded if it is shorter than
the network allows, and batched with other files of the same length (padding across lengths would change the
scores, so only equal lengths share a batch). A file that is too long for the model, longer than
`WHOLE_FILE_SECONDS`, or asked for with --window, is streamed in windows: memory is bounded by a window plus a
decoding block, whatever the file's length. Events come from frame-level outputs where the model has them
and from the window scores otherwise, stitched across window boundaries before thresholding.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from tagger import audio
from tagger.data.clips import Clips, FileAudio
from tagger.data.manifests import AUDIO_EXTENSIONS
from tagger.errors import TaggerError
from tagger.inference.events import Event, EventRule, EventTracker, Stitcher
from tagger.inference.runtime import Scorer, Wave

AGGREGATES = ("mean", "max")
WHOLE_FILE_SECONDS = 120.0  # longer files are windowed even for fully convolutional models, to bound memory
LONG_WINDOW = (10.0, 5.0)  # window and hop for those files
EVENT_WINDOW = (2.0, 0.5)  # window and hop giving clip-level models a time axis for --events
AUTO_HOP_FRACTION = 0.25  # hop = window / 4 when a file is cut to the model's own window (hear21passt's scene hop too)
TIMELINE_COLUMNS = 4000  # the plotted timeline is max-pooled to at most this many columns


@dataclass(frozen=True)
class PredictOptions:
    """What to compute; the defaults tag each file as a whole."""

    window: float | None = None
    hop: float | None = None
    aggregate: str = "mean"
    per_window: bool = False
    events: EventRule | None = None
    timeline: bool = False  # keep a score timeline: for plots, and frame scores for event metrics
    timeline_columns: int | None = TIMELINE_COLUMNS  # max-pool a longer timeline to this many rows; None: every frame
    batch_size: int = 8
    clip_seconds: float | None = None  # crop/pad every file to this length first (evaluation protocols)
    block_seconds: float = 30.0

    @property
    def wants_time(self) -> bool:
        """Whether scores over time are needed (events or a timeline)."""
        return self.events is not None or self.timeline

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise TaggerError(f"--aggregate {self.aggregate!r} is not one of {', '.join(AGGREGATES)}")
        if self.batch_size < 1:
            raise TaggerError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.hop is not None and self.window is None:
            raise TaggerError("--hop needs --window")
        for name in ("window", "hop", "clip_seconds"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise TaggerError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}")
        if self.window is not None and self.hop is not None and self.hop > self.window:
            raise TaggerError(f"--hop {self.hop} is longer than --window {self.window}; windows would skip audio")


@dataclass
class WindowResult:
    start: float
    end: float
    probabilities: np.ndarray
    embedding: np.ndarray


@dataclass
class FileResult:
    """Scores for one input file. `window`/`hop` are None when the file was scored in one pass."""

    path: Path
    duration: float
    probabilities: np.ndarray  # (C,) clip level: one pass, or the --aggregate of the windows
    logits: np.ndarray  # (C,) one pass, or the mean over windows (for logit-averaging ensembles)
    embedding: np.ndarray  # (D,) one pass, or the mean over windows
    window: float | None = None
    hop: float | None = None
    windows: list[WindowResult] = field(default_factory=list)
    events: list[Event] | None = None
    timeline: np.ndarray | None = None  # (T, C) scores over time, pooled
    timeline_seconds: float = 0.0  # spacing of timeline rows
    event_rule: EventRule | None = None  # how `events` were found (thresholds, filter, gaps, lengths)


@dataclass
class FileError:
    path: Path
    message: str


# ------------------------------------------------------------------------------------------------- inputs


def expand_inputs(items: Iterable[str | Path]) -> tuple[list[Path], list[FileError]]:
    """Files as given, folders searched recursively for audio, globs expanded; problems listed, not raised."""
    files: list[Path] = []
    problems: list[FileError] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
            if not found:
                problems.append(FileError(path, f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not found:
                problems.append(FileError(path, "the pattern matches no files"))
            files.extend(found)
        else:
            problems.append(FileError(path, "not found; check the path"))
    return files, problems


# ------------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Plan:
    window: float | None  # None: one pass over the whole (cropped) clip
    hop: float | None
    note: str = ""


def plan_file(tagger: Scorer, duration: float, options: PredictOptions) -> _Plan:
    """Whole clip or windows, and which windows; `note` says why windows were chosen when the user did not."""
    if options.window is not None:
        return _Plan(options.window, options.hop or options.window / 2)
    if options.clip_seconds is not None:
        duration = options.clip_seconds
    rate = tagger.sample_rate
    policy = tagger.policy
    if (options.events is not None or options.timeline) and not tagger.frame_level:
        return _Plan(*EVENT_WINDOW, note="the model has no frame-level output; its time axis comes from "
                     f"{EVENT_WINDOW[0]:g} s windows every {EVENT_WINDOW[1]:g} s (set --window/--hop)")
    samples = duration * rate
    if policy.window_samples is not None and samples > policy.window_samples:
        window = policy.window_samples / rate
        return _Plan(window, window * AUTO_HOP_FRACTION,
                     note=f"{duration:.2f} s is longer than the model's {window:.2f} s input; scoring windows of "
                     f"{window:.2f} s every {window * AUTO_HOP_FRACTION:.2f} s (set --window/--hop)")
    if duration > WHOLE_FILE_SECONDS and options.clip_seconds is None:
        return _Plan(*LONG_WINDOW, note=f"{duration:.0f} s file: scoring {LONG_WINDOW[0]:g} s windows every "
                     f"{LONG_WINDOW[1]:g} s to bound memory (set --window/--hop)")
    return _Plan(None, None)


def check_window(tagger: Scorer, options: PredictOptions) -> None:
    """A --window the model cannot take is a mistake in the command, not in a file: refuse it up front."""
    if options.window is None:
        return
    rate, policy = tagger.sample_rate, tagger.policy
    if round(options.window * rate) < policy.min_samples:
        raise TaggerError(f"--window {options.window:g} s is shorter than the model's minimum input "
                          f"{policy.min_samples / rate:.3f} s; use a longer window")
    if policy.max_samples is not None and round(options.window * rate) > policy.max_samples:
        raise TaggerError(f"--window {options.window:g} s is longer than the model takes in one pass "
                          f"({policy.max_samples / rate:.2f} s); use a shorter window")


# ------------------------------------------------------------------------------------------------- scoring


def predict_files(
    tagger: Scorer,
    paths: Iterable[Path],
    options: PredictOptions = PredictOptions(),
    on_error: Callable[[FileError], None] | None = None,
    on_note: Callable[[Path, str], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
    durations: Sequence[float | None] | None = None,
) -> Iterator[FileResult]:
    """Score `paths` in order, yielding one FileResult per readable file.

    Unreadable files go to `on_error` (or raise when it is None). `on_note` hears why a file was windowed;
    `on_progress` is called with seconds of audio done, for progress bars. `durations` are lengths the caller
    already read from the headers (None where it could not), so no header is read twice.
    """
    inputs = [_FileInput(path, durations[i] if durations is not None else None) for i, path in enumerate(paths)]
    for _, result in _predict(tagger, inputs, options, on_error, on_note, on_progress):
        yield result


def predict_clips(
    tagger: Scorer,
    clips: Clips,
    options: PredictOptions = PredictOptions(),
    on_error: Callable[[FileError], None] | None = None,
    on_note: Callable[[Path, str], None] | None = None,
) -> Iterator[tuple[int, FileResult]]:
    """Score every clip of a data set in order, yielding (clip index, result) for each readable clip.

    Loose files (a manifest's) are read as `predict_files` reads them; clips of a stored set (a pack, an HDF5
    file) come from `clips.load` and are windowed in memory, which gives the same windows and scores as the
    same audio in a file. FileError.path is `clips.where(index)`.
    """
    if isinstance(clips.audio, FileAudio):
        paths = clips.audio.paths
        inputs = [_FileInput(Path(paths[i])) for i in range(len(clips))]
    else:
        inputs = [_MemoryInput(partial(clips.load, i), clips.where(i)) for i in range(len(clips))]
    yield from _predict(tagger, inputs, options, on_error, on_note)


def predict_arrays(
    tagger: Scorer,
    waves: Sequence[np.ndarray],
    sample_rate: int,
    options: PredictOptions = PredictOptions(),
    names: Sequence[str] | None = None,
) -> Iterator[FileResult]:
    """Score waveforms held in memory ((S,) float arrays at `sample_rate`, resampled to the model's rate(s)) as
    files of the same audio would be scored. FileResult.path is `names[i]`, else "array-i"."""
    names = [f"array-{i}" for i in range(len(waves))] if names is None else names
    inputs = [_MemoryInput(partial(audio.resample, wave, sample_rate), name)
              for wave, name in zip(waves, names, strict=True)]
    for _, result in _predict(tagger, inputs, options):
        yield result


class _FileInput:
    """A file: its length from the header; a long one is streamed in windows, never held whole."""

    def __init__(self, path, duration: float | None = None):
        self.path, self.known = path, duration

    def duration(self, tagger: Scorer) -> float:
        return audio.info(self.path).duration if self.known is None else self.known

    def read(self, tagger: Scorer) -> Wave:
        return tagger.read(self.path)

    def windows(self, tagger: Scorer, window: float, hop: float, options: PredictOptions):
        if options.clip_seconds is None:
            return tagger.windows(self.path, window, hop, options.block_seconds)
        return tagger.array_windows(tagger.crop(tagger.read(self.path), options.clip_seconds), window, hop)


class _MemoryInput:
    """Audio with no file to stream: a clip of a stored data set, or an array. It is decoded (or resampled) whole,
    once per model rate, and windowed in memory: `audio.array_windows` cuts the windows `iter_windows` would
    stream. `load(rate)` gives the waveform at `rate`."""

    def __init__(self, load: Callable[[int], np.ndarray], name):
        self.load, self.path = load, name
        self.wave: Wave | None = None

    def _decode(self, tagger: Scorer) -> Wave:
        if self.wave is None:
            self.wave = (tuple(self.load(rate) for rate in tagger.rates) if tagger.multirate
                         else self.load(tagger.sample_rate))
        return self.wave

    def duration(self, tagger: Scorer) -> float:
        wave = self._decode(tagger)
        return (wave[0] if tagger.multirate else wave).shape[-1] / tagger.rates[0]

    def read(self, tagger: Scorer) -> Wave:
        wave, self.wave = self._decode(tagger), None  # whoever scores it holds it from here
        return wave

    def windows(self, tagger: Scorer, window: float, hop: float, options: PredictOptions):
        wave = self.read(tagger)
        if options.clip_seconds is not None:
            wave = tagger.crop(wave, options.clip_seconds)
        return tagger.array_windows(wave, window, hop)


_Input = _FileInput | _MemoryInput


def _predict(
    tagger: Scorer,
    inputs: Sequence[_Input],
    options: PredictOptions,
    on_error: Callable[[FileError], None] | None = None,
    on_note: Callable[[Path, str], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> Iterator[tuple[int, FileResult]]:
    """(input index, result) in input order; see `predict_files`."""
    check_window(tagger, options)
    pending = _ClipBatcher(tagger, options)
    done: dict[int, FileResult | None] = {}  # finished, waiting for earlier files; None for a failed file
    windowed: set[int] = set()  # these report their progress window by window
    next_out = 0

    def finished() -> Iterator[tuple[int, FileResult]]:
        nonlocal next_out
        while next_out in done:
            result = done.pop(next_out)
            if result is not None:
                if on_progress is not None and next_out not in windowed:
                    on_progress(result.duration)
                yield next_out, result
            next_out += 1

    for index, item in enumerate(inputs):
        path = item.path
        try:
            duration = item.duration(tagger)
            plan = plan_file(tagger, duration, options)
            if plan.note and on_note is not None:
                on_note(Path(path), plan.note)
            if plan.window is None:
                done.update(pending.add(index, item, duration))
            else:
                done.update(pending.flush())  # earlier clips first, so output keeps the input order
                windowed.add(index)
                done[index] = _score_windows(tagger, item, duration, plan, options, on_progress)
        except TaggerError as error:
            if on_error is None:
                raise
            on_error(FileError(Path(path), str(error).removeprefix(f"{path}: ")))
            done[index] = None
        yield from finished()
    done.update(pending.flush())
    yield from finished()


class _ClipBatcher:
    """Holds whole clips until a batch of equal-length clips is full, so files share forward passes."""

    def __init__(self, tagger: Scorer, options: PredictOptions):
        self.tagger, self.options = tagger, options
        self.buckets: dict[int | tuple[int, ...], list[tuple[int, Path, float, Wave]]] = {}
        self.held = 0

    def add(self, index: int, item: _Input, duration: float) -> dict[int, FileResult]:
        wave = item.read(self.tagger)
        if self.options.clip_seconds is not None:
            wave = self.tagger.crop(wave, self.options.clip_seconds)
            duration = self.options.clip_seconds
        wave = self.tagger.pad(wave)
        length = self.tagger.length(wave)
        bucket = self.buckets.setdefault(length, [])
        bucket.append((index, item.path, duration, wave))
        self.held += 1
        if len(bucket) >= self.options.batch_size:
            return self._run(length)
        if self.held >= 4 * self.options.batch_size:  # many distinct lengths: do not hold the whole folder
            return self.flush()
        return {}

    def flush(self) -> dict[int, FileResult]:
        out: dict[int, FileResult] = {}
        for length in list(self.buckets):
            out.update(self._run(length))
        return out

    def _run(self, length: int | tuple[int, ...]) -> dict[int, FileResult]:
        bucket = self.buckets.pop(length)
        self.held -= len(bucket)
        scores = self.tagger(self.tagger.stack([item[3] for item in bucket]), frames=self.options.wants_time)
        results = {}
        for row, (index, path, duration, _) in enumerate(bucket):
            frames = None if scores.frame_probabilities is None else scores.frame_probabilities[row]
            results[index] = _clip_result(self.tagger, path, duration, scores.probabilities[row],
                                          scores.logits[row], scores.embedding[row], frames, self.options)
        return results


def _clip_result(tagger: Scorer, path: Path, duration: float, probs: np.ndarray, logits: np.ndarray,
                 embedding: np.ndarray, frames: np.ndarray | None, options: PredictOptions) -> FileResult:
    result = FileResult(Path(path), duration, probs, logits, embedding)
    if frames is not None and (options.events is not None or options.timeline):
        step = tagger.frame_seconds
        frames = frames[: max(1, math.ceil(duration / step))]  # drop frames over the zero padding
        if options.events is not None:
            tracker = EventTracker(tagger.num_classes, step, options.events, duration=duration)
            result.events = sorted(tracker.update(frames) + tracker.finish(), key=lambda e: (e.onset, e.label))
            result.event_rule = options.events
        if options.timeline:
            result.timeline, result.timeline_seconds = _pool(frames, step, options.timeline_columns)
    return result


def _score_windows(tagger: Scorer, item: _Input, duration: float, plan: _Plan, options: PredictOptions,
                   on_progress: Callable[[float], None] | None = None) -> FileResult:
    """Score `item` in windows; aggregate clip scores, stitch frame (or window) scores into events."""
    window, hop = plan.window, plan.hop
    if options.clip_seconds is not None:
        duration = options.clip_seconds
    track = _Track(tagger, duration, window, hop, options)
    batch: list[tuple[float, Wave]] = []
    reported = 0.0
    for start, wave in item.windows(tagger, window, hop, options):
        batch.append((start, wave))
        if len(batch) == options.batch_size:
            track.add(batch)
            batch = []
            if on_progress is not None:
                done = min(start + hop, duration)
                on_progress(done - reported)
                reported = done
    if batch:
        track.add(batch)
    if on_progress is not None:
        on_progress(duration - reported)
    return track.result(Path(item.path))


class _Track:
    """Running state of one windowed file: aggregates, per-window rows, the stitched timeline and events."""

    def __init__(self, tagger: Scorer, duration: float, window: float, hop: float, options: PredictOptions):
        self.tagger, self.duration, self.window, self.hop, self.options = tagger, duration, window, hop, options
        self.count = 0
        self.total = np.zeros(tagger.num_classes, np.float64)
        self.logit_total = np.zeros(tagger.num_classes, np.float64)
        self.peak = np.zeros(tagger.num_classes, np.float32)
        self.embedding_total: np.ndarray | None = None
        self.windows: list[WindowResult] = []
        self.events: list[Event] = []
        self.timeline: list[np.ndarray] = []
        wants_time = options.wants_time
        self.frame_step = tagger.frame_seconds if tagger.frame_level else hop
        self.cells = max(1, round(window / hop))  # window-level models: a window covers this many hop cells
        self.stitcher = Stitcher(tagger.num_classes, self.frame_step) if wants_time else None
        self.tracker = (EventTracker(tagger.num_classes, self.frame_step, options.events, duration=duration)
                        if options.events is not None else None)
        columns = options.timeline_columns
        pool = math.ceil(duration / self.frame_step / columns) if options.timeline and columns else 1
        self.pooler = _Pooler(max(1, pool)) if options.timeline else None

    def add(self, batch: list[tuple[float, Wave]]) -> None:
        """Score windows in start order; the shorter last window gets a forward pass of its own."""
        waves = [self.tagger.pad(wave) for _, wave in batch]
        lengths = [self.tagger.length(wave) for wave in waves]
        for length in dict.fromkeys(lengths):  # only the last window can differ, so start order is kept
            rows = [i for i, other in enumerate(lengths) if other == length]
            scores = self.tagger(self.tagger.stack([waves[i] for i in rows]), frames=self.options.wants_time)
            for row, i in enumerate(rows):
                self._add_window(batch[i][0], scores, row)

    def _add_window(self, start: float, scores, row: int) -> None:
        probs, embedding = scores.probabilities[row], scores.embedding[row]
        self.count += 1
        self.total += probs
        self.logit_total += scores.logits[row]
        np.maximum(self.peak, probs, out=self.peak)
        if self.embedding_total is None:  # the embedding size is known from the first window
            self.embedding_total = np.zeros(embedding.shape, np.float64)
        self.embedding_total += embedding
        if self.options.per_window:
            end = min(start + self.window, self.duration)
            self.windows.append(WindowResult(start, end, probs, embedding))
        if self.stitcher is not None:
            if scores.frame_probabilities is not None:
                frames = scores.frame_probabilities[row]
                inside = max(1, math.ceil((self.duration - start) / self.frame_step))
                frames = frames[:inside]
            else:
                frames = np.repeat(probs[None], self.cells, axis=0)
            self._timeline(self.stitcher.add(start, frames))

    def _timeline(self, frames: np.ndarray) -> None:
        if not len(frames):
            return
        if self.tracker is not None:
            self.events.extend(self.tracker.update(frames))
        if self.pooler is not None:
            self.pooler.add(frames)

    def result(self, path: Path) -> FileResult:
        if self.count == 0:
            raise TaggerError(f"{path}: no audio to score")
        if self.stitcher is not None:
            self._timeline(self.stitcher.finish())
        if self.tracker is not None:
            self.events.extend(self.tracker.finish())
        probs = self.peak if self.options.aggregate == "max" else (self.total / self.count).astype(np.float32)
        result = FileResult(path, self.duration, probs, (self.logit_total / self.count).astype(np.float32),
                            (self.embedding_total / self.count).astype(np.float32), self.window, self.hop,
                            self.windows)
        if self.tracker is not None:
            result.events = sorted(self.events, key=lambda e: (e.onset, e.label))
            result.event_rule = self.options.events
        if self.pooler is not None:
            result.timeline = self.pooler.finish()
            result.timeline_seconds = self.frame_step * self.pooler.factor
        return result


class _Pooler:
    """Max-pools a stream of (N, C) frames by `factor`, keeping memory to the pooled timeline."""

    def __init__(self, factor: int):
        self.factor = factor
        self.rows: list[np.ndarray] = []
        self.partial: np.ndarray | None = None

    def add(self, frames: np.ndarray) -> None:
        if self.partial is not None:
            frames = np.concatenate([self.partial, frames])
        whole = len(frames) // self.factor * self.factor
        if whole:
            self.rows.append(frames[:whole].reshape(-1, self.factor, frames.shape[1]).max(axis=1))
        self.partial = frames[whole:] if whole < len(frames) else None

    def finish(self) -> np.ndarray:
        if self.partial is not None and len(self.partial):
            self.rows.append(self.partial.max(axis=0, keepdims=True))
            self.partial = None
        return np.concatenate(self.rows).astype(np.float32) if self.rows else np.zeros((0, 0), np.float32)


def _pool(frames: np.ndarray, step: float, columns: int | None) -> tuple[np.ndarray, float]:
    pooler = _Pooler(max(1, math.ceil(len(frames) / columns)) if columns else 1)
    pooler.add(frames)
    return pooler.finish(), step * pooler.factor
