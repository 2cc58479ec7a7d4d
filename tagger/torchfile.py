"""Reading .pt files safely: the only module that calls torch.load, always with weights_only=True, and the strict
state_dict load whose mismatch message names the first bad key.

Models (ImageNet and official weights), checkpoints, training and ensembles all read files through here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from tagger.errors import TaggerError


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
