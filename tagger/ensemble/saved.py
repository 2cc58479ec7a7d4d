"""Ensembles of saved predictions (`tagger evaluate --save-predictions` files), combined without running a model.

The files carry their targets, so selection and the report use them: the quick way to try combinations on a
large evaluation set that was scored once per model (as PSLA's ensemble script does with its saved outputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError

SUFFIX = ".npz"


def is_saved_predictions(paths: Sequence[str | Path]) -> bool:
    """True when every input is a .npz file; a mix with checkpoints is an error."""
    saved = [Path(p).suffix == SUFFIX for p in paths]
    if any(saved) and not all(saved):
        raise TaggerError("give either checkpoints (.pt) or saved predictions (.npz from tagger evaluate "
                          "--save-predictions), not both")
    return bool(saved) and all(saved)


def run_saved(paths: Sequence[str | Path], settings, hooks):
    """Combine the files' logits, write the ensemble's predictions to settings.out (.npz) and return the Report."""
    from tagger.ensemble.combine import check_weights, combine_numpy, probabilities
    from tagger.ensemble.members import Candidate, Validation
    from tagger.ensemble.predictions_mode import choose_members
    from tagger.ensemble.selection import metric_value, parse_selection, resolve_metric
    from tagger.evaluation.evaluate import load_predictions, score

    selection = parse_selection(settings.select)
    _check(settings, selection)
    weights = [None] * len(paths) if settings.weights is None else check_weights(settings.weights, len(paths))
    results = [load_predictions(p, with_metrics=False) for p in paths]
    first = results[0]
    labels, task = first.labels, first.task
    candidates = []
    for path, result, weight in zip(paths, results, weights, strict=True):
        logits, targets = _aligned(result, first, str(path))
        if not np.array_equal(targets, first.targets):
            raise TaggerError(f"{path}: its targets differ from {paths[0]}'s for the same clips; combine predictions "
                              "made on one manifest with one label file")
        payload = {"arch": result.model or Path(path).stem, "labels": labels.to_list(), "task": task, "train": {}}
        candidates.append(Candidate(str(path), payload, weight, logits=logits))
    validation = Validation(None, first.targets, resolve_metric(settings.metric, first.targets))
    for candidate in candidates:
        candidate.value = metric_value(validation.metric, validation.targets, probabilities(candidate.logits, task))
    pool = list(range(len(candidates)))
    chosen, weights, combine, report = choose_members(candidates, pool, selection, [], task, validation, settings,
                                                      hooks)
    report.valid = "the targets saved with the predictions"
    logits = combine_numpy(np.stack([candidates[k].logits for k in chosen]), weights, combine, task)
    combined = score(first.targets, probabilities(logits, task), logits, labels, task, ids=first.ids,
                     paths=first.paths, model="ensemble of " + ", ".join(candidates[k].source for k in chosen),
                     clip_seconds=first.clip_seconds)
    combined.save_predictions(settings.out, extra={"ensemble_report": report.to_json()})
    return report


def _check(settings, selection) -> None:
    if selection.kind == "epochs":
        raise TaggerError(f"--select {settings.select}: saved predictions do not record an epoch; select by epoch "
                          "from the checkpoints, or pass the files you want")
    if settings.mode != "predictions":
        raise TaggerError("saved predictions can only be combined (--mode predictions); averaging weights needs "
                          "the checkpoints")
    if settings.valid is not None or settings.bn_recalibrate is not None:
        raise TaggerError("saved predictions carry their own targets: drop --valid / --bn-recalibrate")
    if Path(settings.out).suffix != SUFFIX:
        raise TaggerError(f"--out {settings.out}: combined predictions are written as .npz; name the file *.npz")


def _aligned(result, first, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(logits, targets) of `result` in `first`'s clip and class order."""
    from tagger.ensemble.store import column_map

    position = {clip: k for k, clip in enumerate(result.ids)}
    missing = [clip for clip in first.ids if clip not in position]
    if missing:
        raise TaggerError(f"{source}: lacks {len(missing)} of the {len(first.ids)} clips of the first file (first: "
                          f"{missing[0]!r}); combine predictions made on the same manifest")
    rows = [position[clip] for clip in first.ids]
    columns = column_map(result.labels, first.labels, first.task, result.task, source)
    logits, targets = result.logits[rows], result.targets[rows]
    if columns is not None:
        logits, targets = logits[:, columns], targets[:, columns]
    return logits, targets
