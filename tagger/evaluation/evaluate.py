"""Score a labelled data set with a checkpoint: headline metrics, a per-class table and the raw predictions.

The data set is anything `open_clips` opens: a manifest, a pack or an AudioSet HDF5 file. Clips are scored through
`predict_clips`, so evaluation takes each clip exactly as `tagger predict` does: the whole clip by default (cut into
windows when it is longer than the model takes in one pass), or every clip cropped or zero-padded to `clip_seconds`
from its start, as the training validation does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagger.data.clips import Clips, from_examples, open_clips
from tagger.data.manifests import Example, Manifest
from tagger.errors import TaggerError
from tagger.evaluation import metrics
from tagger.inference.predict import FileError, PredictOptions, predict_clips
from tagger.inference.runtime import Scorer
from tagger.labels import LabelSet

ON_ERROR = ("fail", "skip")
PER_CLASS_COLUMNS = ("index", "id", "name", "positives", "AP", "AUC", "d_prime")
PREDICTION_ARRAYS = ("ids", "paths", "probabilities", "logits", "targets", "label_ids", "label_names", "task")


@dataclass
class EvaluationResult:
    """What one evaluation produced. Rows of the arrays follow `ids`, columns follow `labels`."""

    metrics: dict[str, Any]  # clips, skipped, classes, then tagger.evaluation.metrics.summarize
    per_class: list[dict[str, Any]]  # one row per class: PER_CLASS_COLUMNS
    ids: list[str]
    paths: list[Path]
    probabilities: np.ndarray  # (N, C) float32: sigmoid (multilabel) or softmax (multiclass) of the logits
    logits: np.ndarray  # (N, C) float32
    targets: np.ndarray  # (N, C) float32 multi-hot (one-hot for single-label sets)
    labels: LabelSet
    task: str  # the checkpoint's: how probabilities were made from logits
    skipped: list[FileError] = field(default_factory=list)
    model: str = ""
    clip_seconds: float | None = None

    def save_predictions(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the arrays `tagger ensemble` reads (layout in docs/evaluate.md) as one .npz, atomically.

        extra: more named arrays for the caller's own bookkeeping (readers ignore names they do not know).
        """
        from tagger.fileio import atomic_path

        arrays = {
            "ids": np.asarray(self.ids, dtype=str),
            "paths": np.asarray([str(p) for p in self.paths], dtype=str),
            "probabilities": np.asarray(self.probabilities, dtype=np.float32),
            "logits": np.asarray(self.logits, dtype=np.float32),
            "targets": np.asarray(self.targets, dtype=np.float32),
            "label_ids": np.asarray(self.labels.ids, dtype=str),
            "label_names": np.asarray(self.labels.names, dtype=str),
            "task": np.asarray(self.task),
            "model": np.asarray(self.model),
            "clip_seconds": np.asarray(np.nan if self.clip_seconds is None else self.clip_seconds, dtype=np.float64),
            **{name: np.asarray(value) for name, value in (extra or {}).items()},
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        return Path(path)

    def write_per_class(self, path: str | Path) -> Path:
        """The per-class table as CSV (NaN where a class has no positives, or no negatives for AUC), atomically."""
        from tagger.fileio import atomic_write_csv

        atomic_write_csv(path, PER_CLASS_COLUMNS, ([row[c] for c in PER_CLASS_COLUMNS] for row in self.per_class))
        return Path(path)

    def plot(self, path: str | Path, title: str = "") -> Path:
        """PNG: headline metrics, AP of the best and worst classes, and a confusion matrix for single-label sets."""
        from tagger.evaluation.plots import confusion_matrix, plot_evaluation

        confusion = confusion_matrix(self.targets, self.probabilities) if "accuracy" in self.metrics else None
        return plot_evaluation(self.metrics, self.per_class, path, confusion, title or self.model)


def evaluate(
    tagger: Scorer,
    data: str | Path | Clips | Manifest | Sequence[Example],
    *,
    labels: LabelSet | str | Path | None = None,
    manifest_format: str = "auto",
    folds: Sequence[int] | None = None,
    split: str | None = None,
    audio_dir: str | Path | None = None,
    clip_seconds: float | None = None,
    batch_size: int = 8,
    on_error: str = "fail",
    on_skip: Callable[[FileError], None] | None = None,
    on_note: Callable[[Path, str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Score every clip of `data` (a path `open_clips` opens, opened Clips, a read Manifest, or Examples) and
    compute the metrics.

    labels: a label file (or LabelSet) mapping the manifest's label ids/names onto the model's classes, for
        manifests whose vocabulary differs from the checkpoint's (see `label_mapper`).
    on_error: "fail" stops at the first missing or unreadable audio file; "skip" leaves it out, reports it to
        `on_skip` and lists it in the result's `skipped`.
    on_progress(done, total) is called after each file, scored or skipped.
    """
    if on_error not in ON_ERROR:
        raise TaggerError(f"--on-error {on_error!r} is not one of {', '.join(ON_ERROR)}")
    options = PredictOptions(clip_seconds=clip_seconds, batch_size=batch_size)  # checks both values
    clips, examples, missing, source = _clips(data, manifest_format, folds, split, audio_dir)
    skipped: list[FileError] = []

    def skip(problem: FileError) -> None:
        if on_error == "fail":
            raise TaggerError(f"{problem.path}: {problem.message}; fix the file or pass --on-error skip")
        skipped.append(problem)
        if on_skip is not None:
            on_skip(problem)

    if missing:
        if on_error == "fail":
            more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
            raise TaggerError(f"{missing[0].path}: audio file not found{more}, listed in {source}; fix the paths, "
                              "pass --audio-dir, or --on-error skip")
        for example in missing:
            skip(FileError(example.path, "audio file not found"))
    targets = encode_examples(examples, tagger.labels, tagger.task, label_mapper(tagger.labels, labels))

    total, done = len(examples) + len(missing), len(missing)

    def progress_error(problem: FileError) -> None:
        nonlocal done
        skip(problem)
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    kept: list[int] = []
    logits, probabilities = [], []
    for index, result in predict_clips(tagger, clips, options, on_error=progress_error, on_note=on_note):
        kept.append(index)
        logits.append(result.logits)
        probabilities.append(result.probabilities)
        done += 1
        if on_progress is not None:
            on_progress(done, total)
    if not kept:
        raise TaggerError(f"none of the {total} clips of {source} could be scored (see the files listed above)")
    chosen = [examples[i] for i in kept]
    return score(
        targets[kept], np.stack(probabilities), np.stack(logits), tagger.labels, tagger.task,
        ids=[e.id for e in chosen], paths=[Path(e.path) for e in chosen], skipped=skipped,
        model=tagger.source, clip_seconds=clip_seconds,
    )


def score(
    targets: np.ndarray,
    probabilities: np.ndarray,
    logits: np.ndarray | None,
    labels: LabelSet,
    task: str,
    *,
    ids: Sequence[str] | None = None,
    paths: Sequence[str | Path] | None = None,
    skipped: list[FileError] | None = None,
    model: str = "",
    clip_seconds: float | None = None,
) -> EvaluationResult:
    """Metrics and per-class rows of given predictions (an evaluation, a saved .npz, an ensemble's average).

    Single-label sets (every clip exactly one label) get accuracy and top-5 accuracy whatever the checkpoint's
    task; AP, AUC and lwlrap are computed on `probabilities` (for softmax models they differ from the logits').
    """
    targets = np.asarray(targets, dtype=np.float32)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    logits = probabilities if logits is None else np.asarray(logits, dtype=np.float32)
    count = len(probabilities)
    if targets.shape != probabilities.shape or logits.shape != probabilities.shape:
        raise TaggerError(f"targets {targets.shape}, probabilities {probabilities.shape} and logits {logits.shape} "
                          "must have the same (clips, classes) shape")
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
        raise TaggerError(f"predictions have shape {probabilities.shape} but the label set has {len(labels)} classes")
    ids = [str(i) for i in (ids if ids is not None else range(count))]
    paths = [Path(p) for p in (paths if paths is not None else [""] * count)]
    single = bool(count) and bool(np.all((targets > 0.5).sum(axis=1) == 1))
    summary = metrics.summarize(targets, probabilities, "multiclass" if single else "multilabel")
    head = {"clips": count, "skipped": len(skipped or []), "classes": len(labels), "task": task}
    rows = metrics.per_class(targets, probabilities, labels.names)
    per_class = [
        {"index": k, "id": labels.ids[k], "name": labels.names[k], "positives": row["positives"], "AP": row["AP"],
         "AUC": row["AUC"], "d_prime": row["d_prime"]}
        for k, row in enumerate(rows)
    ]
    return EvaluationResult({**head, **summary}, per_class, ids, paths, probabilities, logits, targets, labels, task,
                            list(skipped or []), model, clip_seconds)


def load_predictions(path: str | Path, with_metrics: bool = True) -> EvaluationResult:
    """Read a `--save-predictions` file back, with its metrics recomputed unless `with_metrics` is False (readers
    that only want the scores, e.g. label enhancement's teacher cache, skip AP over every class)."""
    path = Path(path)
    if not path.is_file():
        raise TaggerError(f"predictions file {path} does not exist; write one with tagger evaluate --save-predictions")
    try:
        with np.load(path, allow_pickle=False) as data:
            absent = [name for name in PREDICTION_ARRAYS if name not in data.files]
            if absent:
                raise TaggerError(f"{path}: not a tagger predictions file (no {', '.join(absent)})")
            arrays = {name: data[name] for name in data.files}
    except (ValueError, OSError) as error:
        raise TaggerError(f"{path}: not a readable .npz predictions file ({error})") from None
    clip = float(arrays["clip_seconds"]) if "clip_seconds" in arrays else float("nan")
    labels = LabelSet([str(i) for i in arrays["label_ids"]], [str(n) for n in arrays["label_names"]])
    ids, paths = [str(i) for i in arrays["ids"]], [str(p) for p in arrays["paths"]]
    model, clip_seconds = str(arrays.get("model", "")), None if np.isnan(clip) else clip
    if not with_metrics:
        return EvaluationResult({}, [], ids, [Path(p) for p in paths], arrays["probabilities"], arrays["logits"],
                                arrays["targets"], labels, str(arrays["task"]), model=model, clip_seconds=clip_seconds)
    return score(arrays["targets"], arrays["probabilities"], arrays["logits"], labels, str(arrays["task"]), ids=ids,
                 paths=paths, model=model, clip_seconds=clip_seconds)


def label_mapper(model_labels: LabelSet, mapping: LabelSet | str | Path | None = None) -> Callable[[str], int | None]:
    """A function from a manifest label to the model's class index (None when unknown).

    Without a mapping, a label is a class id or display name of the model. With a label file, a label found in the
    file (by id or name) becomes that file's class, found in the model by its id, else its name, else, when file and
    model have as many classes, by its position (a class_labels_indices.csv for a model imported without labels).
    Labels the file does not list are looked up in the model directly.
    """
    if mapping is not None and not isinstance(mapping, LabelSet):
        mapping = LabelSet.from_csv(mapping)
    cache: dict[str, int | None] = {}

    def in_model(label: str) -> int | None:
        return model_labels.index(label) if label in model_labels else None

    def index(label: str) -> int | None:
        if label in cache:
            return cache[label]
        found = in_model(label)
        if mapping is not None and label in mapping:
            row = mapping.index(label)
            found = in_model(mapping.ids[row])
            if found is None:
                found = in_model(mapping.names[row])
            if found is None and len(mapping) == len(model_labels):
                found = row
        cache[label] = found
        return found

    return index


def encode_examples(examples: Sequence[Example], labels: LabelSet, task: str,
                    index: Callable[[str], int | None] | None = None) -> np.ndarray:
    """(N, C) float32 multi-hot targets in the model's class order, with one-line errors naming the clip."""
    index = index or label_mapper(labels)
    if examples and not any(example.labels for example in examples):
        raise TaggerError(f"no clip has a label (e.g. {examples[0].path}); evaluation needs a labelled manifest")
    label_lists: list[tuple[str, ...]] = []
    unknown: dict[str, Example] = {}
    for example in examples:
        classes = []
        for label in example.labels:
            k = index(label)
            if k is None:
                unknown.setdefault(label, example)
            else:
                classes.append(labels.ids[k])
        classes = list(dict.fromkeys(classes))
        if task == "multiclass" and not unknown and len(classes) != 1:
            raise TaggerError(
                f"{example.path}: {len(classes)} labels ({', '.join(example.labels) or 'none'}), but the model is "
                "single-label (multiclass) and needs exactly one per clip; use a single-label manifest"
            )
        label_lists.append(tuple(classes))
    if unknown:
        label, example = next(iter(unknown.items()))
        shown = ", ".join(labels.names[:5]) + (", ..." if len(labels) > 5 else "")
        more = f" ({len(unknown) - 1} more unknown labels)" if len(unknown) > 1 else ""
        raise TaggerError(
            f"{example.path}: label {label!r} is not one of the model's {len(labels)} classes ({shown}){more}; "
            "pass --labels with a label file that maps the manifest's labels, or use the matching checkpoint"
        )
    return labels.encode_many(label_lists)


def _clips(data, manifest_format: str, folds, split, audio_dir) -> tuple[Clips, list[Example], list[Example], str]:
    """(the clips to score, them as Examples for the label checks, listed but missing ones, a name for messages)."""
    if isinstance(data, (str, Path)):
        from tagger.data.store import is_store

        if is_store(data):
            raise TaggerError(f"{data} is a feature store; evaluate scores audio: pass the manifest it was made from")
        data = open_clips(data, manifest_format, audio_dir=audio_dir, folds=folds, split=split)
    elif folds is not None or split is not None or audio_dir is not None:
        raise TaggerError("folds, split and audio_dir apply when evaluate reads the manifest; pass its path instead")
    if isinstance(data, Clips):
        return data, data.examples(), list(data.missing), str(data.source)
    if isinstance(data, Manifest):
        return from_examples(data.examples, data.source, data.format), list(data.examples), list(data.missing), \
            str(data.source)
    examples = list(data)
    if not examples:
        raise TaggerError("there are no clips to evaluate")
    return from_examples(examples), examples, [], "the given examples"
