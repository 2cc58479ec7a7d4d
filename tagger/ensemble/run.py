"""`tagger ensemble` as a library function: load, check, validate, select, combine or average, write, report."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from tagger.ensemble.members import (
    COMBINE_CHOICES,
    MODES,
    Candidate,
    EnsembleSettings,
    Hooks,
    Validation,
    model_tagger,
    score_tagger,
)
from tagger.errors import TaggerError
from tagger.labels import LabelSet


def run_ensemble(paths: Sequence[str | Path], settings: EnsembleSettings, hooks: Hooks = Hooks()):
    """Build the ensemble (or averaged) checkpoint at settings.out and return its Report."""
    from tagger.ensemble.saved import is_saved_predictions, run_saved
    from tagger.ensemble.selection import parse_selection

    if settings.mode not in MODES:
        raise TaggerError(f"--mode {settings.mode!r} is not one of {', '.join(MODES)}")
    saved = is_saved_predictions(paths)
    defaulted = settings.out is None
    if saved:
        settings.mode = "predictions" if settings.mode == "auto" else settings.mode
        _choose_out(paths, settings, hooks)
        _check_settings(settings, saved)
        return run_saved(paths, settings, hooks)
    selection = parse_selection(settings.select)
    if selection.needs_validation and settings.valid is None:
        raise TaggerError(f"--select {settings.select} ranks checkpoints on validation data: add --valid MANIFEST")
    if defaulted:  # an earlier run's output, caught by the same glob (`ckpts/*.pt`), is not an input
        paths = [p for p in paths if not _is_default_out(p, paths)]
    candidates = load_candidates(paths, settings, hooks)
    if settings.mode == "auto":
        settings.mode, why = suggested_mode(candidates, settings)
        hooks.log(f"--mode {settings.mode}: {why}")
    _choose_out(paths, settings, hooks)
    _check_settings(settings, saved)
    if settings.mode == "weights":
        from tagger.ensemble.averaging import check_compatible

        check_compatible([c.payload for c in candidates], [c.source for c in candidates])
    labels, task = candidates[0].labels, candidates[0].task
    columns = [_columns(c, labels, task) for c in candidates]
    pool = list(range(len(candidates)))  # those the epoch window keeps; the report still lists every checkpoint
    if selection.kind == "epochs":
        from tagger.ensemble.selection import from_epoch

        pool = from_epoch([c.epoch for c in candidates], [c.source for c in candidates], selection.number)
    validation = _read_validation(settings) if settings.valid is not None else None
    if validation is not None:
        for count, index in enumerate(pool):
            _score_candidate(candidates[index], columns[index], task, validation, settings, hooks,
                             f"validating {count + 1}/{len(pool)}")
    if settings.mode == "weights":
        from tagger.ensemble.weights_mode import build_average

        return build_average(candidates, pool, selection, labels, task, validation, settings, hooks)
    from tagger.ensemble.predictions_mode import build_prediction_ensemble

    return build_prediction_ensemble(candidates, pool, selection, labels, task, validation, settings, hooks)


def suggested_mode(candidates: Sequence[Candidate], settings: EnsembleSettings) -> tuple[str, str]:
    """weights for checkpoints of one run (one folder, one architecture and setting, one label set: epochs whose
    parameters can be averaged), predictions for anything else, unless an option belongs to one mode only; with
    the reason, to print."""
    from tagger.ensemble.averaging import check_compatible

    if settings.combine != "auto":
        return "predictions", f"--combine {settings.combine} combines the outputs of the checkpoints"
    if settings.bn_recalibrate is not None:
        return "weights", "--bn-recalibrate re-estimates the statistics of averaged parameters"
    folders = {str(Path(c.source).resolve().parent) for c in candidates}
    if len(candidates) > 1 and len(folders) == 1:
        try:
            check_compatible([c.payload for c in candidates], [c.source for c in candidates])
        except TaggerError:
            pass
        else:
            return "weights", (f"{len(candidates)} checkpoints of one run ({candidates[0].arch} in "
                               f"{Path(candidates[0].source).parent}): their parameters are averaged")
    runs = "one checkpoint" if len(candidates) == 1 else f"checkpoints of {len(folders)} folders or architectures"
    return "predictions", f"{runs}: their outputs are combined in one ensemble file"


def default_out(paths: Sequence[str | Path], mode: str) -> Path:
    """Next to the inputs: weight-average.pt in the run folder, ensemble.pt (or .npz for saved predictions) in the
    folder the inputs share."""
    from tagger.ensemble.saved import SUFFIX, is_saved_predictions

    if mode == "weights":
        return Path(paths[0]).parent / "weight-average.pt"
    folders = [str(Path(p).resolve().parent) for p in paths]
    shared = Path(os.path.commonpath(folders))
    if shared == Path(shared.anchor):  # inputs from unrelated places: beside the first one
        shared = Path(folders[0])
    suffix = SUFFIX if is_saved_predictions(paths) else ".pt"
    return Path(os.path.relpath(shared / f"ensemble{suffix}"))


def _is_default_out(path: str | Path, paths: Sequence[str | Path]) -> bool:
    resolved = Path(path).resolve()
    return any(resolved == default_out(paths, mode).resolve() for mode in ("weights", "predictions"))


def _choose_out(paths: Sequence[str | Path], settings: EnsembleSettings, hooks: Hooks) -> None:
    if settings.out is None and paths:
        settings.out = default_out(paths, settings.mode)
        hooks.log(f"no --out given: writing {settings.out}")


def _check_settings(settings: EnsembleSettings, saved: bool = False) -> None:
    if settings.combine not in COMBINE_CHOICES:
        raise TaggerError(f"--combine {settings.combine!r} is not one of {', '.join(COMBINE_CHOICES)}")
    if settings.mode == "weights" and settings.combine != "auto":
        raise TaggerError("--combine applies to --mode predictions; weight averaging takes --weights W1,W2,...")
    if settings.mode == "predictions" and settings.bn_recalibrate is not None:
        raise TaggerError("--bn-recalibrate applies to --mode weights (members of a prediction ensemble keep "
                          "their own statistics)")
    if settings.combine == "weighted" and settings.valid is None and not saved:
        raise TaggerError("--combine weighted learns the member weights on validation data: add --valid MANIFEST")
    if settings.combine == "weighted" and settings.weights is not None:
        raise TaggerError("--combine weighted learns the weights; drop --weights (or use mean-prob/mean-logit)")
    if settings.batch_size < 1:
        raise TaggerError(f"--batch-size must be at least 1, got {settings.batch_size}")
    out = Path(settings.out)
    if out.exists() and not settings.force:
        raise TaggerError(f"{out} exists; pass --force to overwrite it or choose another --out")
    if out.is_dir():
        raise TaggerError(f"--out {out} is a folder; give a file name such as {out / 'ensemble.pt'}")


def load_candidates(paths: Sequence[str | Path], settings: EnsembleSettings, hooks: Hooks) -> list[Candidate]:
    """The checkpoints as given (memory-mapped), identical training states kept once."""
    from tagger.checkpoint import FORMAT, read_torch_file
    from tagger.ensemble.combine import check_weights
    from tagger.ensemble.store import is_ensemble

    if not paths:
        raise TaggerError("no checkpoints given; e.g. tagger ensemble runs/a/best.pt runs/b/best.pt --out ens.pt")
    weights = None if settings.weights is None else check_weights(settings.weights, len(paths))
    out = None if settings.out is None else Path(settings.out).resolve()
    candidates: list[Candidate] = []
    for index, path in enumerate(paths):
        path = Path(path)
        if path.is_dir():
            raise TaggerError(f"{path} is a folder; pass its checkpoints, e.g. {path / 'epoch_*.pt'}")
        if out is not None and path.resolve() == out:
            raise TaggerError(f"--out {settings.out} is also an input checkpoint; choose another --out")
        payload = read_torch_file(path, mmap=True)
        if is_ensemble(payload):
            raise TaggerError(f"{path}: already an ensemble; pass its member checkpoints instead")
        if isinstance(payload, dict) and payload.get("format") == "tagger-resume":
            raise TaggerError(f"{path}: a training resume file, not a model; pass epoch_*.pt, best.pt or last.pt")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise TaggerError(f"{path}: not a tagger checkpoint; convert official weights with "
                              "`tagger import-checkpoint`")
        twin = next((c for c in candidates if _same_state(c.payload, payload)), None)
        if twin is not None:
            hooks.log(f"note: {path} holds the same weights as {twin.source}; it is used once")
            continue
        candidates.append(Candidate(str(path), payload, None if weights is None else weights[index]))
    return candidates


def _same_state(a: dict, b: dict) -> bool:
    """The same training state saved twice (last.pt and epoch_010.pt, or one file given twice)."""
    if a["arch"] != b["arch"] or (a.get("train") or {}).get("step") != (b.get("train") or {}).get("step"):
        return False
    left, right = a["state_dict"], b["state_dict"]
    return left.keys() == right.keys() and all(
        left[k].shape == right[k].shape and torch.equal(left[k], right[k]) for k in left)


def _columns(candidate: Candidate, labels: LabelSet, task: str) -> list[int] | None:
    from tagger.ensemble.store import column_map

    return column_map(candidate.labels, labels, task, candidate.task, candidate.source)


def _read_validation(settings: EnsembleSettings) -> Validation:
    from tagger.data.clips import open_clips

    return Validation(open_clips(settings.valid, settings.manifest_format, audio_dir=settings.audio_dir,
                                    folds=settings.valid_folds))


def _score_candidate(candidate: Candidate, columns: list[int] | None, task: str, validation: Validation,
                     settings: EnsembleSettings, hooks: Hooks, description: str) -> None:
    """Validation logits of one candidate in the ensemble's label order, and its own metric."""
    from tagger.checkpoint import model_from_payload
    from tagger.ensemble.combine import probabilities
    from tagger.ensemble.selection import metric_value, resolve_metric
    from tagger.evaluation.evaluate import load_predictions

    cached = score_cache(candidate.source, settings)
    reused = cached.is_file()  # scored by an earlier run (interrupted, or trying another --select)
    if reused:
        result = load_predictions(cached, with_metrics=False)
    else:
        tagger = model_tagger(*model_from_payload(candidate.payload, candidate.source), candidate.source, settings)
        result = score_tagger(tagger, description, validation, settings, hooks)
        result.save_predictions(cached)
    logits = result.logits if columns is None else result.logits[:, columns]
    targets = result.targets if columns is None else result.targets[:, columns]
    if validation.targets is None:
        validation.targets = targets
        validation.metric = resolve_metric(settings.metric, targets)
    candidate.logits = logits
    candidate.value = metric_value(validation.metric, validation.targets, probabilities(logits, task))
    hooks.log(f"{candidate.source}: {validation.metric} {candidate.value:.4f}"
              + (f" (validation scores reused from {cached.parent})" if reused else ""))


def score_cache(source: str, settings: EnsembleSettings) -> Path:
    """Where a checkpoint's validation scores are kept: valid-scores/NAME-KEY.npz in --out's folder, shared by
    every ensemble written there (trying several selections scores each checkpoint once).

    The key covers the checkpoint file (path, size, modification time), the validation manifest (likewise) and
    every setting that changes the scores, so a stale file is never reused.
    """
    out = Path(settings.out)
    key = [_file_key(source), _file_key(settings.valid), settings.valid_folds, settings.clip_seconds,
           None if settings.labels is None else _file_key(settings.labels), settings.manifest_format,
           None if settings.audio_dir is None else str(Path(settings.audio_dir).resolve()), settings.precision]
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]
    return out.parent / "valid-scores" / f"{Path(source).stem}-{digest}.npz"


def _file_key(path) -> list:
    resolved = Path(path).resolve()
    status = resolved.stat()
    return [str(resolved), status.st_size, status.st_mtime_ns]


