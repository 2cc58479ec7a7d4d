"""The parity check all formats share: what PyTorch gives, how far an export is from it, the error past TOLERANCE."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from tagger.errors import TaggerError
from tagger.export.describe import _members
from tagger.export.graph import OUTPUTS, _Outputs
from tagger.export.plan import _Plan, parity_waveform

TOLERANCE = 1e-4


def _reference(model: nn.Module, task: str, wave: Tensor) -> tuple[Tensor, ...]:
    """What the PyTorch model itself gives: the standard every export is held to."""
    with torch.no_grad():
        return _Outputs(model, task)(wave)


def _diff(expected: tuple[Tensor, ...], got: Any) -> float:
    """Max |difference| over the scores (logits, and frame_logits when present): outputs 0 and 3. Embeddings
    have no common scale; probabilities follow the logits."""
    got = list(got)
    if len(got) != len(expected):
        return math.inf
    worst = 0.0
    for index in (0, 3):
        if index >= len(expected):
            continue
        value = torch.as_tensor(got[index])
        if tuple(value.shape) != tuple(expected[index].shape):
            return math.inf
        worst = max(worst, float((value.double() - expected[index].double()).abs().max()))
    return worst


def _fail(diff: float, fmt: str, model: nn.Module) -> TaggerError:
    members = _members(model)
    whose = f"the members' archs ({', '.join(m.arch for m in members)})" if members else "the checkpoint's arch"
    return TaggerError(
        f"the {fmt} export differs from PyTorch by {diff:.3g} in the logits (more than {TOLERANCE:g}), so "
        f"nothing was written; please report it with {whose} (--no-check writes it anyway)"
    )


def _names(model: nn.Module, task: str, plan: _Plan) -> list[str]:
    """The output names: frame_logits only for models with frame-level output."""
    return list(OUTPUTS[: len(_reference(model, task, parity_waveform(model.sample_rate, plan.samples, 1)))])
