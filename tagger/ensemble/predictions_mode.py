"""--mode predictions: choose members, decide how to combine them, write the ensemble checkpoint."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tagger.ensemble.combine import combine_numpy, default_combine, learn_weights, probabilities
from tagger.ensemble.members import Candidate, EnsembleSettings, Hooks, member_rows, member_weights
from tagger.ensemble.report import Report
from tagger.ensemble.selection import Selection, choose, metric_value
from tagger.labels import LabelSet


def build_prediction_ensemble(candidates: list[Candidate], pool: list[int], selection: Selection, labels: LabelSet,
                              task: str, validation, settings: EnsembleSettings, hooks: Hooks) -> Report:
    from tagger.ensemble.store import save_ensemble
    from tagger.models import model_entry

    families = [model_entry(candidates[k].arch).family for k in pool]
    chosen, weights, combine, report = choose_members(candidates, pool, selection, families, task, validation,
                                                      settings, hooks)
    members = [candidates[k] for k in chosen]
    save_ensemble(settings.out, [m.payload for m in members], [m.source for m in members], combine, weights, labels,
                  task, report.to_dict())
    return report


def choose_members(candidates: list[Candidate], pool: list[int], selection: Selection, families: list[str],
                   task: str, validation, settings: EnsembleSettings, hooks: Hooks
                   ) -> tuple[list[int], list[float], str, Report]:
    """(chosen indices, their weights, the combine rule, the report) of a prediction ensemble."""
    combine = settings.combine
    if combine in ("auto", "weighted"):
        combine = "mean-prob" if combine == "weighted" else default_combine(families)
    chosen = choose(selection, pool, [c.value for c in candidates],
                    _uniform_value(candidates, combine, task, validation))
    members = [candidates[k] for k in chosen]
    if settings.combine == "weighted":
        weights = learn_weights(np.stack([m.logits for m in members]), validation.targets, task)
        hooks.log("learned weights: " + ", ".join(f"{w:.3f}" for w in weights))
    else:
        weights = member_weights(members)
    value = None if validation is None else _value(members, weights, combine, task, validation)
    label = combine + (" (learned weights)" if settings.combine == "weighted" else "")
    report = Report("predictions", settings.select, label, str(settings.out), member_rows(candidates, chosen, weights),
                    validation.metric if validation else None, str(settings.valid) if validation else None, value)
    return chosen, weights, combine, report


def _uniform_value(candidates: Sequence[Candidate], combine: str, task: str, validation):
    def value(indices: list[int]) -> float:
        members = [candidates[k] for k in indices]
        return _value(members, [1.0 / len(members)] * len(members), combine, task, validation)

    return value


def _value(members: Sequence[Candidate], weights: Sequence[float], combine: str, task: str, validation) -> float:
    """The ensemble's validation metric from its members' validation logits."""
    logits = combine_numpy(np.stack([m.logits for m in members]), weights, combine, task)
    return metric_value(validation.metric, validation.targets, probabilities(logits, task))
