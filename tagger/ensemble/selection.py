"""Which checkpoints join: every one, those from epoch N on, the best K on validation, or greedy forward selection.

Greedy selection follows PSLA/AST practice made explicit: start from the best single member and add, one at a
time, the member that raises the ensemble's validation metric most; stop when no addition raises it. The
result is therefore never worse on validation than its best member.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tagger.errors import TaggerError
from tagger.evaluation import metrics

METRICS = ("auto", "accuracy", "mAP", "mAUC")
_SPEC_HELP = "use all, epochs>=N, best:K or greedy"


@dataclass(frozen=True)
class Selection:
    kind: str  # all | epochs | best | greedy
    number: int = 0  # N of epochs>=N, K of best:K

    @property
    def needs_validation(self) -> bool:
        return self.kind in ("best", "greedy")


def parse_selection(text: str) -> Selection:
    """'all', 'epochs>=N', 'best:K' or 'greedy' (spaces ignored)."""
    spec = text.replace(" ", "").lower()
    if spec in ("all", "greedy"):
        return Selection(spec)
    match = re.fullmatch(r"epochs>=(\d+)", spec) or re.fullmatch(r"best:(\d+)", spec)
    if match is None:
        raise TaggerError(f"--select {text!r} is not understood; {_SPEC_HELP}")
    number = int(match.group(1))
    if spec.startswith("best") and number < 1:
        raise TaggerError(f"--select {text!r}: K must be at least 1")
    return Selection("epochs" if spec.startswith("epochs") else "best", number)


def from_epoch(epochs: Sequence[float | None], sources: Sequence[str], first: int) -> list[int]:
    """Indices of the checkpoints saved at epoch >= `first` (their own record of the epoch, not the file name)."""
    unknown = [s for s, e in zip(sources, epochs, strict=True) if e is None]
    if unknown:
        raise TaggerError(f"{unknown[0]}: the checkpoint does not record its epoch, so --select epochs>=N cannot "
                          "place it; pass the epoch checkpoints of a tagger train run (run.save_every_epoch=true)")
    chosen = [k for k, e in enumerate(epochs) if e >= first]
    if not chosen:
        latest = max(e for e in epochs if e is not None)
        raise TaggerError(f"--select epochs>={first}: no checkpoint is that late (the latest is epoch {latest:g})")
    return chosen


def best_k(values: Sequence[float], k: int) -> list[int]:
    """Indices of the K highest validation values, best first (ties keep the given order)."""
    return sorted(range(len(values)), key=lambda i: -values[i])[:k]


def greedy(values: Sequence[float], score: Callable[[list[int]], float]) -> tuple[list[int], float]:
    """Forward selection without replacement: (chosen indices in the order added, the ensemble's value).

    values: each candidate's own validation value; score(indices) the ensemble value of a subset.
    A candidate joins only if it raises the value strictly.
    """
    order = best_k(values, len(values))
    chosen, best = [order[0]], float(values[order[0]])
    while len(chosen) < len(values):
        trials = [(score([*chosen, k]), k) for k in order if k not in chosen]
        value, pick = max(trials, key=lambda t: t[0])  # the first of equal values: the better single member
        if not value > best:
            break
        chosen.append(pick)
        best = value
    return chosen, best


def choose(selection: Selection, pool: Sequence[int], values: Sequence[float | None],
           score: Callable[[list[int]], float]) -> list[int]:
    """The chosen candidates (indices, ascending) among `pool` (those the epoch window left).

    values: each candidate's validation value (None where not scored); score(indices) the value of an ensemble of
    candidates, called only by greedy selection.
    """
    pool = list(pool)
    if selection.kind == "best":
        return sorted(pool[i] for i in best_k([values[k] for k in pool], selection.number))
    if selection.kind == "greedy":
        chosen, _ = greedy([values[k] for k in pool], lambda picks: score([pool[i] for i in picks]))
        return sorted(pool[i] for i in chosen)
    return pool


def resolve_metric(metric: str, targets: np.ndarray) -> str:
    """auto: accuracy when every validation clip has exactly one label, else mAP."""
    if metric not in METRICS:
        raise TaggerError(f"--metric {metric!r} is not one of {', '.join(METRICS)}")
    single = bool(len(targets)) and bool(np.all((targets > 0.5).sum(axis=1) == 1))
    if metric == "auto":
        return "accuracy" if single else "mAP"
    if metric == "accuracy" and not single:
        raise TaggerError("--metric accuracy needs a single-label validation set (one label per clip); use mAP")
    return metric


def metric_value(metric: str, targets: np.ndarray, probabilities: np.ndarray) -> float:
    """One validation number: accuracy (argmax), mAP or mAUC (mean over classes with positives)."""
    if metric == "accuracy":
        return metrics.accuracy(targets.argmax(axis=1), probabilities)
    per_class = metrics.average_precision if metric == "mAP" else metrics.roc_auc
    return metrics.nanmean(per_class(targets > 0.5, probabilities))
