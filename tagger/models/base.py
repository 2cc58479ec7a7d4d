"""The model contract: waveform (B, S) in, TaggerOutput out, with the front-end as a submodule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagger.errors import TaggerError

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


def mean_probability_logits(logits: Tensor, dim: int, log_weights: Tensor | None = None) -> Tensor:
    """The logits whose sigmoid is the (weighted) mean of sigmoid(logits) along `dim`.

    Computed from log-sigmoids with logsumexp, so no probability is clamped however confident the inputs are.
    log_weights broadcasts against `logits`; -inf leaves an entry out, and they need not be normalised (the sum
    cancels between the two terms).
    """
    positive, negative = F.logsigmoid(logits), F.logsigmoid(-logits)  # log p, log (1 - p)
    if log_weights is not None:
        positive, negative = positive + log_weights, negative + log_weights
    return torch.logsumexp(positive, dim) - torch.logsumexp(negative, dim)


def repeat_steps(steps: Tensor, frames: int, stride: int, offset: int = 0) -> Tensor:
    """(B, S, C) per-step values -> (B, frames, C): input frame f takes step (f + offset) // stride.

    offset 0: step s covers frames [s * stride, (s + 1) * stride), right for pooling trunks (PANNs). Trunks that
    downsample with strided convolutions padded symmetrically centre step s on frame s * stride; offset
    stride // 2 puts it over [s * stride - stride // 2, s * stride + stride // 2). The last step is repeated up
    to `frames` when the steps fall short, and steps past `frames` are cut.
    """
    index = torch.arange(offset, frames + offset, device=steps.device) // stride
    return steps.index_select(1, index.clamp_(max=steps.shape[1] - 1))


def time_stride(network: nn.Module) -> int:
    """Total downsampling of the time axis (the last one) by the Conv2d and pooling layers of `network`.

    Read from the built layers, so configurable strides need no second copy of the arithmetic. Counts every
    layer once, which holds for the sequential trunks it is used on (no parallel strided branches).
    """
    stride = 1
    for layer in network.modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            step = layer.stride
            stride *= int(step[-1] if isinstance(step, tuple) else step)
    return stride


def init_transformer_module(module: nn.Module) -> None:
    """The timm ViT initialisation of one module, as the transformer families' official code does it: truncated
    normal (std 0.02) Linear weights with zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_transformer_weights(model: nn.Module) -> None:
    """`init_transformer_module` over every module, parents first (PaSST, CED; HTS-AT's `apply` goes children
    first, and the order decides which random numbers each weight gets)."""
    for module in model.modules():
        init_transformer_module(module)


class TaggerModel(nn.Module):
    """Base class: `frontend` turns the waveform into features, `forward_features` does the rest.

    Subclasses set `family`, and `derived_logits = True` when the official head outputs probabilities
    (PSLA pooling heads, PANNs decision-level Avg/Att): their logits are the log-odds of that probability.
    `arch` and `model_kwargs` are filled in by `create_model` so a checkpoint can rebuild the model.
    A family with more than one official way to take clips of other lengths lists them in `input_settings`
    (setting name -> choices, the first being the builder's default); `configure_inputs` switches between them.
    """

    family: str = ""
    derived_logits: bool = False
    input_settings: ClassVar[dict[str, tuple[str, ...]]] = {}
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

    def configure_inputs(self, **settings: str | None) -> None:
        """Choose how clips shorter or longer than the training length are taken (None: keep the current one).

        The choice also goes into `model_kwargs`, so a checkpoint saved or exported afterwards keeps it.
        """
        for name, value in settings.items():
            if value is None:
                continue
            flag = "--" + name.replace("_", "-")
            choices = self.input_settings.get(name)
            if choices is None:
                raise TaggerError(f"{flag} does not apply to {self.arch or self.family}: it takes such clips one way "
                                  "only (docs/models.md, 'Clip lengths')")
            if value not in choices:
                raise TaggerError(f"{flag} {value!r} is not one of {', '.join(choices)}")
            setattr(self, name, value)
            if hasattr(self, "model_kwargs"):
                self.model_kwargs[name] = value

    def forward(self, wave: Tensor) -> TaggerOutput:
        return self.forward_features(self.frontend(wave))

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        """From front-end features (B, F, T) as the front-end (or a feature store) gives them."""
        raise NotImplementedError


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Sigmoid for multi-label checkpoints, softmax over classes for single-label ones (float32)."""
    logits = logits.float()
    return torch.softmax(logits, dim=-1) if task == "multiclass" else torch.sigmoid(logits)
