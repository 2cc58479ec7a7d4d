"""Self-describing tagger checkpoints: save one model with everything needed to use it, load any model file.

Files are read through `torchfile` (torch.load with weights_only=True only). Other kinds of model file (an
ensemble) register a builder for their "format" here, so this module loads them without importing their code.
`update_checkpoint` changes top-level entries of either kind in place, such as the tuned event rule a file may
carry ("event_rule", written by `inference.runtime.store_event_rule`).

"source" says where the weights came from: an imported checkpoint records the official file (family, name, size,
SHA-256, date, licences; `tagger pull` adds the release and URL), and weights made from it (a run initialised
from it, an average) keep that record with the steps that made them appended (`derived_source`).
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tagger.errors import TaggerError
from tagger.fileio import atomic_path
from tagger.labels import LabelSet
from tagger.torchfile import load_state, read_torch_file

FORMAT = "tagger-checkpoint"
VERSION = 1
TASKS = ("multilabel", "multiclass")


@dataclass(frozen=True)
class Kind:
    """Another kind of model file: how to build it, and what to say where one single model is needed."""

    build: Callable[[dict, str], tuple]  # (payload, source) -> (model in eval mode, meta)
    not_single: str  # completes "{path}: ..." when load_checkpoint is given this kind


# Modules that register a kind, imported the first time a file of that kind is read (as model families are).
_KIND_MODULES = {"tagger-ensemble": "tagger.ensemble.store"}
_KINDS: dict[str, Kind] = {}


def register_kind(format_name: str, kind: Kind) -> None:
    _KINDS[format_name] = kind


def _kind_of(payload) -> Kind | None:
    name = payload.get("format") if isinstance(payload, dict) else None
    if name in _KIND_MODULES and name not in _KINDS:
        importlib.import_module(_KIND_MODULES[name])
    return _KINDS.get(name)


def save_checkpoint(
    path: str | Path,
    model,
    labels: LabelSet,
    task: str = "multilabel",
    normalization: dict | None = None,
    train: dict | None = None,
    source: dict | None = None,
) -> Path:
    """Write `model` with everything needed to rebuild and use it, atomically.

    source: where the weights came from (family, file, sha256, licence; a release and url when pulled), as
    `tagger import-checkpoint` and `tagger pull` record it and `derived_source` carries it on."""
    from tagger.frontends import frontend_to_dict

    if task not in TASKS:
        raise TaggerError(f"task {task!r} must be one of {', '.join(TASKS)}")
    if len(labels) != model.num_classes:
        raise TaggerError(f"{len(labels)} labels for a model with {model.num_classes} classes")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch,
        "model_kwargs": dict(model.model_kwargs),
        "frontend": frontend_to_dict(model.frontend),
        "labels": labels.to_list(),
        "normalization": normalization or {},
        "task": task,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train": train or {},
        **({"source": source} if source else {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def derived_source(sources: Sequence[dict | None], step: dict) -> dict | None:
    """The provenance of weights made from others (a run initialised from a checkpoint, an average of several): the
    recorded source they share, or all of theirs under "sources" when they differ, with `step` (what made the new
    weights, e.g. {"how": "trained", "from": PATH}) appended to "derived". None when none records a source: weights
    trained from scratch carry no one else's licence."""
    known = [s for s in sources if isinstance(s, dict) and s]
    if not known:
        return None
    steps: list = []
    bases: list[dict] = []
    for source in known:
        for old in source.get("derived", []):
            if old not in steps:
                steps.append(copy.deepcopy(old))
        base = {k: copy.deepcopy(v) for k, v in source.items() if k != "derived"}
        for one in base["sources"] if isinstance(base.get("sources"), list) else [base]:
            if one not in bases:
                bases.append(one)
    if len(bases) == 1:
        result = bases[0]
    else:  # weights of several origins: each licence applies, so all of them are kept and named
        def joined(key: str) -> str:
            values = dict.fromkeys(str(b.get(key, "unknown")) for b in bases)
            return " + ".join(values)

        result = {"family": joined("family"), "licence": joined("licence"), "code_licence": joined("code_licence"),
                  "sources": bases}
    result["derived"] = [*steps, step]
    return result


def check_writable(path: str | Path) -> Path:
    """`path` as a model file this user may change in place (its folder too: the new file is renamed into it)."""
    path = Path(path)
    if not path.is_file():
        raise TaggerError(f"{path}: checkpoint not found; check the path")
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
        raise TaggerError(f"{path}: not writable here; copy it somewhere you may write, or fix its permissions")
    return path


def update_checkpoint(path: str | Path, change: Callable[[dict], dict]) -> Path:
    """Set top-level entries of a model file (a tagger checkpoint, or a kind registered here such as an ensemble)
    in place: `change(payload)` returns the entries to set (a value of None removes that entry). The file is
    rewritten atomically with its permissions kept; everything else in it stays as it was."""
    import stat

    path = check_writable(path)
    payload = read_torch_file(path)
    name = payload.get("format") if isinstance(payload, dict) else None
    if name != FORMAT and name not in _KIND_MODULES and name not in _KINDS:
        model_from_payload(payload, str(path))  # raises the loader's one-line message for what it is instead
    for key, value in change(payload).items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    mode = stat.S_IMODE(path.stat().st_mode)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
        os.chmod(tmp, mode)
    return path


def load_checkpoint(path: str | Path):
    """(model in eval mode, payload without the state_dict) from a tagger checkpoint of one model."""
    payload = read_torch_file(path)
    kind = _kind_of(payload)
    if kind is not None:
        raise TaggerError(f"{path}: {kind.not_single}")
    return model_from_payload(payload, str(path))


def load_model(path: str | Path):
    """(model, meta) from any model file: a tagger checkpoint, or a registered kind such as an ensemble."""
    payload = read_torch_file(path)
    kind = _kind_of(payload)
    if kind is not None:
        return kind.build(payload, str(path))
    return model_from_payload(payload, str(path))


def model_from_payload(payload, source: str):
    """(model in eval mode, meta without the state_dict) from a loaded tagger checkpoint payload."""
    from tagger.models import create_model

    if isinstance(payload, dict) and payload.get("format") == "tagger-resume":
        run = Path(source).parent
        raise TaggerError(
            f"{source}: tagger's training state (a run's resume file), not a model; continue the run with "
            f"`tagger train --resume {run}`, or use its best.pt, last.pt or epoch_*.pt"
        )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TaggerError(
            f"{source}: not a tagger checkpoint; convert official weights with `tagger import-checkpoint`"
        )
    if payload.get("version") != VERSION:
        raise TaggerError(f"{source}: tagger checkpoint version {payload.get('version')} is not supported")
    model = create_model(payload["arch"], **payload["model_kwargs"])
    load_state(model, payload["state_dict"], source=source)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["labels"] = LabelSet.from_list_of_dicts(payload["labels"])
    return model.eval(), meta


