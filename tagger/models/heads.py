"""Pooling heads that turn per-time features into clip probabilities (PSLA's MeanPooling/Attention/MHeadAttention).

Every head takes trunk features (B, C, T) or PSLA's (B, C, T, 1) layout and returns a `Pooled` tuple. The
projections are 1×1 Conv2d, as in the official `HigherModels.py`, so the keys match the official files
(`cla.weight`; `att.weight`; `att.{i}.weight`, `cla.{i}.weight`, `head_weight`). Both activations are sigmoid:
the clip output is already a probability, which a TaggerModel turns into logits with logit_from_probability.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tagger.errors import TaggerError

__all__ = ["AttentionPooling", "MeanPooling", "MultiHeadAttentionPooling", "Pooled"]

_ATT_EPS = 1e-7  # the official clamp of the attention before normalising over time


class Pooled(NamedTuple):
    """clip (B, K) probabilities; frame (B, K, T) per-time class probabilities (the `cla` branch, head-weighted
    for several heads); attention: time-normalised weights (B, K, T), (B, H, K, T) for several heads, or None."""

    clip: Tensor
    frame: Tensor
    attention: Tensor | None


def _as_4d(x: Tensor) -> Tensor:
    """(B, C, T) -> (B, C, T, 1), the layout the official 1×1 convolutions see."""
    if x.ndim == 3:
        return x.unsqueeze(-1)
    if x.ndim == 4 and x.shape[-1] == 1:
        return x
    raise TaggerError(f"pooling head: expected features (B, C, T) or (B, C, T, 1), got {tuple(x.shape)}")


def _projection(in_channels: int, num_classes: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, num_classes, kernel_size=1)


def _he_uniform(conv: nn.Conv2d) -> None:
    """HigherModels.init_layer: uniform with std sqrt(2 / fan_in), zero bias (Attention and MeanPooling only)."""
    fan_in = conv.weight[0].numel()
    bound = math.sqrt(2.0 / fan_in) * math.sqrt(3.0)
    nn.init.uniform_(conv.weight, -bound, bound)
    nn.init.zeros_(conv.bias)


def _attend(att: Tensor, cla: Tensor) -> tuple[Tensor, Tensor]:
    """Clip probability Σ_t a_t·cla_t with a = clamp(att) / Σ_t clamp(att), over the last (time) axis."""
    att = att.clamp(_ATT_EPS, 1.0 - _ATT_EPS)
    norm = att / att.sum(-1, keepdim=True)
    return (norm * cla).sum(-1), norm


class MeanPooling(nn.Module):
    """Mean over time of per-time sigmoid class probabilities (PSLA head_num=0)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cla = _projection(in_channels, num_classes)
        _he_uniform(self.cla)

    @property
    def num_classes(self) -> int:
        return self.cla.out_channels

    def forward(self, x: Tensor) -> Pooled:
        cla = torch.sigmoid(self.cla(_as_4d(x)))[..., 0]
        return Pooled(cla.mean(-1), cla, None)


class AttentionPooling(nn.Module):
    """Single-head attention pooling (PSLA head_num=1): sigmoid attention normalised over time."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.att = _projection(in_channels, num_classes)
        self.cla = _projection(in_channels, num_classes)
        _he_uniform(self.att)
        _he_uniform(self.cla)

    @property
    def num_classes(self) -> int:
        return self.cla.out_channels

    def forward(self, x: Tensor) -> Pooled:
        x = _as_4d(x)
        att = torch.sigmoid(self.att(x))[..., 0]
        cla = torch.sigmoid(self.cla(x))[..., 0]
        clip, norm = _attend(att, cla)
        return Pooled(clip, cla, norm)


class MultiHeadAttentionPooling(nn.Module):
    """n attention heads mixed by a learnable `head_weight` (init 1/n), as PSLA's MHeadAttention.

    The official class keeps PyTorch's default Conv2d initialisation (it has no init_weights), and so do we.
    The mixed clip output can exceed 1 when the learned weights sum above 1.
    """

    def __init__(self, in_channels: int, num_classes: int, num_heads: int = 4) -> None:
        super().__init__()
        if num_heads < 1:
            raise TaggerError(f"num_heads must be >= 1, got {num_heads}")
        self.att = nn.ModuleList(_projection(in_channels, num_classes) for _ in range(num_heads))
        self.cla = nn.ModuleList(_projection(in_channels, num_classes) for _ in range(num_heads))
        self.head_weight = nn.Parameter(torch.full((num_heads,), 1.0 / num_heads))

    @property
    def num_classes(self) -> int:
        return self.cla[0].out_channels

    def forward(self, x: Tensor) -> Pooled:
        x = _as_4d(x)
        att = torch.sigmoid(torch.stack([conv(x) for conv in self.att], 1))[..., 0]  # (B, H, K, T)
        cla = torch.sigmoid(torch.stack([conv(x) for conv in self.cla], 1))[..., 0]
        per_head, norm = _attend(att, cla)  # (B, H, K)
        weight = self.head_weight.view(-1, 1)
        clip = (per_head * weight).sum(1)
        frame = (cla * weight.unsqueeze(-1)).sum(1)
        return Pooled(clip, frame, norm)


class TokenSemanticHead(nn.Conv2d):
    """HTS-AT's token-semantic (tscam) head: per-time-step class logits from the last Swin token grid.

    The grid (B, C, H, W) holds `freq_ratio` time chunks stacked along H (the spectrogram was folded that way);
    un-stacking them gives (B, C, H // freq_ratio, freq_ratio * W): a few frequency rows by S time steps. The
    convolution spans all rows and 3 steps, so each step gets one logit per class. It subclasses Conv2d so the
    weights keep the official keys `tscam_conv.weight` / `tscam_conv.bias`.

    forward(tokens) -> (clip logits (B, K) = mean over the steps, step logits (B, K, S), latent (B, C) = mean
    of all tokens). The official clip output is sigmoid of that mean, i.e. the mean is taken before the sigmoid.
    """

    def __init__(self, in_channels: int, num_classes: int, freq_rows: int, freq_ratio: int) -> None:
        super().__init__(in_channels, num_classes, kernel_size=(freq_rows, 3), padding=(0, 1))
        self.freq_ratio = freq_ratio

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        b, c, h, w = tokens.shape
        rows = self.kernel_size[0]
        if h != rows * self.freq_ratio:
            raise TaggerError(f"token-semantic head: expected {rows * self.freq_ratio} token rows, got {h}")
        x = tokens.reshape(b, c, self.freq_ratio, rows, w).transpose(2, 3).reshape(b, c, rows, self.freq_ratio * w)
        latent = x.flatten(2).mean(-1)
        steps = super().forward(x).flatten(2)
        return steps.mean(-1), steps, latent
