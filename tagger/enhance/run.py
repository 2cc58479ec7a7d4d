"""`tagger enhance-labels` as a library call: teacher scores (cached by clip id), the PSLA rules, the outputs.

The teacher is a tagger checkpoint, run over the data set through `evaluate` (so each clip is read exactly as
`tagger predict` reads it), or a predictions file that `tagger evaluate --save-predictions` wrote. Scores of a
checkpoint are cached in an evaluate-style predictions file with the checkpoint's fingerprint, so a rerun with
other thresholds, or on a manifest with a few new clips, scores only what it has not seen. A manifest is written
again in its own format; a stored set (a pack, an AudioSet HDF5 file) keeps its audio and labels, so its corrected
labels go to an `id,labels` CSV.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagger.data.clips import Clips, from_examples
from tagger.data.manifests import MANIFEST_FORMATS, Manifest, write_manifest_like
from tagger.enhance.rules import FIXES, Additions, Hierarchy, class_thresholds, enhance
from tagger.errors import TaggerError
from tagger.evaluation.evaluate import EvaluationResult, label_mapper, load_predictions
from tagger.inference.predict import FileError
from tagger.labels import LabelSet, Ontology
from tagger.training.teacher_targets import teacher_fingerprint

CACHE_NAME = "teacher_scores.npz"
_SHOWN = 5
_CHUNK = 512  # clips per evaluate call: the unit of progress that an interrupted run keeps
_SAVE_SECONDS = 120.0


@dataclass
class TeacherScores:
    """A teacher's outputs on clips, by clip id; columns follow `labels`."""

    labels: LabelSet
    task: str
    ids: list[str]
    probabilities: np.ndarray  # (N, C) float32
    logits: np.ndarray  # (N, C) float32
    source: str
    scored_now: int = 0  # clips the checkpoint scored in this run (the rest came from the cache)
    skipped: list[FileError] = field(default_factory=list)

    def rows(self) -> dict[str, int]:
        return {clip: i for i, clip in enumerate(self.ids)}


def _fingerprint(checkpoint: Path, clip_seconds: float | None) -> str:
    """Changes when the checkpoint file or the way clips are read changes, so stale scores are never reused; the
    teacher's part is the one `tagger teach` records with its targets."""
    return f"{teacher_fingerprint(checkpoint)}|{clip_seconds}"


def _read_cache(cache: Path, fingerprint: str, labels: LabelSet, on_note: Callable[[str], None]):
    """The cached scores when they come from this very teacher; the fingerprint is checked before the big arrays
    are read."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as data:
            stored = str(data["teacher_fingerprint"]) if "teacher_fingerprint" in data.files else ""
        cached = load_predictions(cache, with_metrics=False) if stored == fingerprint else None
    except (TaggerError, ValueError, OSError):
        cached = None
    if cached is None or cached.labels.ids != labels.ids:
        on_note(f"{cache} holds scores of another teacher or clip length; scoring again")
        return None
    return cached


def teacher_scores(
    teacher: str | Path,
    data: Clips | Manifest,
    *,
    mapping: LabelSet | None = None,
    cache: Path | None = None,
    clip_seconds: float | None = None,
    batch_size: int = 8,
    device: str = "auto",
    precision: str = "fp32",
    on_progress: Callable[[int, int], None] | None = None,
    on_note: Callable[[str], None] = lambda text: None,
    check: Callable[[LabelSet], None] | None = None,
) -> TeacherScores:
    """The teacher's scores on the labelled clips of a data set or manifest (only those can gain labels).

    check(labels) runs on the teacher's classes before any clip is scored, so a mismatch fails at once.
    """
    teacher = Path(teacher)
    if not teacher.is_file():
        raise TaggerError(f"teacher {teacher} does not exist; pass a tagger checkpoint (.pt) or a predictions .npz")
    if teacher.suffix.lower() == ".npz":
        saved = load_predictions(teacher, with_metrics=False)
        if check is not None:
            check(saved.labels)
        return TeacherScores(saved.labels, saved.task, saved.ids, saved.probabilities, saved.logits, str(teacher))
    from tagger.inference.runtime import Scorer

    tagger = Scorer.load(teacher, device=device, precision=precision)
    if check is not None:
        check(tagger.labels)
    fingerprint = _fingerprint(teacher, clip_seconds)
    cached = _read_cache(cache, fingerprint, tagger.labels, on_note) if cache is not None else None
    known = set(cached.ids) if cached is not None else set()
    clips = data if isinstance(data, Clips) else from_examples(data.examples, data.source, data.format)
    ids, sizes = clips.ids.tolist(), np.diff(clips.table.labels.indptr)
    todo = [row for row, clip in enumerate(ids) if sizes[row] and clip not in known]
    if cached is not None and known:
        on_note(f"{len(known)} clips' teacher scores come from {cache}; {len(todo)} to score")
    skipped: list[FileError] = []
    parts = [cached] if cached is not None else []
    unsaved = False
    last_save = time.monotonic()
    try:
        for start in range(0, len(todo), _CHUNK):
            chunk = clips.subset(todo[start : start + _CHUNK])
            fresh = _score_chunk(tagger, chunk, mapping, clip_seconds, batch_size, skipped, on_progress, start,
                                 len(todo))
            if fresh is not None:
                parts.append(fresh)
                unsaved = True
            # Saving now and then (not after every chunk: the cache may be big) makes a crash cost little.
            if cache is not None and unsaved and time.monotonic() - last_save > _SAVE_SECONDS:
                parts = [_concat(parts)]
                parts[0].save_predictions(cache, extra={"teacher_fingerprint": fingerprint})
                unsaved, last_save = False, time.monotonic()
    finally:  # finished or interrupted (Ctrl-C): keep every score so far, so a rerun resumes
        if cache is not None and unsaved:
            parts = [_concat(parts)]
            parts[0].save_predictions(cache, extra={"teacher_fingerprint": fingerprint})
    if not parts:
        raise TaggerError(f"none of the labelled clips of {clips.source} could be scored by the teacher")
    scores = _concat(parts)
    return TeacherScores(tagger.labels, tagger.task, scores.ids, scores.probabilities, scores.logits, str(teacher),
                         scored_now=len(todo) - len(skipped), skipped=skipped)


def _score_chunk(tagger, chunk, mapping, clip_seconds, batch_size, skipped, on_progress, offset: int, total: int):
    """One chunk through `evaluate`; None when every file of it was unreadable (they are listed in `skipped`)."""
    from tagger.evaluation.evaluate import evaluate

    before = len(skipped)

    def progress(done: int, _: int) -> None:
        if on_progress is not None:
            on_progress(offset + done, total)

    try:
        return evaluate(tagger, chunk, labels=mapping, clip_seconds=clip_seconds, batch_size=batch_size,
                        on_error="skip", on_skip=skipped.append, on_progress=progress)
    except TaggerError:
        if len(skipped) - before == len(chunk):
            return None
        raise


def _concat(parts: list[EvaluationResult]) -> EvaluationResult:
    """One result of several chunks' (same teacher), joined once; metrics are not needed for the cache."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return EvaluationResult({}, [], [i for p in parts for i in p.ids], [q for p in parts for q in p.paths],
                            np.concatenate([p.probabilities for p in parts]), np.concatenate([p.logits for p in parts]),
                            np.concatenate([p.targets for p in parts]), first.labels, first.task, model=first.model,
                            clip_seconds=first.clip_seconds)


@dataclass
class EnhanceSettings:
    threshold: str | float = "mean"
    fallback: float | None = None  # threshold of classes without positives; None: they are never added (PSLA)
    fixes: tuple[str, ...] = FIXES
    single_pass: bool = False  # PSLA's one application of each rule to the original labels


@dataclass
class Enhancement:
    """Everything an enhancement decided, aligned with `manifest.examples` (rows) and `labels` (columns)."""

    manifest: Manifest
    labels: LabelSet  # the teacher's classes: the vocabulary labels are added from
    targets: np.ndarray  # (N, C) bool, before
    scored: np.ndarray  # (N,) bool: clips with teacher scores
    scores: np.ndarray  # (N, C) float32 teacher probabilities (0 where not scored)
    thresholds: np.ndarray  # (C,) NaN = none
    additions: Additions
    hierarchy: Hierarchy
    settings: EnhanceSettings
    new_labels: dict[str, tuple[str, ...]]  # clip id -> all its labels, for the clips that gained some
    teacher: TeacherScores

    @property
    def enhanced(self) -> np.ndarray:
        return self.targets | self.additions.added


def _encode(manifest: Manifest, labels: LabelSet, mapping: LabelSet | None) -> tuple[np.ndarray, bool]:
    """(N, C) bool targets in the teacher's classes, and whether the manifest writes its labels as display names."""
    index = label_mapper(labels, mapping)
    targets = np.zeros((len(manifest.examples), len(labels)), dtype=bool)
    unknown: dict[str, int] = {}
    by_name = mapping is None
    for i, example in enumerate(manifest.examples):
        for label in example.labels:
            k = index(label)
            if k is None:
                unknown[label] = unknown.get(label, 0) + 1
            else:
                targets[i, k] = True
                by_name &= label != labels.ids[k]
    if unknown:
        shown = ", ".join(repr(label) for label in list(unknown)[:_SHOWN])
        more = f" and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else ""
        raise TaggerError(f"the teacher's {len(labels)} classes lack {len(unknown)} labels of {manifest.source}: "
                          f"{shown}{more}; pass --labels with a file mapping them to the teacher's classes, "
                          "or use a teacher trained on this label set")
    return targets, by_name and targets.any()


AUDIOSET_ONTOLOGY = "https://raw.githubusercontent.com/audioset/ontology/master/ontology.json"
_AUDIOSET_ID = re.compile(r"^/[mgt]/[0-9a-z_]+$")  # AudioSet class ids are Freebase-style MIDs: /m/09x0r, /t/dd00004


def missing_ontology(manifest: Manifest) -> str:
    """What to say when no --ontology was given: where AudioSet's comes from when these are AudioSet labels."""
    used = {label for example in manifest.examples for label in example.labels}
    if used and sum(bool(_AUDIOSET_ID.match(label)) for label in used) >= 0.9 * len(used):
        return (f"enhancement needs the class hierarchy, and these are AudioSet labels: download AudioSet's ontology "
                f"({AUDIOSET_ONTOLOGY}) and pass --ontology ontology.json")
    return ("enhancement needs the class hierarchy: pass --ontology ontology.json (AudioSet's) or a CSV of "
            "parent,child rows")


def _check_ontology(targets: np.ndarray, labels: LabelSet, ontology: Ontology, manifest: Manifest) -> None:
    used = [labels.ids[k] for k in np.flatnonzero(targets.any(axis=0))]
    if used and not any(label in ontology for label in used):
        raise TaggerError(f"the ontology {ontology!r} knows none of the {len(used)} classes of {manifest.source} "
                          f"(e.g. {', '.join(used[:3])}); pass the ontology these class ids come from")


def check_inputs(manifest: Manifest, ontology: Ontology, mapping: LabelSet | None = None) -> Callable[[LabelSet], None]:
    """A `check` for `teacher_scores`: every manifest label is a teacher class and the ontology knows them."""

    def check(labels: LabelSet) -> None:
        targets, _ = _encode(manifest, labels, mapping)
        _check_ontology(targets, labels, ontology, manifest)

    return check


def enhance_manifest(manifest: Manifest, teacher: TeacherScores, ontology: Ontology,
                     settings: EnhanceSettings | None = None, mapping: LabelSet | None = None) -> Enhancement:
    """Apply the PSLA rules to a read manifest with the given teacher scores."""
    settings = settings or EnhanceSettings()
    if not manifest.examples:
        raise TaggerError(f"manifest {manifest.source} has no usable clips; nothing to enhance")
    labels = teacher.labels
    targets, by_name = _encode(manifest, labels, mapping)
    if not targets.any():
        raise TaggerError(f"no clip of {manifest.source} has a label, so there is nothing to enhance")
    _check_ontology(targets, labels, ontology, manifest)
    rows = teacher.rows()
    found = np.array([rows.get(e.id, -1) for e in manifest.examples])
    scored = found >= 0
    if not scored.any():
        raise TaggerError(f"the teacher scores {teacher.source} cover none of the clips of {manifest.source} (by id, "
                          f"e.g. {manifest.examples[0].id}); score this manifest with the teacher")
    scores = np.zeros(targets.shape, dtype=np.float32)
    scores[scored] = teacher.probabilities[found[scored]]
    thresholds = class_thresholds(scores[scored], targets[scored], settings.threshold, settings.fallback)
    hierarchy = Hierarchy.build(ontology, labels)
    additions = enhance(targets, scores, hierarchy, thresholds, settings.fixes, settings.single_pass, scored)
    names = labels.names if by_name else labels.ids
    new_labels = {}
    for i in np.flatnonzero(additions.added.any(axis=1)):
        example = manifest.examples[i]
        new_labels[example.id] = tuple(example.labels) + tuple(names[k] for k in np.flatnonzero(additions.added[i]))
    return Enhancement(manifest, labels, targets, scored, scores, thresholds, additions, hierarchy, settings,
                       new_labels, teacher)


def default_paths(manifest: Path, out: Path | None, report: Path | None) -> dict[str, Path]:
    """Where each output goes: the manifest beside its input, AST's `_weight.csv` beside the manifest, the report
    (Markdown, with a per-class CSV of the same stem) and the teacher-score cache beside the manifest."""
    if out is None:
        suffix = ".json" if manifest.suffix.lower() == ".json" else ".csv"
        out = manifest.parent / f"{manifest.stem if manifest.is_file() else manifest.name}-enhanced{suffix}"
    report = report or out.with_name(f"{out.stem}-report.md")
    return {"manifest": out, "weights": out.with_name(f"{out.stem}_weight.csv"), "report": report,
            "report_csv": report.with_suffix(".csv"), "cache": out.parent / CACHE_NAME}


def as_manifest(clips: Clips) -> Manifest:
    """An opened data set as the Manifest the rules and the report read (one Example per clip)."""
    return Manifest(clips.examples(), clips.source, clips.format, list(clips.missing), list(clips.duplicates))


def is_stored(manifest: Manifest) -> bool:
    """Whether the clips come from a stored set (pack, HDF5) rather than a manifest that can be written again."""
    return manifest.format not in MANIFEST_FORMATS


def write_manifest_and_weights(result: Enhancement, manifest_path: Path, weights_path: Path,
                               audio_dir: Path | None = None) -> int:
    """The enhanced manifest and its regenerated sampling weights (AST/PSLA formula, one per row); rows written.

    audio_dir: the --audio-dir the manifest was read with, so relative paths are rewritten correctly.
    A stored set gets the `id,labels` CSV of every clip instead (its audio has no path a manifest could name).
    """
    from tagger.data.sampling import balanced_weights, write_weights_csv

    if is_stored(result.manifest):
        rows = write_labels_csv(result.manifest, result.new_labels, manifest_path)
    else:
        rows = write_manifest_like(result.manifest, result.new_labels, manifest_path, audio_dir)
    vocabulary = sorted({label for row in rows for label in row})
    if vocabulary:
        weights = balanced_weights(LabelSet(vocabulary).encode_many(rows), "ast")
        write_weights_csv(weights, weights_path)
    return len(rows)


def write_labels_csv(manifest: Manifest, new_labels: dict[str, tuple[str, ...]], path: Path) -> list[tuple[str, ...]]:
    """`id,labels` rows of every clip, enhanced where it gained labels, with the label separator the manifest
    readers detect (as in a plain CSV manifest); each row's labels."""
    from tagger.data.manifests import label_cells
    from tagger.fileio import atomic_write_csv

    check_out(manifest, path)
    rows = [tuple(new_labels.get(e.id, e.labels)) for e in manifest.examples]
    cells = label_cells(rows, path)
    atomic_write_csv(path, ("id", "labels"), ([e.id, cell] for e, cell in zip(manifest.examples, cells, strict=True)),
                     delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    return rows


def check_out(manifest: Manifest, path: Path) -> None:
    """Refuse, before the teacher runs, an output name the corrected labels cannot be written to."""
    suffix = path.suffix.lower()
    if is_stored(manifest) and suffix not in (".csv", ".tsv"):
        raise TaggerError(f"{manifest.source} is a stored data set: its corrected labels are an id,labels table; "
                          f"give --out a .csv or .tsv name instead of {path.name}")
    if suffix not in (".json", ".csv", ".tsv"):
        raise TaggerError(f"output manifest {path} must end in .json, .csv or .tsv")


def store_teacher_logits(result: Enhancement, path: Path, top_k: int | None = None) -> int:
    """The teacher's logits on the manifest's scored clips, as `tagger train --set loss.teacher=...` reads them."""
    from tagger.training.data import save_teacher

    rows = result.teacher.rows()
    ids = [e.id for e, ok in zip(result.manifest.examples, result.scored, strict=True) if ok]
    save_teacher(path, ids, result.teacher.logits[[rows[i] for i in ids]], labels=result.labels, top_k=top_k)
    return len(ids)
