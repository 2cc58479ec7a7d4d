"""Tagging metrics: mAP, AUC, d-prime, accuracy, top-k accuracy, lwlrap, per-class tables.

Pure numpy plus scipy (ndtri for d′, rankdata for AUC and lwlrap): no torch, and no sklearn at run time.

Conventions, shared with the papers' evaluation code (sklearn per class, then the mean):
- `targets` are (N, C) multi-hot or soft labels, or (N,) class indices. Soft targets (mixup, enhanced labels) are
  binarised with `> 0.5` for AP, AUC and lwlrap.
- `scores` are (N, C) probabilities or logits; every metric here is rank-based, so logits and their sigmoid give the
  same values. A softmax is not monotone per class across clips: for single-label models pass the probabilities.
- Tied scores count as one threshold, as in sklearn (AP steps over distinct scores, AUC uses mid-ranks).
- A class with no positives has AP NaN (sklearn warns and gives 0 or NaN depending on its version); a class with no
  positives or no negatives has AUC NaN (sklearn raises). Means skip NaN classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata

from tagger.errors import TaggerError

TASKS = ("multilabel", "multiclass")


def average_precision(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class average precision (C,), equal to sklearn's `average_precision_score` on each column."""
    truth, scores = _prepare(targets, scores)
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0)  # order within a tie group does not matter
    ranked = np.take_along_axis(scores, order, axis=0)
    hits = np.take_along_axis(truth, order, axis=0)
    true_pos = np.cumsum(hits, axis=0)
    # Tied scores form one threshold: every member of a tie group takes the precision at the group's last row.
    group_end = np.ones_like(ranked, dtype=bool)
    group_end[:-1] = ranked[:-1] != ranked[1:]
    end_index = np.where(group_end, np.arange(n)[:, None], n)
    end_index = np.minimum.accumulate(end_index[::-1], axis=0)[::-1]
    precision = np.take_along_axis(true_pos, end_index, axis=0) / (end_index + 1)
    positives = truth.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (hits * precision).sum(axis=0) / positives
    return np.where(positives > 0, ap, np.nan)


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class ROC AUC (C,) from the Mann–Whitney U statistic with mid-ranks, equal to sklearn's `roc_auc_score`."""
    truth, scores = _prepare(targets, scores)
    ranks = rankdata(scores, axis=0)  # mid-ranks: a tie between a positive and a negative counts one half
    positives = truth.sum(axis=0)
    negatives = truth.shape[0] - positives
    u = (ranks * truth).sum(axis=0) - positives * (positives + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def d_prime(auc: float | np.ndarray) -> float | np.ndarray:
    """Sensitivity index √2·Φ⁻¹(AUC): 0 at chance, ±inf at AUC 1 or 0; NaN stays NaN."""
    value = np.sqrt(2.0) * ndtri(np.asarray(auc, dtype=np.float64))
    return float(value) if value.ndim == 0 else value


def accuracy(targets: np.ndarray, scores: np.ndarray) -> float:
    """Fraction of clips whose top-scoring class is the target class (not class-averaged, as in AST/HTS-AT)."""
    indices, scores = _prepare(targets, scores, as_indices=True)
    return float(np.mean(np.argmax(scores, axis=1) == indices))


def top_k_accuracy(targets: np.ndarray, scores: np.ndarray, k: int = 5) -> float:
    """Fraction of clips whose target class is among the k top-scoring classes (k >= C: every clip counts).

    Equal to sklearn's `top_k_accuracy_score` when a clip's scores do not tie. Ties go to the lower class index,
    as `np.argmax` breaks them, so k = 1 always equals `accuracy` (sklearn favours the higher index instead).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise TaggerError(f"top-k accuracy needs a whole k of at least 1, got {k!r}")
    indices, scores = _prepare(targets, scores, as_indices=True)
    rows = np.arange(scores.shape[0])
    target_score = scores[rows, indices][:, None]
    lower_index = np.arange(scores.shape[1])[None, :] < indices[:, None]
    ahead = (scores > target_score) | ((scores == target_score) & lower_index)
    return float(np.mean(ahead.sum(axis=1) < k))


def class_counts(targets: np.ndarray) -> dict[str, int]:
    """How many classes the means can use: AP needs a positive clip, AUC a positive and a negative one.

    classes_scored: classes with positives (a finite AP, part of mAP); classes_without_positives: left out of mAP
    and mAUC; classes_without_negatives: every clip is positive, so AP is 1 but AUC is undefined (left out of mAUC).
    """
    truth = np.asarray(targets)
    if truth.ndim != 2:
        raise TaggerError(f"targets must be a (clips, classes) matrix here, got shape {truth.shape}")
    positives = (truth.astype(np.float64) > 0.5).sum(axis=0)
    return {
        "classes_scored": int((positives > 0).sum()),
        "classes_without_positives": int((positives == 0).sum()),
        "classes_without_negatives": int((positives == truth.shape[0]).sum()),
    }


def lwlrap(targets: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted label-ranking average precision (DCASE 2019 task 2); NaN when there are no positive labels.

    Each positive (clip, label) pair scores the precision of its clip's ranking at that label, and all pairs weigh
    the same. Ties rank pessimistically as in sklearn's `label_ranking_average_precision_score`.
    """
    truth, scores = _prepare(targets, scores)
    # rank = how many labels of the clip score at least as high; hits = how many of those are positive.
    rank = rankdata(-scores, method="max", axis=1)
    hits = rankdata(np.where(truth, -scores, np.inf), method="max", axis=1)
    pairs = truth.sum()
    if pairs == 0:
        return float("nan")
    return float((truth * hits / rank).sum() / pairs)


def summarize(targets: np.ndarray, scores: np.ndarray, task: str = "multilabel") -> dict[str, float]:
    """The headline numbers of an evaluation. d_prime comes from the mean AUC, as AST and PANNs report it.

    multilabel: mAP, mAUC, d_prime, lwlrap, then the `class_counts` (classes_scored is how many classes have
    positives, i.e. a finite AP).
    multiclass: accuracy, top5_accuracy (k = min(5, C)), then the multilabel numbers, with the target class
    (argmax of a 2-D row) one-hot for AP, AUC and lwlrap (which is then the mean reciprocal rank of the target).
    """
    if task not in TASKS:
        raise TaggerError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    head: dict[str, float] = {}
    if task == "multiclass":
        indices, scores = _prepare(targets, scores, as_indices=True)
        head = {
            "accuracy": float(np.mean(np.argmax(scores, axis=1) == indices)),
            "top5_accuracy": top_k_accuracy(indices, scores, min(5, scores.shape[1])),
        }
        truth = np.eye(scores.shape[1], dtype=bool)[indices]
    else:
        truth, scores = _prepare(targets, scores)
    mauc = nanmean(roc_auc(truth, scores))
    return {
        **head,
        "mAP": nanmean(average_precision(truth, scores)),
        "mAUC": mauc,
        "d_prime": d_prime(mauc),
        "lwlrap": lwlrap(truth, scores),
        **class_counts(truth),
    }


def per_class(targets: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per class (label, positives, AP, AUC, d_prime), ready for `tagger.console.render` or a CSV file."""
    truth, scores = _prepare(targets, scores)
    if len(names) != scores.shape[1]:
        raise TaggerError(f"{len(names)} class names for {scores.shape[1]} score columns; they must match")
    ap = average_precision(truth, scores)
    auc = roc_auc(truth, scores)
    dp = d_prime(auc)
    positives = truth.sum(axis=0)
    return [
        {
            "label": str(name),
            "positives": int(positives[k]),
            "AP": float(ap[k]),
            "AUC": float(auc[k]),
            "d_prime": float(dp[k]),
        }
        for k, name in enumerate(names)
    ]


def nanmean(values: np.ndarray) -> float:
    """Mean over the finite-or-infinite entries, NaN (without numpy's warning) when every entry is NaN."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _prepare(targets: Any, scores: Any, as_indices: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and values once, for every metric: (bool (N, C) or int (N,) targets, float64 (N, C) scores)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise TaggerError(f"scores must be a (clips, classes) matrix, got shape {scores.shape}")
    n, c = scores.shape
    if n == 0 or c == 0:
        raise TaggerError(f"no scores to evaluate (shape {scores.shape})")
    if targets.shape not in ((n,), (n, c)):
        raise TaggerError(f"targets of shape {targets.shape} do not match scores of shape {scores.shape}")
    bad = ~np.isfinite(scores)
    if bad.any():
        nans = int(np.isnan(scores).sum())
        raise TaggerError(f"scores hold {nans} NaN and {int(bad.sum()) - nans} inf values; the model output diverged")
    if targets.ndim == 2:
        targets = targets.astype(np.float64)
        if not np.isfinite(targets).all():
            raise TaggerError(f"targets hold {int((~np.isfinite(targets)).sum())} NaN or inf values")
        if as_indices:
            return np.argmax(targets, axis=1), scores
        return targets > 0.5, scores
    if targets.dtype.kind not in "iu" and not (targets.dtype.kind == "f" and np.all(targets == np.round(targets))):
        raise TaggerError(f"1-D targets must be class indices (integers), got dtype {targets.dtype}")
    indices = targets.astype(np.int64)
    if indices.min() < 0 or indices.max() >= c:
        raise TaggerError(f"class indices must lie in 0..{c - 1}, got {indices.min()}..{indices.max()}")
    if as_indices:
        return indices, scores
    return np.eye(c, dtype=bool)[indices], scores
