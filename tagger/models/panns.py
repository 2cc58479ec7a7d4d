"""PANNs 2-D taggers (Cnn6/10/14, ResNets, MobileNets, Wavegram, decision-level SED) and the PANNs importer.

Submodules carry the official names of qiuqiangkong/audioset_tagging_cnn `pytorch/models.py`, so an official
checkpoint loads after prefix handling only. The torchlibrosa STFT/mel layers are replaced by the `LogMel`
front-end (`frontend`); SpecAugment and mixup live in the training code, dropout stays in the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagger.errors import TaggerError
from tagger.frontends import LogMel, LogMelConfig, Waveform
from tagger.models import ImportedWeights, create_model, list_models, model_entry, register_importer, register_model
from tagger.models.base import TaggerModel, TaggerOutput, logit_from_probability
from tagger.models.official import find_state_dict

__all__ = [
    "AttBlock", "Cnn", "Cnn14DecisionLevel", "Cnn14DecisionLevelAtt", "Cnn14DecisionLevelAvg",
    "Cnn14DecisionLevelMax", "ConvBlock", "ConvBlock5x5", "ConvPreWavBlock", "MobileNetV1",
    "MobileNetV2", "PannsModel", "ResNet", "WavegramCnn14", "clip_head", "framewise", "import_panns",
    "init_bn", "init_layer", "pool2d",
]

SEGMENT_RATIO = 32  # frames per segment of the decision-level models (5 time poolings by 2)


# --------------------------------------------------------------------------------------------- blocks


def init_layer(layer: nn.Module) -> None:
    """Xavier-uniform weight and zero bias, the official init of every conv and linear."""
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def init_bn(bn: nn.Module, weight: float = 1.0) -> None:
    """BatchNorm affine to (weight, 0); ResNet blocks zero the last BN's weight."""
    nn.init.constant_(bn.weight, weight)
    nn.init.zeros_(bn.bias)


def pool2d(x: Tensor, pool_size: tuple[int, int] = (2, 2), pool_type: str = "avg") -> Tensor:
    """The official block pooling: 'avg', 'max' or 'avg+max' (their sum); (1, 1) is the identity."""
    if tuple(pool_size) == (1, 1):
        return x
    if pool_type == "avg":
        return F.avg_pool2d(x, pool_size)
    if pool_type == "max":
        return F.max_pool2d(x, pool_size)
    if pool_type == "avg+max":
        return F.avg_pool2d(x, pool_size) + F.max_pool2d(x, pool_size)
    raise ValueError(f"pool_type must be 'avg', 'max' or 'avg+max', got {pool_type!r}")


class ConvBlock(nn.Module):
    """Two (conv3x3 -> BN -> ReLU) then pooling: the unit of Cnn10/Cnn14 and the ResNet/Wavegram stems."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for layer in (self.conv1, self.conv2):
            init_layer(layer)
        for bn in (self.bn1, self.bn2):
            init_bn(bn)

    def forward(self, x: Tensor, pool_size: tuple[int, int] = (2, 2), pool_type: str = "avg") -> Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        return pool2d(x, pool_size, pool_type)


class ConvBlock5x5(nn.Module):
    """One conv5x5 -> BN -> ReLU then pooling: the unit of Cnn6."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        init_layer(self.conv1)
        init_bn(self.bn1)

    def forward(self, x: Tensor, pool_size: tuple[int, int] = (2, 2), pool_type: str = "avg") -> Tensor:
        return pool2d(F.relu_(self.bn1(self.conv1(x))), pool_size, pool_type)


class ConvPreWavBlock(nn.Module):
    """Conv1d k3 -> BN -> ReLU, dilated Conv1d k3 d2 -> BN -> ReLU, max-pool: the Wavegram front layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, dilation=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.bn2 = nn.BatchNorm1d(out_channels)
        for layer in (self.conv1, self.conv2):
            init_layer(layer)
        for bn in (self.bn1, self.bn2):
            init_bn(bn)

    def forward(self, x: Tensor, pool_size: int = 4) -> Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        return F.max_pool1d(x, pool_size)


class AttBlock(nn.Module):
    """Attention pooling of DecisionLevelAtt: softmax(clamp(att)) over time weights sigmoid(cla).

    The official `bn_att` is never called in forward, so it is not built (the importer drops its keys).
    """

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.att = nn.Conv1d(n_in, n_out, 1)
        self.cla = nn.Conv1d(n_in, n_out, 1)
        init_layer(self.att)
        init_layer(self.cla)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, n_in, T) -> (clip probability (B, n_out), cla logits (B, n_out, T))."""
        weight = torch.softmax(torch.clamp(self.att(x), -10, 10), dim=-1)
        cla = self.cla(x)
        return (weight * torch.sigmoid(cla)).sum(dim=2), cla


def clip_head(
    x: Tensor, fc1: nn.Linear, fc_audioset: nn.Linear, training: bool, dropout: float = 0.5
) -> TaggerOutput:
    """The Cnn14 head on (B, C, T) features: max + mean over time, dropout, fc1 + ReLU, classifier.

    The logits come from the fc1 output without the second dropout, as the official clipwise_output does;
    `embedding` is that output after dropout (only active in training), as the official `embedding`.
    """
    x = x.max(dim=2).values + x.mean(dim=2)
    if dropout:
        x = F.dropout(x, p=dropout, training=training)
    hidden = F.relu_(fc1(x))
    logits = fc_audioset(hidden)
    return TaggerOutput(logits=logits, frame_logits=None, embedding=F.dropout(hidden, p=0.5, training=training))


def framewise(segments: Tensor, frames: int, ratio: int = SEGMENT_RATIO) -> Tensor:
    """(B, S, C) segment values -> (B, frames, C): each repeated `ratio` times, then the last one repeated.

    One gather equals the official interpolate(x, 32) followed by pad_framewise_output(x, frames).
    """
    index = (torch.arange(frames, device=segments.device) // ratio).clamp_(max=segments.shape[1] - 1)
    return segments.index_select(1, index)


# --------------------------------------------------------------------------------------------- models


class PannsModel(TaggerModel):
    """Common base: family, class count from the classifier, input checks and the official bn0.

    `min_frames` is the shortest input (front-end frames, or samples for waveform models) the pooling
    stack can take; shorter inputs would fail inside a pooling layer.
    """

    family = "panns"
    min_frames = 32

    @property
    def num_classes(self) -> int:
        return self.fc_audioset.out_features

    @property
    def min_input_frames(self) -> int:
        return self.min_frames

    def _check_input(self, spec: Tensor, bins: int | None) -> None:
        """Refuse the wrong layout or a clip too short for the pooling stack, with what to do."""
        name = self.arch or type(self).__name__
        if bins is None:
            if spec.ndim != 2:
                raise TaggerError(f"{name}: expected a (batch, samples) waveform, got shape {tuple(spec.shape)}")
        elif spec.ndim != 3 or spec.shape[1] != bins:
            raise TaggerError(
                f"{name}: expected log-mel features (batch, {bins}, frames), got shape {tuple(spec.shape)}"
            )
        if spec.shape[-1] < self.min_frames:
            unit = "samples" if bins is None else "frames"
            raise TaggerError(
                f"{name}: input of {spec.shape[-1]} {unit} is too short; need >= {self.min_frames} (pad the clip)"
            )

    def _normalised(self, spec: Tensor) -> Tensor:
        """(B, F, T) log-mel -> (B, 1, T, F) after bn0 over mel bins (the official transpose trick)."""
        self._check_input(spec, self.bn0.num_features)
        return self.bn0(spec.unsqueeze(-1)).transpose(1, 3)


def _logmel(defaults: dict[str, Any], overrides: dict[str, Any]) -> LogMel:
    return LogMel(LogMelConfig(**defaults), **overrides)


def _conv_blocks(owner: nn.Module, block: type[nn.Module], channels: Sequence[int]) -> None:
    """conv_block1..n with official names, each block's input being the previous block's output."""
    inputs = (1, *channels[:-1])
    for index, (cin, cout) in enumerate(zip(inputs, channels, strict=True), start=1):
        setattr(owner, f"conv_block{index}", block(cin, cout))


def _classifier(owner: nn.Module, width: int, hidden: int, num_classes: int) -> None:
    owner.fc1 = nn.Linear(width, hidden)
    owner.fc_audioset = nn.Linear(hidden, num_classes)
    init_layer(owner.fc1)
    init_layer(owner.fc_audioset)


class Cnn(PannsModel):
    """Cnn6 / Cnn10 / Cnn14: ConvBlocks with 2x2 average pooling and dropout 0.2, the sixth block unpooled."""

    def __init__(self, num_classes: int, channels: Sequence[int], block: type[nn.Module], frontend: LogMel) -> None:
        super().__init__()
        self.frontend = frontend
        self.bn0 = nn.BatchNorm2d(frontend.config.n_mels)
        init_bn(self.bn0)
        _conv_blocks(self, block, channels)
        self._depth = len(channels)
        self.min_frames = 2 ** min(self._depth, 5)
        _classifier(self, channels[-1], channels[-1], num_classes)

    def trunk(self, x: Tensor) -> Tensor:
        """(B, 1, T, F) -> (B, C, T / 32, F / 32) for Cnn14 (T / 16 for the 4-block models)."""
        for index in range(1, self._depth + 1):
            pool = (1, 1) if index == 6 else (2, 2)
            x = getattr(self, f"conv_block{index}")(x, pool_size=pool, pool_type="avg")
            x = F.dropout(x, p=0.2, training=self.training)
        return x

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        x = self.trunk(self._normalised(spec))
        return clip_head(x.mean(dim=3), self.fc1, self.fc_audioset, self.training)


class Cnn14DecisionLevel(Cnn):
    """Cnn14 scored per segment (31 per 10 s), then pooled to the clip; subclasses choose the pooling.

    frame_logits: the segment logits (pre-sigmoid) repeated 32x and padded with the last one up to the
    input frame count, as the official framewise_output (B, 1001, C) for 10 s, before its sigmoid.
    embedding (no official counterpart): the mean over segments of the per-segment fc1 + ReLU output.
    """

    def __init__(self, num_classes: int, frontend: LogMel) -> None:
        super().__init__(num_classes, _CNN14, ConvBlock, frontend)

    def segments(self, spec: Tensor) -> tuple[Tensor, Tensor]:
        """(per-segment fc1 + ReLU output (B, S, 2048) before its dropout, embedding (B, 2048))."""
        x = self.trunk(self._normalised(spec)).mean(dim=3)  # (B, C, S)
        x = F.max_pool1d(x, 3, stride=1, padding=1) + F.avg_pool1d(x, 3, stride=1, padding=1)
        x = F.dropout(x, p=0.5, training=self.training)
        hidden = F.relu_(self.fc1(x.transpose(1, 2)))
        return hidden, hidden.mean(dim=1)

    def pool(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """(clip logits (B, C), segment logits (B, S, C)) from the dropped-out hidden segments."""
        segments = self.fc_audioset(hidden)
        return segments.max(dim=1).values, segments

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        hidden, embedding = self.segments(spec)
        logits, segments = self.pool(F.dropout(hidden, p=0.5, training=self.training))
        return TaggerOutput(logits=logits, frame_logits=framewise(segments, spec.shape[-1]), embedding=embedding)


class Cnn14DecisionLevelMax(Cnn14DecisionLevel):
    """Clip logits = max over segments of the segment logits: sigmoid is monotonic, so sigmoid(logits) is
    exactly the official clipwise_output and the logits are true logits."""


class Cnn14DecisionLevelAvg(Cnn14DecisionLevel):
    """The official clip output is the mean of segment probabilities; logits are its log-odds."""

    derived_logits = True

    def pool(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        segments = self.fc_audioset(hidden)
        return logit_from_probability(torch.sigmoid(segments).mean(dim=1)), segments


class Cnn14DecisionLevelAtt(Cnn14DecisionLevel):
    """Attention pooling (AttBlock) instead of fc_audioset; logits are the log-odds of the official clip output."""

    derived_logits = True

    def __init__(self, num_classes: int, frontend: LogMel) -> None:
        super().__init__(num_classes, frontend)
        del self.fc_audioset
        self.att_block = AttBlock(2048, num_classes)

    @property
    def num_classes(self) -> int:
        return self.att_block.cla.out_channels

    def pool(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        prob, cla = self.att_block(hidden.transpose(1, 2))
        return logit_from_probability(prob), cla.transpose(1, 2)


class _BasicBlock(nn.Module):
    """ResNet basic block; stride 2 is an average pool before conv1, dropout 0.1 between the convs."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        init_layer(self.conv1)
        init_layer(self.conv2)
        init_bn(self.bn1)
        init_bn(self.bn2, weight=0.0)

    def forward(self, x: Tensor) -> Tensor:
        out = F.avg_pool2d(x, 2) if self.stride == 2 else x
        out = F.relu_(self.bn1(self.conv1(out)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu_(out + identity)


class _Bottleneck(nn.Module):
    """ResNet bottleneck (x4 expansion); stride 2 is an average pool on the block input."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample
        for layer in (self.conv1, self.conv2, self.conv3):
            init_layer(layer)
        init_bn(self.bn1)
        init_bn(self.bn2)
        init_bn(self.bn3, weight=0.0)

    def forward(self, x: Tensor) -> Tensor:
        out = F.avg_pool2d(x, 2) if self.stride == 2 else x
        out = F.relu_(self.bn1(self.conv1(out)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu_(out + identity)


class _ResNetTrunk(nn.Module):
    """The official `_ResNet`: layer1..4 of 64/128/256/512 planes, strides 1, 2, 2, 2."""

    def __init__(self, block: type[nn.Module], layers: Sequence[int]) -> None:
        super().__init__()
        inplanes = 64
        stages = zip((64, 128, 256, 512), layers, (1, 2, 2, 2), strict=True)
        for index, (planes, count, stride) in enumerate(stages, start=1):
            setattr(self, f"layer{index}", self._layer(block, inplanes, planes, count, stride))
            inplanes = planes * block.expansion

    @staticmethod
    def _layer(block: type[nn.Module], inplanes: int, planes: int, count: int, stride: int) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or inplanes != out:
            conv, bn = nn.Conv2d(inplanes, out, 1, bias=False), nn.BatchNorm2d(out)
            init_layer(conv)
            init_bn(bn)
            # Keep the official Sequential indices: the average pool sits at index 0 when striding.
            downsample = nn.Sequential(nn.AvgPool2d(2), conv, bn) if stride == 2 else nn.Sequential(conv, bn)
        blocks = [block(inplanes, planes, stride, downsample)]
        blocks += [block(out, planes) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNet(PannsModel):
    """ResNet22/38/54: conv_block1, a ResNet trunk, avg-pool, conv_block_after1 to 2048, the Cnn14 head."""

    def __init__(self, num_classes: int, block: type[nn.Module], layers: Sequence[int], frontend: LogMel) -> None:
        super().__init__()
        self.frontend = frontend
        self.bn0 = nn.BatchNorm2d(frontend.config.n_mels)
        init_bn(self.bn0)
        self.conv_block1 = ConvBlock(1, 64)
        self.resnet = _ResNetTrunk(block, layers)
        self.conv_block_after1 = ConvBlock(512 * block.expansion, 2048)
        _classifier(self, 2048, 2048, num_classes)

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        x = self.conv_block1(self._normalised(spec), pool_size=(2, 2), pool_type="avg")
        x = F.dropout(x, p=0.2, training=self.training)
        x = F.avg_pool2d(self.resnet(x), 2)
        x = F.dropout(x, p=0.2, training=self.training)
        x = self.conv_block_after1(x, pool_size=(1, 1), pool_type="avg")
        x = F.dropout(x, p=0.2, training=self.training)
        return clip_head(x.mean(dim=3), self.fc1, self.fc_audioset, self.training)


def _stride_pool(stride: int) -> nn.Module:
    """The MobileNets stride with an average pool after the 3x3 conv; Identity keeps the index when 1."""
    return nn.AvgPool2d(stride) if stride > 1 else nn.Identity()


def _initialised(*layers: nn.Module) -> nn.Sequential:
    """A Sequential with the official init applied to its convs and BatchNorms."""
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            init_layer(layer)
        elif isinstance(layer, nn.BatchNorm2d):
            init_bn(layer)
    return nn.Sequential(*layers)


def _conv_bn(inp: int, oup: int, stride: int, act: type[nn.Module]) -> nn.Sequential:
    return _initialised(nn.Conv2d(inp, oup, 3, 1, 1, bias=False), _stride_pool(stride), nn.BatchNorm2d(oup), act())


class MobileNetV1(PannsModel):
    """MobileNetV1: a 3x3 stem and 13 depthwise-separable blocks, stride as AvgPool after the depthwise conv."""

    _SETTINGS = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
                 *((512, 512, 1),) * 5, (512, 1024, 2), (1024, 1024, 1))

    def __init__(self, num_classes: int, frontend: LogMel) -> None:
        super().__init__()
        self.frontend = frontend
        self.bn0 = nn.BatchNorm2d(frontend.config.n_mels)
        init_bn(self.bn0)
        layers = [_conv_bn(1, 32, 2, nn.ReLU)]
        for inp, oup, stride in self._SETTINGS:
            layers.append(_initialised(
                nn.Conv2d(inp, inp, 3, 1, 1, groups=inp, bias=False), _stride_pool(stride), nn.BatchNorm2d(inp),
                nn.ReLU(), nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(),
            ))
        self.features = nn.Sequential(*layers)
        _classifier(self, 1024, 1024, num_classes)

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        x = self.features(self._normalised(spec))
        return clip_head(x.mean(dim=3), self.fc1, self.fc_audioset, self.training)


class _InvertedResidual(nn.Module):
    """MobileNetV2 block under the official name `conv`; the stride is an AvgPool after the depthwise conv."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        depthwise = (
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False), _stride_pool(stride),
            nn.BatchNorm2d(hidden), nn.ReLU6(), nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        )
        expand = () if expand_ratio == 1 else (
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()
        )
        self.conv = _initialised(*expand, *depthwise)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(PannsModel):
    """MobileNetV2 with the standard (t, c, n, s) table, ReLU6, a 1x1 conv to 1280, no dropout before fc1."""

    _SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 2), (6, 160, 3, 1),
                 (6, 320, 1, 1))

    def __init__(self, num_classes: int, frontend: LogMel) -> None:
        super().__init__()
        self.frontend = frontend
        self.bn0 = nn.BatchNorm2d(frontend.config.n_mels)
        init_bn(self.bn0)
        layers: list[nn.Module] = [_conv_bn(1, 32, 2, nn.ReLU6)]
        inp = 32
        for expand, oup, count, stride in self._SETTINGS:
            for index in range(count):
                layers.append(_InvertedResidual(inp, oup, stride if index == 0 else 1, expand))
                inp = oup
        layers.append(_initialised(nn.Conv2d(inp, 1280, 1, 1, 0, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()))
        self.features = nn.Sequential(*layers)
        _classifier(self, 1280, 1024, num_classes)

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        x = self.features(self._normalised(spec))
        return clip_head(x.mean(dim=3), self.fc1, self.fc_audioset, self.training, dropout=0.0)


class WavegramCnn14(PannsModel):
    """Wavegram-Cnn14 (and, with_logmel, Wavegram-Logmel-Cnn14): a learnt 1-D front-end folded into a 2-D map.

    Takes the waveform (front-end `Waveform`). The Wavegram branch gives (B, 64, T/2, 32) after pre_block4;
    the log-mel variant computes its own log-mel with the `logmel_extractor` submodule (official name, so
    its melW keeps the official key), runs bn0 + conv_block1 and concatenates both on the channel axis.
    Wavegram-Cnn14's official bn0 and conv_block1 are never used in forward and are not built here.
    """

    min_frames = 5 * 4 * 4 * 4 * SEGMENT_RATIO  # samples: pre_conv0 stride 5, three max-pools of 4, 32

    def __init__(self, num_classes: int, with_logmel: bool, sample_rate: int = 32000) -> None:
        super().__init__()
        self.frontend = Waveform(sample_rate=sample_rate)
        self.pre_conv0 = nn.Conv1d(1, 64, 11, stride=5, padding=5, bias=False)
        self.pre_bn0 = nn.BatchNorm1d(64)
        init_layer(self.pre_conv0)
        init_bn(self.pre_bn0)
        self.pre_block1 = ConvPreWavBlock(64, 64)
        self.pre_block2 = ConvPreWavBlock(64, 128)
        self.pre_block3 = ConvPreWavBlock(128, 128)
        self.pre_block4 = ConvBlock(4, 64)
        self.with_logmel = with_logmel
        if with_logmel:
            self.logmel_extractor = LogMel(sample_rate=sample_rate)
            self.bn0 = nn.BatchNorm2d(self.logmel_extractor.config.n_mels)
            init_bn(self.bn0)
            self.conv_block1 = ConvBlock(1, 64)
        channels = (128 if with_logmel else 64, 128, 256, 512, 1024, 2048)
        for index in range(2, 7):
            setattr(self, f"conv_block{index}", ConvBlock(channels[index - 2], channels[index - 1]))
        _classifier(self, 2048, 2048, num_classes)

    def wavegram(self, wave: Tensor) -> Tensor:
        """(B, S) -> (B, 64, S / 640, 32): 128 learnt channels regrouped as 4 maps of 32 'frequency' bins."""
        x = F.relu_(self.pre_bn0(self.pre_conv0(wave[:, None, :])))
        x = self.pre_block3(self.pre_block2(self.pre_block1(x, 4), 4), 4)
        x = x.reshape(x.shape[0], -1, 32, x.shape[-1]).transpose(2, 3)
        return self.pre_block4(x, pool_size=(2, 1), pool_type="avg")

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        self._check_input(spec, None)
        x = self.wavegram(spec)
        if self.with_logmel:
            mel = self.logmel_extractor(spec)
            mel = self.bn0(mel.unsqueeze(-1)).transpose(1, 3)
            mel = self.conv_block1(mel, pool_size=(2, 2), pool_type="avg")
            # Both branches have 1 + S // 640 steps at 10 s; other lengths can differ by one, so crop.
            steps = min(mel.shape[2], x.shape[2])
            x = torch.cat((mel[:, :, :steps], x[:, :, :steps]), dim=1)
        x = F.dropout(x, p=0.2, training=self.training)
        for index in range(2, 7):
            pool = (1, 1) if index == 6 else (2, 2)
            x = getattr(self, f"conv_block{index}")(x, pool_size=pool, pool_type="avg")
            x = F.dropout(x, p=0.2, training=self.training)
        return clip_head(x.mean(dim=3), self.fc1, self.fc_audioset, self.training)


# --------------------------------------------------------------------------------------------- registry

_LOGMEL_32K: dict[str, Any] = {"sample_rate": 32000, "n_fft": 1024, "hop_length": 320, "win_length": 1024,
                               "n_mels": 64, "fmin": 50.0, "fmax": 14000.0}
_LOGMEL_16K = {**_LOGMEL_32K, "sample_rate": 16000, "n_fft": 512, "hop_length": 160, "win_length": 512,
               "fmax": 8000.0}
_LOGMEL_8K = {**_LOGMEL_32K, "sample_rate": 8000, "n_fft": 256, "hop_length": 80, "win_length": 256,
              "fmax": 4000.0}
_CNN14 = (64, 128, 256, 512, 1024, 2048)
_CNN10 = (64, 128, 256, 512)


def _register_logmel(name: str, sample_rate: int, description: str, frame_level: bool = False):
    return register_model(name, family="panns", frontend="panns-logmel", sample_rate=sample_rate,
                          frame_level=frame_level, description=description)


@_register_logmel("panns-cnn6", 32000, "PANNs Cnn6: 4 ConvBlock5x5, 4.8 M params, AudioSet mAP 0.343")
def build_cnn6(num_classes: int = 527, **frontend: Any) -> Cnn:
    return Cnn(num_classes, _CNN10, ConvBlock5x5, _logmel(_LOGMEL_32K, frontend))


@_register_logmel("panns-cnn10", 32000, "PANNs Cnn10: 4 ConvBlocks, 5.2 M params, AudioSet mAP 0.380")
def build_cnn10(num_classes: int = 527, **frontend: Any) -> Cnn:
    return Cnn(num_classes, _CNN10, ConvBlock, _logmel(_LOGMEL_32K, frontend))


@_register_logmel("panns-cnn14", 32000, "PANNs Cnn14: 6 ConvBlocks, 80.8 M params, AudioSet mAP 0.431")
def build_cnn14(num_classes: int = 527, **frontend: Any) -> Cnn:
    return Cnn(num_classes, _CNN14, ConvBlock, _logmel(_LOGMEL_32K, frontend))


@_register_logmel("panns-cnn14-16k", 16000, "PANNs Cnn14 at 16 kHz (n_fft 512, hop 160, fmax 8 kHz), mAP 0.438")
def build_cnn14_16k(num_classes: int = 527, **frontend: Any) -> Cnn:
    return Cnn(num_classes, _CNN14, ConvBlock, _logmel(_LOGMEL_16K, frontend))


@_register_logmel("panns-cnn14-8k", 8000, "PANNs Cnn14 at 8 kHz (n_fft 256, hop 80, fmax 4 kHz)")
def build_cnn14_8k(num_classes: int = 527, **frontend: Any) -> Cnn:
    return Cnn(num_classes, _CNN14, ConvBlock, _logmel(_LOGMEL_8K, frontend))


@_register_logmel("panns-resnet22", 32000, "PANNs ResNet22: basic blocks [2,2,2,2], 63.7 M params, mAP 0.430")
def build_resnet22(num_classes: int = 527, **frontend: Any) -> ResNet:
    return ResNet(num_classes, _BasicBlock, (2, 2, 2, 2), _logmel(_LOGMEL_32K, frontend))


@_register_logmel("panns-resnet38", 32000, "PANNs ResNet38: basic blocks [3,4,6,3], 73.8 M params, mAP 0.434")
def build_resnet38(num_classes: int = 527, **frontend: Any) -> ResNet:
    return ResNet(num_classes, _BasicBlock, (3, 4, 6, 3), _logmel(_LOGMEL_32K, frontend))


@_register_logmel("panns-resnet54", 32000, "PANNs ResNet54: bottlenecks [3,4,6,3], 104.3 M params")
def build_resnet54(num_classes: int = 527, **frontend: Any) -> ResNet:
    return ResNet(num_classes, _Bottleneck, (3, 4, 6, 3), _logmel(_LOGMEL_32K, frontend))


@_register_logmel("panns-mobilenetv1", 32000, "PANNs MobileNetV1: 4.8 M params, AudioSet mAP 0.389")
def build_mobilenetv1(num_classes: int = 527, **frontend: Any) -> MobileNetV1:
    return MobileNetV1(num_classes, _logmel(_LOGMEL_32K, frontend))


@_register_logmel("panns-mobilenetv2", 32000, "PANNs MobileNetV2: 4.1 M params, AudioSet mAP 0.383")
def build_mobilenetv2(num_classes: int = 527, **frontend: Any) -> MobileNetV2:
    return MobileNetV2(num_classes, _logmel(_LOGMEL_32K, frontend))


@register_model("panns-wavegram-cnn14", family="panns", frontend="waveform", sample_rate=32000,
                description="PANNs Wavegram-Cnn14: learnt 1-D front-end + Cnn14 body, 81.0 M params")
def build_wavegram_cnn14(num_classes: int = 527) -> WavegramCnn14:
    return WavegramCnn14(num_classes, with_logmel=False)


@register_model("panns-wavegram-logmel-cnn14", family="panns", frontend="waveform", sample_rate=32000,
                description="PANNs Wavegram-Logmel-Cnn14: wavegram + log-mel branches, mAP 0.439")
def build_wavegram_logmel_cnn14(num_classes: int = 527) -> WavegramCnn14:
    return WavegramCnn14(num_classes, with_logmel=True)


@_register_logmel("panns-cnn14-decisionlevel-max", 32000,
                  "PANNs Cnn14_DecisionLevelMax (SED): clip = max over 31 segments, mAP 0.385", frame_level=True)
def build_cnn14_decisionlevel_max(num_classes: int = 527, **frontend: Any) -> Cnn14DecisionLevel:
    return Cnn14DecisionLevelMax(num_classes, _logmel(_LOGMEL_32K, frontend))


@_register_logmel("panns-cnn14-decisionlevel-avg", 32000,
                  "PANNs Cnn14_DecisionLevelAvg (SED): clip = mean of segment probabilities", frame_level=True)
def build_cnn14_decisionlevel_avg(num_classes: int = 527, **frontend: Any) -> Cnn14DecisionLevel:
    return Cnn14DecisionLevelAvg(num_classes, _logmel(_LOGMEL_32K, frontend))


@_register_logmel("panns-cnn14-decisionlevel-att", 32000,
                  "PANNs Cnn14_DecisionLevelAtt (SED): attention over segments", frame_level=True)
def build_cnn14_decisionlevel_att(num_classes: int = 527, **frontend: Any) -> Cnn14DecisionLevel:
    return Cnn14DecisionLevelAtt(num_classes, _logmel(_LOGMEL_32K, frontend))


# --------------------------------------------------------------------------------------------- importer

_STFT_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight")
_MEL_KEY = "logmel_extractor.melW"
_CLASSIFIER_KEYS = ("fc_audioset.weight", "att_block.cla.weight")
# Official keys that forward never uses: dropped when the candidate model does not have them.
_UNUSED_OFFICIAL = {
    "bn0.": "Wavegram_Cnn14",
    "conv_block1.": "Wavegram_Cnn14",
    "conv_block1.downsample.": "DaiNet19",
    "conv_block1.bn_downsample.": "DaiNet19",
    "att_block.bn_att.": "Cnn14_DecisionLevelAtt",
}


@lru_cache(maxsize=64)
def _layout(arch: str, num_classes: int) -> tuple[dict[str, tuple[int, ...]], str | None, LogMelConfig | None]:
    """(key -> shape, prefix of the model's LogMel or None, its config) of a model, built on the meta device."""
    try:
        with torch.device("meta"):
            model = create_model(arch, num_classes=num_classes)
    except (RuntimeError, NotImplementedError):  # a builder that needs real tensors: build it for real
        model = create_model(arch, num_classes=num_classes)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, LogMel):
            return shapes, name, module.config
    return shapes, None, None


def _unwrap(raw: Any) -> tuple[dict[str, Tensor], list[str]]:
    """The state_dict inside an official {'model': sd, ...} file or a raw one, without 'module.' prefixes."""
    state, notes = find_state_dict(raw, "a PANNs checkpoint (the audioset_tagging_cnn {'model': state_dict} .pth)")
    if any(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
        notes.append("stripped the 'module.' prefix (DataParallel)")
    return state, notes


def _map_state(
    state: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], logmel_prefix: str | None
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """(our state_dict, dropped official keys, problems in key order) for one candidate layout."""
    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    problems: list[str] = []
    for key, value in state.items():
        if key in _STFT_KEYS and logmel_prefix is not None:
            continue  # checked against the front-end, not loaded
        target = f"{logmel_prefix}.melW" if key == _MEL_KEY and logmel_prefix is not None else key
        if target in shapes:
            mapped[target] = value
            if tuple(value.shape) != shapes[target]:
                problems.append(f"shape mismatch at {key}: checkpoint {tuple(value.shape)}, "
                                f"model {shapes[target]}")
        elif any(key.startswith(prefix) for prefix in _UNUSED_OFFICIAL):
            dropped.append(key)
        else:
            problems.append(f"unexpected key {key}")
    if logmel_prefix is not None:
        problems += [f"missing key {key}" for key in _STFT_KEYS if key not in state]
    problems += [f"missing key {key}" for key in shapes if key not in mapped]
    return mapped, dropped, problems


def _classes(state: dict[str, Tensor]) -> int:
    for key in _CLASSIFIER_KEYS:
        if key in state and state[key].ndim >= 2:
            return int(state[key].shape[0])
    raise TaggerError(
        f"not a PANNs checkpoint: expected a classifier key ({' or '.join(_CLASSIFIER_KEYS)}); "
        f"found e.g. {', '.join(list(state)[:3])}"
    )


def _dropped_note(dropped: list[str]) -> str:
    groups = sorted({max((p for p in _UNUSED_OFFICIAL if key.startswith(p)), key=len) for key in dropped})
    owners = sorted({_UNUSED_OFFICIAL[group] for group in groups})
    return (f"dropped {len(dropped)} official keys that forward never uses ({', '.join(g + '*' for g in groups)}; "
            f"{', '.join(owners)}); this model does not build those modules")


@register_importer("panns")
def import_panns(raw: Any, arch: str | None = None) -> ImportedWeights:
    """An official audioset_tagging_cnn checkpoint (or raw state_dict) mapped to a registered PANNs model.

    Without `arch`, the architecture is the registered "panns" model whose keys and shapes match; the class
    count comes from the classifier. The torchlibrosa STFT kernels and mel filters are checked against our
    front-end (only melW is kept, as `<front-end>.melW`).
    """
    state, notes = _unwrap(raw)
    num_classes = _classes(state)
    if arch is not None:
        entry = model_entry(arch)
        if entry.family != "panns":
            raise TaggerError(f"{arch} is a {entry.family!r} model; the panns importer builds PANNs models only")
        candidates = [arch]
    else:
        candidates = [entry.name for entry in list_models() if entry.family == "panns"]
    matches, closest = [], None
    for name in candidates:
        shapes, prefix, config = _layout(name, num_classes)
        mapped, dropped, problems = _map_state(state, shapes, prefix)
        if not problems:
            matches.append((name, mapped, dropped, prefix, config))
        elif closest is None or len(problems) < len(closest[1]):
            closest = (name, problems)
    if not matches:
        name, problems = closest
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        hint = "" if arch else "; pass the architecture explicitly if it is a registered PANNs model"
        raise TaggerError(f"PANNs checkpoint does not fit {name}: {problems[0]}{more}{hint}")
    name, mapped, dropped, prefix, config = matches[0]
    if len(matches) > 1:
        others = ", ".join(m[0] for m in matches[1:])
        notes.append(f"the keys also fit {others} (same weights, other pooling); chose {name}, "
                     "pass the architecture to pick another")
    if prefix is not None:
        LogMel(config).check_official_tensors(state[_STFT_KEYS[0]], state[_STFT_KEYS[1]], state[_MEL_KEY])
        target = "kept" if prefix == "logmel_extractor" else f"mapped to {prefix}.melW"
        notes.append(f"checked the torchlibrosa STFT kernels and mel filters against our front-end "
                     f"(not loaded; ours are equal); {_MEL_KEY} {target}")
    if dropped:
        notes.append(_dropped_note(dropped))
    return ImportedWeights(arch=name, model_kwargs={"num_classes": num_classes}, state_dict=mapped, notes=notes)
