"""Self-describing tagger checkpoints: the only module that calls torch.load, always with weights_only=True."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from tagger.errors import TaggerError
from tagger.fileio import atomic_path
from tagger.labels import LabelSet

FORMAT = "tagger-checkpoint"
VERSION = 1
TASKS = ("multilabel", "multiclass")


def read_torch_file(path: str | Path, mmap: bool = False) -> Any:
    """torch.load with weights_only=True: a file that needs code to unpickle is refused, never run.

    mmap: map the tensors from the file instead of reading them (many large checkpoints at once, as ensembles
    load them); pages are read when a tensor is used.
    """
    path = Path(path)
    if not path.is_file():
        raise TaggerError(f"{path}: checkpoint not found; check the path")
    try:
        with warnings.catch_warnings():  # torch warns before failing on some files: the user sees one line, ours
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many types here; all mean "this file is not for us"
        text = str(error)
        if _is_torchscript(path):
            raise TaggerError(
                f"{path}: a TorchScript file (as `tagger export --format torchscript` writes), not a tagger "
                "checkpoint; run it with torch.jit.load, or give the checkpoint it was exported from"
            ) from None
        if "Unsupported global" in text or "not an allowed global" in text:
            raise TaggerError(
                f"{path}: refused: the file needs Python code to load (a pickled object, not plain tensors); "
                "re-save it as a state_dict with torch.save(model.state_dict(), ...)"
            ) from None
        raise TaggerError(
            f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or another kind of file)"
        ) from None


def _is_torchscript(path: Path) -> bool:
    """A zip archive with TorchScript code inside (torch.jit.save's layout)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


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

    source: where official weights came from (release, url, file, sha256, licence, paper), as `tagger pull`
    records it; shown wherever the checkpoint is described."""
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


def load_checkpoint(path: str | Path):
    """(model in eval mode, payload without the state_dict) from a tagger checkpoint."""
    payload = read_torch_file(path)
    from tagger.ensemble.store import is_ensemble

    if is_ensemble(payload):
        raise TaggerError(f"{path}: an ensemble checkpoint cannot be used here; give one of its members, or a "
                          "weight-averaged checkpoint (tagger ensemble --mode weights)")
    return model_from_payload(payload, str(path))


def load_model(path: str | Path):
    """(model, meta) from a tagger checkpoint or an ensemble checkpoint (an EnsembleModel): for scoring audio."""
    from tagger.ensemble.store import build_ensemble, is_ensemble

    payload = read_torch_file(path)
    if is_ensemble(payload):
        return build_ensemble(payload, str(path))
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


def load_state(model: torch.nn.Module, state: dict, source: str) -> None:
    """Strict load with a one-line message naming the first missing, unexpected or mismatched key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise TaggerError(f"{source}: keys do not match the model: {'; '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise TaggerError(
                f"{source}: shape mismatch at {key}: checkpoint {tuple(value.shape)}, model {tuple(own[key].shape)}"
            )
    model.load_state_dict(state, strict=True)
