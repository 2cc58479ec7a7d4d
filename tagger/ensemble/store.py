"""The ensemble checkpoint: member checkpoints (weights and all) plus how their outputs are combined.

Layout: {"format": "tagger-ensemble", "version": 1, "labels": [...], "task": ..., "combine": "mean-prob" |
"mean-logit", "weights": [w per member, summing to 1], "sources": [member paths as given], "members": [tagger
checkpoint payloads], "report": {...}}. Like a model checkpoint it holds only tensors and plain data, so it loads
with torch.load(weights_only=True), and `Scorer.load` accepts it wherever a checkpoint is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tagger.checkpoint import Kind, model_from_payload, register_kind
from tagger.errors import TaggerError
from tagger.fileio import atomic_path
from tagger.labels import LabelSet

FORMAT = "tagger-ensemble"
VERSION = 1


def save_ensemble(path: str | Path, members: Sequence[dict], sources: Sequence[str], combine: str,
                  weights: Sequence[float], labels: LabelSet, task: str, report: dict | None = None) -> Path:
    """Write the ensemble file atomically; `members` are tagger checkpoint payloads (with their state_dict)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "labels": labels.to_list(),
        "task": task,
        "combine": combine,
        "weights": [float(w) for w in weights],
        "sources": [str(s) for s in sources],
        "members": list(members),
        "report": report or {},
    }
    build_ensemble(payload, str(path))  # never write a file that cannot be loaded back
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def is_ensemble(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def build_ensemble(payload: dict, source: str):
    """(EnsembleModel in eval mode, meta) from an ensemble payload; meta["labels"] is a LabelSet."""
    from tagger.ensemble.model import EnsembleModel

    if payload.get("version") != VERSION:
        raise TaggerError(f"{source}: tagger ensemble version {payload.get('version')} is not supported")
    labels = LabelSet.from_list_of_dicts(payload["labels"])
    task = payload["task"]
    models, columns, members_meta = [], [], []
    for index, member in enumerate(payload["members"]):
        where = f"{source} (member {index + 1}, {payload['sources'][index]})"
        model, meta = model_from_payload(member, where)
        columns.append(column_map(meta["labels"], labels, task, meta.get("task", "multilabel"), where))
        models.append(model)
        members_meta.append(meta)
    ensemble = EnsembleModel(models, columns, payload["combine"], payload["weights"], task).eval()
    meta = {k: v for k, v in payload.items() if k != "members"}
    meta.update(labels=labels, members=members_meta, normalization={}, train={})
    return ensemble, meta


def column_map(member: LabelSet, labels: LabelSet, task: str, member_task: str, where: str) -> list[int] | None:
    """Positions of the ensemble's classes among a member's, matched by class id; None when they already line up.

    A multi-label member may know more classes than the ensemble (the extra ones are ignored); a single-label
    member must have exactly the ensemble's classes, since a softmax over a subset would change its scores.
    """
    if member_task != task:
        raise TaggerError(f"{where}: a {member_task} model cannot join a {task} ensemble; use members of one task")
    if member.ids == labels.ids:
        return None
    missing = [i for i in labels.ids if i not in member.ids]
    if missing:
        raise TaggerError(f"{where}: lacks {len(missing)} of the ensemble's classes (first: {missing[0]!r}); "
                          "every member must know every class (list the member with the fewest classes first)")
    if task == "multiclass" and len(member) != len(labels):
        raise TaggerError(f"{where}: a single-label member must have exactly the ensemble's {len(labels)} classes, "
                          f"not {len(member)}")
    position = {label: k for k, label in enumerate(member.ids)}
    return [position[label] for label in labels.ids]


register_kind(FORMAT, Kind(build_ensemble, "an ensemble checkpoint cannot be used here; give one of its members, or "
                                           "a weight-averaged checkpoint (tagger ensemble --mode weights)"))
