"""What every ensemble mode shares: the settings, the progress hooks, the checkpoints as candidates, and scoring
a candidate on the validation data. The modes (predictions, weights, saved) and run.py build on this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError
from tagger.labels import LabelSet

MODES = ("auto", "predictions", "weights")
COMBINE_CHOICES = ("auto", "mean-prob", "mean-logit", "weighted")


@dataclass
class EnsembleSettings:
    out: Path | None = None  # None: next to the inputs (`default_out`)
    mode: str = "auto"  # auto: weights for checkpoints of one run, else predictions (`suggested_mode`)
    select: str = "all"
    combine: str = "auto"
    weights: list[float] | None = None  # one per checkpoint as given; None: uniform (or learned with "weighted")
    valid: Path | None = None
    valid_folds: list[int] | None = None
    labels: Path | None = None  # label file mapping the validation manifest's labels onto the models'
    clip_seconds: float | None = None
    metric: str = "auto"
    bn_recalibrate: Path | None = None
    bn_folds: list[int] | None = None
    manifest_format: str = "auto"
    audio_dir: Path | None = None
    batch_size: int = 8
    device: str = "auto"
    precision: str = "fp32"
    force: bool = False


@dataclass
class Hooks:
    """Where the run reports to: status lines, and progress (description, done, total)."""

    log: Callable[[str], None] = lambda message: None
    progress: Callable[[str, int, int], None] = lambda description, done, total: None


@dataclass
class Candidate:
    """One checkpoint as given, with its validation predictions in the ensemble's label order once scored."""

    source: str
    payload: dict
    weight: float | None = None  # from --weights, before renormalising over the chosen members
    logits: np.ndarray | None = None
    value: float | None = None

    @property
    def arch(self) -> str:
        return self.payload["arch"]

    @property
    def epoch(self) -> float | None:
        epoch = (self.payload.get("train") or {}).get("epoch")
        return None if epoch in (None, "") else float(epoch)

    @property
    def labels(self) -> LabelSet:
        return LabelSet.from_list_of_dicts(self.payload["labels"])

    @property
    def task(self) -> str:
        return self.payload.get("task", "multilabel")


@dataclass
class Validation:
    """The validation data: the data set (a manifest, pack or HDF5 file), opened once, the targets in the
    ensemble's label order and the metric chosen for them."""

    clips: object
    targets: np.ndarray | None = None  # (N, C) in the ensemble's label order, from the first member scored
    metric: str = ""


def model_tagger(model, meta: dict, source: str, settings: EnsembleSettings):
    """A Scorer on the chosen device and precision for a model built here (a member, or an average)."""
    from tagger.inference.runtime import Scorer

    return Scorer(model, meta["labels"], meta.get("task", "multilabel"), settings.device, settings.precision,
                  source=source)


def score_tagger(tagger, description: str, validation: Validation, settings: EnsembleSettings, hooks: Hooks):
    """evaluate() on the validation data with a progress report; the EvaluationResult."""
    from tagger.evaluation.evaluate import evaluate

    def progress(done: int, total: int) -> None:
        hooks.progress(description, done, total)

    return evaluate(tagger, validation.clips, labels=settings.labels, clip_seconds=settings.clip_seconds,
                    batch_size=settings.batch_size, on_progress=progress)


def member_weights(candidates: Sequence[Candidate]) -> list[float]:
    """The --weights of the chosen members, renormalised; uniform when none were given."""
    given = [c.weight for c in candidates]
    if given[0] is None:
        return [1.0 / len(candidates)] * len(candidates)
    total = sum(given)
    if total <= 0:
        raise TaggerError("--weights: every selected member has weight 0; give a chosen member a positive weight")
    return [w / total for w in given]


def member_rows(candidates: Sequence[Candidate], chosen: Sequence[int], weights: Sequence[float]) -> list:
    """The report's rows: every checkpoint given, with its weight in the ensemble (0 when left out)."""
    from tagger.ensemble.report import MemberRow

    weight_of = dict(zip(chosen, weights, strict=True))
    return [MemberRow(c.source, c.arch, c.epoch, k in weight_of, weight_of.get(k, 0.0), c.value)
            for k, c in enumerate(candidates)]
