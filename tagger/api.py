"""The public Python API: load a model, tag audio, embed it; import, train and evaluate as the CLI does.

Everything a library user needs is here and exported from `tagger` (see docs/api.md); every other module is
internal and may change. The CLI calls these same functions, so a script and a command give the same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tagger.errors import TaggerError
from tagger.inference.events import EventRule
from tagger.inference.predict import FileResult, PredictOptions, expand_inputs, predict_arrays, predict_files
from tagger.inference.runtime import Scorer

__all__ = ["Event", "EventRule", "Label", "ModelInfo", "Prediction", "Tagger", "evaluate", "import_checkpoint", "info",
           "load", "resume", "store_event_rule", "teach", "train"]

Audio = str | Path | np.ndarray


@dataclass(frozen=True)
class Label:
    """One class and its score (a probability: sigmoid for multi-label models, softmax for single-label ones)."""

    name: str
    id: str
    score: float

    def __str__(self) -> str:
        return f"{self.name} {self.score:.3f}"


@dataclass(frozen=True)
class Event:
    """A class sounding from `onset` to `offset` seconds; `score` is its highest frame score."""

    name: str
    id: str
    onset: float
    offset: float
    score: float

    def __str__(self) -> str:
        return f"{self.name} {self.onset:.2f}-{self.offset:.2f} s ({self.score:.3f})"


@dataclass(frozen=True)
class Prediction:
    """What a model says about one clip.

    labels: the best `top_k` classes (all with top_k=0), best first, only those >= threshold when one was given.
    scores: every class's score, in the model's label order (`Tagger.labels`).
    events: detected events, by onset; None unless asked for with events=...
    embedding: the clip embedding (D,); None unless asked for with embedding=True.
    """

    source: str
    duration: float
    labels: list[Label]
    scores: np.ndarray
    events: list[Event] | None = None
    embedding: np.ndarray | None = None

    def __str__(self) -> str:
        lines = [f"{self.source} ({self.duration:.2f} s)"]
        width = max((len(label.name) for label in self.labels), default=0)
        lines += [f"  {label.name:<{width}}  {label.score:.3f}" for label in self.labels]
        if self.events is not None:
            lines.append(f"  events: {len(self.events) or 'none'}")
            lines += [f"    {event}" for event in self.events]
        return "\n".join(lines)


class Tagger:
    """A loaded model (a tagger checkpoint or an ensemble) ready to tag audio files and arrays.

    Make one with `tagger.load`. `labels` are the class names in score order, `sample_rate` the rate the model
    works at (arrays at another rate are resampled).
    """

    def __init__(self, scorer: Scorer):
        self._scorer = scorer

    @property
    def labels(self) -> list[str]:
        return [self._scorer.labels.name_of(i) for i in range(self._scorer.num_classes)]

    @property
    def label_ids(self) -> list[str]:
        return [self._scorer.labels.id_of(i) for i in range(self._scorer.num_classes)]

    @property
    def sample_rate(self) -> int:
        return self._scorer.sample_rate

    @property
    def frame_level(self) -> bool:
        """Whether events come from the model's own frame scores (else from windows of 2 s every 0.5 s)."""
        return self._scorer.frame_level

    @property
    def source(self) -> str:
        return self._scorer.source

    @property
    def device(self) -> str:
        return str(self._scorer.device)

    @property
    def event_rule(self) -> EventRule | None:
        """The event rule stored with the model (`store_event_rule`), thresholds in `labels` order; None if none.
        `predict(events=True)` uses it."""
        return self._scorer.event_rule

    @property
    def info(self) -> ModelInfo:
        """What the model file is and where its weights came from (`tagger.api.info`; reads the file again)."""
        return info(self.source)

    def __repr__(self) -> str:
        rule = ", stored event rule" if self._scorer.event_record is not None else ""
        return (f"Tagger({self.source!r}: {self._scorer.model.arch or 'ensemble'}, {len(self.labels)} classes, "
                f"{self.sample_rate} Hz, {self.device}{rule})")

    def predict(self, audio: Audio | Sequence[Audio], sample_rate: int | None = None, top_k: int = 5,
                threshold: float | None = None, events: bool | EventRule = False, embedding: bool = False,
                window: float | None = None, hop: float | None = None, batch_size: int = 8,
                ) -> Prediction | list[Prediction]:
        """Tag audio: a file path, a 1-D float array, or many of them (a list, a folder, a glob, a 2-D array of
        equal-length clips). One input gives one Prediction, many give a list in input order.

        sample_rate: the rate of arrays (default: the model's). top_k=0 keeps every label. events=True detects
        events with the rule stored with the model (`event_rule`), else with the CLI's defaults (on at 0.5, off
        below 0.25, at least 0.1 s); an EventRule sets them.
        window/hop: score sliding windows of this many seconds (long files are windowed anyway).
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise TaggerError(f"top_k must be 0 (all) or more, got {top_k!r}")
        if events is True:
            rule = self._scorer.event_rule or EventRule()
        else:
            rule = events or None
        options = PredictOptions(window=window, hop=hop, events=rule, batch_size=batch_size)
        single, results = self._score(audio, sample_rate, options)
        predictions = [self._prediction(result, top_k, threshold, embedding) for result in results]
        return predictions[0] if single else predictions

    def embed(self, audio: Audio | Sequence[Audio], sample_rate: int | None = None) -> np.ndarray:
        """The clip embedding: (D,) for one input, (N, D) for many (as `predict` counts inputs)."""
        single, results = self._score(audio, sample_rate, PredictOptions())
        rows = [result.embedding for result in results]
        return rows[0] if single else np.stack(rows)

    # ---- internals

    def _score(self, audio, sample_rate: int | None, options: PredictOptions) -> tuple[bool, list[FileResult]]:
        """(whether the input was one clip, its results)."""
        rate = self.sample_rate if sample_rate is None else sample_rate
        if _is_array(audio):
            array = _as_float_array(audio)
            if array.ndim == 1:
                return True, list(predict_arrays(self._scorer, [array], rate, options))
            if array.ndim == 2:
                return False, list(predict_arrays(self._scorer, list(array), rate, options))
            raise TaggerError(f"an array of shape {array.shape}: give (samples,) or (clips, samples)")
        if isinstance(audio, (str, Path)):
            single = Path(audio).is_file()
            return single, self._score_files([audio], options)
        items = list(audio)
        arrays = {k: _as_float_array(item) for k, item in enumerate(items) if _is_array(item)}
        if not arrays:
            return False, self._score_files(items, options)
        if any(a.ndim != 1 for a in arrays.values()):
            raise TaggerError("give a list of 1-D arrays (one per clip)")
        files = {k: item for k, item in enumerate(items) if k not in arrays}
        for item in files.values():
            if not Path(item).is_file():
                raise TaggerError(f"{item}: in a list that also holds arrays, give files (not folders or patterns)")
        results = dict(zip(arrays, predict_arrays(self._scorer, list(arrays.values()), rate, options,
                                                  names=[f"array-{k}" for k in arrays]), strict=True))
        results.update(zip(files, self._score_files(list(files.values()), options), strict=True))
        return False, [results[k] for k in range(len(items))]

    def _score_files(self, items: Iterable[str | Path], options: PredictOptions) -> list[FileResult]:
        files, problems = expand_inputs(items)
        if problems:
            raise TaggerError(f"{problems[0].path}: {problems[0].message}")
        return list(predict_files(self._scorer, files, options))

    def _prediction(self, result: FileResult, top_k: int, threshold: float | None, embedding: bool) -> Prediction:
        labels, scores = self._scorer.labels, result.probabilities
        order = np.argsort(-scores, kind="stable")
        if top_k:
            order = order[:top_k]
        picked = [Label(labels.name_of(int(i)), labels.id_of(int(i)), float(scores[i])) for i in order
                  if threshold is None or scores[i] >= threshold]
        events = None
        if result.events is not None:
            events = [Event(labels.name_of(e.label), labels.id_of(e.label), e.onset, e.offset, float(e.peak))
                      for e in result.events]
        return Prediction(str(result.path), result.duration, picked, scores, events,
                          result.embedding if embedding else None)


@dataclass(frozen=True)
class ModelInfo:
    """What a model file is (`tagger info`, `Tagger.info`): its architecture and outputs, how it was made, and
    where its weights came from with the licence their authors state. An ensemble lists its members.

    made: how the weights were made, in words. licence: the weights' licence in words ("none recorded" for weights
    tagger trained from scratch). source: the provenance the file records (family, file, sha256, size, imported,
    licence, code_licence, licence_source; release and url when pulled; "derived": the steps since), or None.
    event_rule: the stored event rule, in words, or None.
    """

    path: str
    kind: str  # "checkpoint" or "ensemble"
    arch: str
    family: str
    classes: int
    sample_rate: int
    frame_output: bool
    task: str
    parameters: int
    model_kwargs: dict
    made: str
    licence: str
    source: dict | None
    event_rule: str | None = None
    members: tuple[ModelInfo, ...] = ()

    def to_dict(self) -> dict:
        """Plain data for JSON; members nested."""
        row = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "members"}
        if self.kind == "ensemble":
            row["members"] = [member.to_dict() for member in self.members]
        return row

    def summary(self) -> dict[str, str]:
        """One row of short texts, for a table."""
        return {"path": self.path, "kind": self.kind, "arch": self.arch, "family": self.family,
                "classes": str(self.classes), "sample_rate": str(self.sample_rate),
                "frame_output": "yes" if self.frame_output else "no", "task": self.task,
                "params_M": f"{self.parameters / 1e6:.3f}", "model_kwargs": _compact(self.model_kwargs),
                "made": self.made, "licence": self.licence, "licence_source": _licence_sources(self.source),
                "provenance": _provenance_text(self.source),
                "event_rule": self.event_rule or "none"}


def info(model: str | Path | None = None) -> ModelInfo:
    """Describe a tagger checkpoint or ensemble (.pt), or a pulled release by name; None: the default model."""
    from tagger.checkpoint import load_model
    from tagger.ensemble.store import FORMAT as ENSEMBLE_FORMAT
    from tagger.inference.runtime import default_checkpoint, model_path

    path = default_checkpoint() if model is None else model_path(model)
    built, meta = load_model(path)
    if meta.get("format") == ENSEMBLE_FORMAT:
        sources = meta.get("sources") or [f"member {k + 1}" for k in range(len(meta["members"]))]
        members = tuple(_model_info(m, member_meta, str(where))
                        for m, member_meta, where in zip(built.members, meta["members"], sources, strict=True))
        return _ensemble_info(built, meta, str(path), members)
    return _model_info(built, meta, str(path))


def _model_info(model, meta: dict, path: str) -> ModelInfo:
    from tagger.inference.events import RULE_KEY, describe_record
    from tagger.models import has_frame_output

    source = meta.get("source") or None
    rule = meta.get(RULE_KEY)
    return ModelInfo(path, "checkpoint", meta["arch"], model.family, len(meta["labels"]), model.sample_rate,
                     has_frame_output(model), meta.get("task", "multilabel"),
                     sum(p.numel() for p in model.parameters()), dict(meta.get("model_kwargs") or {}),
                     _made(meta.get("train") or {}, source or {}), _licence_text(source), source,
                     describe_record(rule) if rule else None)


def _ensemble_info(model, meta: dict, path: str, members: tuple[ModelInfo, ...]) -> ModelInfo:
    from tagger.checkpoint import derived_source
    from tagger.inference.events import RULE_KEY, describe_record

    rule = meta.get(RULE_KEY)
    source = derived_source([m.source for m in members], {"how": "prediction ensemble",
                                                          "from": [m.path for m in members]})
    weights = ", ".join(f"{w:.3g}" for w in meta.get("weights") or [])
    made = f"prediction ensemble of {len(members)} checkpoints ({meta.get('combine')}, weights {weights})"
    families = " + ".join(dict.fromkeys(m.family for m in members))
    return ModelInfo(path, "ensemble", "ensemble", families, len(meta["labels"]), model.sample_rate,
                     bool(model.frame_level), meta.get("task", "multilabel"),
                     sum(p.numel() for p in model.parameters()), dict(model.model_kwargs), made,
                     _licence_text(source), source, describe_record(rule) if rule else None, members)


def _made(train: dict, source: dict) -> str:
    """How a checkpoint's weights were made, from its training record."""
    if train.get("imported_from"):
        text = f"imported from {train['imported_from']} ({train.get('family', '?')} checkpoint)"
        if source.get("imported"):
            text += f" on {str(source['imported'])[:10]}"
        return text + (f"; the release {source['release']}" if source.get("release") else "")
    if train.get("averaged"):
        sources = train["averaged"].get("sources") or []
        return f"weight average of {len(sources)} checkpoints: {', '.join(map(str, sources))}"
    if "epoch" not in train:
        return "not recorded"
    config = train.get("config") or {}
    model, optim, data = (config.get(k) or {} for k in ("model", "optim", "data"))
    metric = train.get("metric") or ""
    metrics = train.get("metrics") or {}
    value = metrics.get({"loss": "valid_loss", "frame_loss": "valid_frame_loss"}.get(metric, metric))
    parts = [f"trained by tagger to epoch {train['epoch']:g}" if isinstance(train["epoch"], (int, float))
             else f"trained by tagger to epoch {train['epoch']}"]
    if isinstance(value, (int, float)):
        parts.append(f"valid {metric} {value:.4g}")
    parts.append(f"from {model.get('init') or 'random weights'}")
    if optim:
        parts.append(f"{optim.get('name', '?')} lr {optim.get('lr', '?')}, batch {data.get('batch_size', '?')}, "
                     f"{data.get('clip_seconds', '?')} s clips")
    teacher = (config.get("loss") or {}).get("teacher")
    if teacher:
        parts.append(f"distilled from {teacher}")
    return "; ".join(parts)


def _licence_text(source: dict | None) -> str:
    if not source:
        return "none recorded (no imported weights in its history)"
    weights, code = source.get("licence", "unknown"), source.get("code_licence")
    if code is None or code == weights:
        return f"{weights} (weights{' and code' if code else ''})"
    return f"{weights} (weights); code {code}"


def _licence_sources(source: dict | None) -> str:
    """Where the licences were read (weights/licences.py), once per distinct source."""
    if not source:
        return ""
    files = source.get("sources") if isinstance(source.get("sources"), list) else [source]
    return "; ".join(dict.fromkeys(str(one["licence_source"]) for one in files if one.get("licence_source")))


def _provenance_text(source: dict | None) -> str:
    """Where the weights came from, in one line: the official file(s), then the steps since."""
    if not source:
        return "none recorded"
    files = source.get("sources") if isinstance(source.get("sources"), list) else [source]
    texts = []
    for one in files:
        size = f", {one['size']:,} bytes" if isinstance(one.get("size"), int) else ""
        text = f"{one.get('file', '?')} ({one.get('family', '?')}{size}), sha256 {one.get('sha256', '?')}"
        if one.get("release"):
            text += f", release {one['release']}"
        if one.get("url"):
            text += f" from {one['url']}"
        texts.append(text)
    steps = []
    for step in source.get("derived") or []:
        origin = step.get("from") if isinstance(step, dict) else None
        origin = ", ".join(map(str, origin)) if isinstance(origin, list) else origin
        how = step.get("how", "?") if isinstance(step, dict) else str(step)
        steps.append(f"{how} from {origin}" if origin else how)
    return "; ".join(texts) + "".join(f"; then {step}" for step in steps)


def _compact(value: dict) -> str:
    return ", ".join(f"{key}={item}" for key, item in value.items())


def load(model: str | Path | None = None, device: str = "auto", precision: str = "fp32",
         short_input: str | None = None, long_input: str | None = None) -> Tagger:
    """Load a tagger checkpoint or ensemble (.pt), or a release `tagger pull` fetched ("efficientat-mn10"), for
    tagging; None loads the default model ($TAGGER_MODEL, or the one `tagger pull` made the default).

    device: auto, cpu or cuda. precision: fp32, bf16 or fp16 (autocast). short_input / long_input: how the
    model takes clips shorter or longer than its input where the family has a choice (`tagger predict --help`).
    """
    settings = {k: v for k, v in (("short_input", short_input), ("long_input", long_input)) if v is not None}
    return Tagger(Scorer.load(model, device=device, precision=precision, input_settings=settings or None))


def store_event_rule(checkpoint: str | Path, rule: EventRule | str | Path | None) -> Path:
    """Store an event rule in a checkpoint or ensemble file (or a pulled release's, by name), in place and
    atomically: `predict --events`, `evaluate --strong` and `Tagger.predict(events=True)` then use it whenever no
    event option is given. `rule`: a rule file from `tagger evaluate --strong --tune-rule`, an EventRule (one
    threshold, or one per class in the model's label order), or None to remove the stored rule. Returns the file."""
    from tagger.inference.runtime import store_event_rule as store

    return store(checkpoint, rule)


def import_checkpoint(family: str, path: str | Path, out: str | Path, arch: str | None = None,
                      labels: str | Path | None = None, task: str = "multilabel", force: bool = False):
    """Convert an official checkpoint file (panns, psla, efficientat, ast, passt, htsat) into a tagger checkpoint
    at `out`; `labels` names the classes (class_labels_indices.csv; AudioSet's 527 by default). Returns what was
    written: out, arch, num_classes, parameters and notes."""
    from tagger.labels import LabelSet
    from tagger.weights.importing import import_checkpoint as convert

    label_set = LabelSet.from_csv(labels) if labels is not None else None
    return convert(family, path, out, arch=arch, labels=label_set, task=task, force=force)


def train(train: str | Path | None, valid: str | Path, out: str | Path, arch: str | None = None,
          recipe: str | Path | None = None, overrides: Sequence[str] = (), labels: str | Path | None = None,
          train_folds: Sequence[int] | None = None, valid_folds: Sequence[int] | None = None,
          audio_dir: str | Path | None = None, strong: str | Path | None = None,
          valid_strong: str | Path | None = None, strong_label_map: str | Path | None = None,
          teacher_targets: str | Path | None = None, show_progress: bool = True):
    """Train a model as `tagger train` does: a recipe (shipped name or TOML) and `section.key=value` overrides
    make the config; `train`/`valid` are manifests, packs, HDF5 files or feature stores. `strong` (and
    `valid_strong`) are strong-label files (DCASE TSV, AudioSet-Strong TSV, predict --events output) for those
    clips: the model's frame output learns them too. With `strong` and no `train`, the annotated clips (found in
    `audio_dir`) are the training set. `teacher_targets`: a folder `teach` wrote; each item replays one of its
    stored draws and distils from that draw's logits (loss.teacher_targets; loss.kd_lambda=0 is KD alone).
    Returns a TrainResult (run_dir, epochs, steps, best, metric, last_metrics, stop_reason, seconds); checkpoints
    are in run_dir."""
    from tagger.training import trainer
    from tagger.training.config import build_config
    from tagger.training.frames import strong_manifest

    if teacher_targets is not None:  # absolute, so that --resume finds it from any folder
        overrides = [*overrides, f"loss.teacher_targets={Path(teacher_targets).resolve()}"]
    config = build_config(None if recipe is None else str(recipe), list(overrides), arch)
    valid_dir = audio_dir
    if train is None:
        if strong is None or audio_dir is None:
            raise TaggerError("give the training clips (--train), or a strong-label file (--strong) and the folder "
                              "of its audio (--audio-dir)")
        train = strong_manifest(strong, audio_dir, Path(out) / "strong-train.csv", strong_label_map)
        valid_dir = None  # --audio-dir was the annotation's folder; the validation manifest keeps its own
    return trainer.train(config, trainer.data_spec(train, _folds(train_folds), audio_dir, strong, strong_label_map),
                         trainer.data_spec(valid, _folds(valid_folds), valid_dir, valid_strong, strong_label_map),
                         out, labels, show_progress=show_progress)


def teach(teacher: str | Path, data: str | Path, out: str | Path, crops: int = 10, top_k: int = 20, seed: int = 0,
          clip_seconds: float = 10.0, gain_db: int = 0, batch_size: int = 32, device: str = "auto",
          precision: str = "fp32", shard_size: int = 1000, workers: int = 2, shard: str | None = None,
          on_progress: Callable[[int, int], None] | None = None, **options: Any):
    """Consistent teacher targets, as `tagger teach` makes them: `teacher` (a checkpoint, an ensemble file or a
    pulled release's name) scores `crops` random draws (crop of `clip_seconds`, gain of an integer dB in
    [-gain_db, gain_db - 1]) of every clip of `data` (a manifest, folder, pack or AudioSet HDF5 file), and the
    folder `out` keeps each draw's parameters and the teacher's `top_k` largest logits. Resumable: finished shards
    are kept, a rerun with other settings is refused. `shard="K/N"`: only part K of N (N jobs, one folder, as
    `tagger pack --shard`). Further options open `data`: manifest_format, folds, split, audio_dir. Returns a
    TeachResult (out, shards, written, already, clips, unreadable, complete, total_clips,
    seconds); train on it with `train(..., teacher_targets=out)`."""
    from tagger.data.clips import open_clips
    from tagger.jobs import parse_part
    from tagger.training.teach import teach as run

    part = parse_part(shard)
    manifest_format = options.pop("manifest_format", "auto")
    clips = open_clips(data, manifest_format, **options)
    return run(teacher, clips, out, crops=crops, k=top_k, seed=seed, clip_seconds=clip_seconds, gain_db=gain_db,
               shard_size=shard_size, batch_size=batch_size, workers=workers, device=device, precision=precision,
               part=part, on_progress=on_progress)


def resume(run_dir: str | Path, show_progress: bool = True):
    """Continue the training run in `run_dir` exactly where it stopped; a TrainResult as `train` returns."""
    from tagger.training import trainer

    return trainer.resume(run_dir, show_progress)


def evaluate(model: str | Path | Tagger | None, data: str | Path, labels: str | Path | None = None,
             clip_seconds: float | None = None, batch_size: int = 8, device: str = "auto", precision: str = "fp32",
             on_progress: Callable[[int, int], None] | None = None, **options: Any):
    """Score a labelled data set (a manifest in any format, a folder, a pack or an AudioSet HDF5 file) as
    `tagger evaluate` does. Returns an EvaluationResult: metrics (mAP, mAUC, d', lwlrap; accuracy for single-label
    sets), per_class rows, and the ids, probabilities, logits and targets. Further options: manifest_format,
    folds, split, audio_dir, on_error ("fail" or "skip"), on_skip, on_note."""
    from tagger.evaluation.evaluate import evaluate as run

    scorer = model._scorer if isinstance(model, Tagger) else Scorer.load(model, device=device, precision=precision)
    return run(scorer, data, labels=labels, clip_seconds=clip_seconds, batch_size=batch_size,
               on_progress=on_progress, **options)


def _folds(folds: Sequence[int] | None) -> list[int] | None:
    return None if folds is None else [int(f) for f in folds]


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or type(value).__module__.startswith("torch")


def _as_float_array(value) -> np.ndarray:
    """Float32 samples; a torch tensor is moved to the CPU, integer PCM is refused (its scale is ambiguous)."""
    if not isinstance(value, np.ndarray):
        value = value.detach().cpu().numpy()
    if not np.issubdtype(value.dtype, np.floating):
        raise TaggerError(f"audio arrays must hold float samples in [-1, 1], got {value.dtype}; divide integer PCM "
                          "by its full scale (32768 for int16)")
    value = np.asarray(value, dtype=np.float32)
    if not np.isfinite(value).all():
        raise TaggerError("the audio array holds NaN or infinite samples")
    return value
