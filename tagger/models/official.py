"""Helpers shared by the importers of official checkpoints: find the tensors inside a file's wrappers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from tagger.errors import TaggerError

WRAPPERS = ("state_dict", "model", "model_state_dict", "net")


def find_state_dict(raw: Any, what: str, wrappers: tuple[str, ...] = WRAPPERS) -> tuple[dict[str, Tensor], list[str]]:
    """The dict of tensors in an official file: the object itself, or under a wrapper key such as Lightning's
    "state_dict" or PANNs' "model" (two levels at most). Non-tensor entries (iteration counters) are dropped."""
    state, notes = raw, []
    for _ in range(2):
        if not isinstance(state, Mapping) or any(isinstance(v, Tensor) for v in state.values()):
            break
        key = next((k for k in wrappers if isinstance(state.get(k), Mapping)), None)
        if key is None:
            break
        state = state[key]
        notes.append(f"read the state_dict from the file's {key!r} entry")
    if not isinstance(state, Mapping) or not any(isinstance(v, Tensor) for v in state.values()):
        raise TaggerError(f"not {what}: expected a state_dict (a dict of tensors), got {type(raw).__name__}")
    return {str(k): v for k, v in state.items() if isinstance(v, Tensor)}, notes
