"""How an export sees a model: an ensemble's members, and the name messages and reports give the model."""

from __future__ import annotations

from torch import nn


def _members(model: nn.Module) -> list[nn.Module]:
    """An ensemble's member models; [] for a single model."""
    return list(model.members) if getattr(model, "arch", None) == "ensemble" else []


def _describe(model: nn.Module) -> str:
    """The arch, or for an ensemble "ensemble of 2 (efficientat-mn01, panns-cnn6)"."""
    members = _members(model)
    if not members:
        return model.arch
    return f"ensemble of {len(members)} ({', '.join(m.arch for m in members)})"


def _what(model: nn.Module) -> str:
    """The model as a message names it: "panns-cnn6", "the ensemble of 2 (efficientat-mn01, panns-cnn6)"."""
    return f"the {_describe(model)}" if _members(model) else model.arch


def _frontend_name(model: nn.Module) -> str:
    """The report's front-end: its name, or for an ensemble what it is made of (each member's front-end)."""
    return _describe(model) if _members(model) else model.frontend.name
