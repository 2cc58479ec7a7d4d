"""The model contract: waveform (B, S) in, TaggerOutput out, with the front-end as a submodule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

_PROB_EPS = 1e-7


@dataclass
class TaggerOutput:
    """What every model returns; losses, predict, evaluate and ensembles all read these fields.

    logits: (B, C) scores before the sigmoid (multi-label) or softmax (single-label).
    frame_logits: (B, T, C) per-frame scores for models with frame-level output, T = input frame count; else None.
    embedding: (B, D) the clip embedding (the official models' `embedding` / `features` / latent output).
    """

    logits: Tensor
    frame_logits: Tensor | None
    embedding: Tensor


def logit_from_probability(prob: Tensor) -> Tensor:
    """Log-odds of a probability output, for heads whose official output is already a probability.

    sigmoid(logit_from_probability(p)) == p up to the clamp at 1e-7, so predictions keep the official values.
    """
    prob = prob.clamp(_PROB_EPS, 1 - _PROB_EPS)
    return torch.log(prob) - torch.log1p(-prob)


class TaggerModel(nn.Module):
    """Base class: `frontend` turns the waveform into features, `forward_features` does the rest.

    Subclasses set `family`, and `derived_logits = True` when the official head outputs probabilities
    (PSLA pooling heads, PANNs decision-level Avg/Att): their logits are the log-odds of that probability.
    `arch` and `model_kwargs` are filled in by `create_model` so a checkpoint can rebuild the model.
    """

    family: str = ""
    derived_logits: bool = False
    arch: str = ""
    model_kwargs: dict[str, Any]
    frontend: nn.Module

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def min_input_frames(self) -> int:
        """Shortest front-end output (frames, or samples for waveform models) the network accepts."""
        return 1

    @property
    def max_input_frames(self) -> int | None:
        """Longest front-end output the network handles in one pass (a time embedding's span); None: any."""
        return None

    def forward(self, wave: Tensor) -> TaggerOutput:
        return self.forward_features(self.frontend(wave))

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        """From front-end features (B, F, T) as the front-end (or a feature store) gives them."""
        raise NotImplementedError
