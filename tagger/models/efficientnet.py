"""EfficientNet-B0…B7 trunk laid out as efficientnet_pytorch 0.7.0 builds it (PSLA's trunk), with ImageNet loading.

The module and key names are efficientnet_pytorch's (`_conv_stem`, `_bn0`, `_blocks.{k}._depthwise_conv`, …),
so official PSLA checkpoints load after stripping their prefix. Numerics follow efficientnet_pytorch 0.7.0:

* "same" padding is static, computed once for the variant's ImageNet image size (B2: 260 px), not for the
  spectrogram; 0.7.0 pads ceil(total / 2) on *both* sides (ZeroPad2d((1, 1, 1, 1)) for a stride-2 3×3 conv).
  For these sizes that is always kernel // 2, so the padding is the convolution's own symmetric padding.
  timm's `padding='same'` is computed per input (asymmetric on even sizes) and would not reproduce it.
* BatchNorm eps 1e-3, momentum 0.01 (TensorFlow's 0.99); Swish x·sigmoid(x); squeeze-excitation 0.25.
* drop-connect (stochastic depth) in training only, rate 0.2 · block_index / num_blocks, per sample.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tagger.errors import TaggerError

__all__ = [
    "VARIANTS", "EfficientNet", "EfficientNetVariant", "MBConvBlock", "drop_connect", "imagenet_to_trunk",
    "round_filters", "round_repeats", "static_same_padding", "swish", "trunk_signature",
]

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # PyTorch convention for TensorFlow's 0.99
_SE_RATIO = 0.25
_DIVISOR = 8


@dataclass(frozen=True)
class EfficientNetVariant:
    """Compound-scaling coefficients and the ImageNet resolution that fixes the static padding."""

    width: float
    depth: float
    image_size: int


VARIANTS: dict[int, EfficientNetVariant] = {
    0: EfficientNetVariant(1.0, 1.0, 224),
    1: EfficientNetVariant(1.0, 1.1, 240),
    2: EfficientNetVariant(1.1, 1.2, 260),
    3: EfficientNetVariant(1.2, 1.4, 300),
    4: EfficientNetVariant(1.4, 1.8, 380),
    5: EfficientNetVariant(1.6, 2.2, 456),
    6: EfficientNetVariant(1.8, 2.6, 528),
    7: EfficientNetVariant(2.0, 3.1, 600),
}

# B0 stages: (repeats, kernel, stride, expand ratio, input filters, output filters); all with SE 0.25 and skip.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280


def round_filters(filters: int, width: float) -> int:
    """Channels scaled by the width coefficient, rounded to a multiple of 8 but never down by more than 10 %."""
    scaled = filters * width
    rounded = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += _DIVISOR
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks in a stage scaled by the depth coefficient, rounded up."""
    return int(math.ceil(depth * repeats))


def trunk_signature(variant: int) -> tuple[int, int]:
    """(number of blocks, output channels): what identifies a variant in a state_dict."""
    spec = VARIANTS[variant]
    blocks = sum(round_repeats(stage[0], spec.depth) for stage in _STAGES)
    return blocks, round_filters(_HEAD_FILTERS, spec.width)


def static_same_padding(image_size: int, kernel: int, stride: int) -> int:
    """Per-side padding efficientnet_pytorch 0.7.0 fixes for a square image: ceil(total / 2) on each side.

    total is TensorFlow's "same" padding for this image size; 0.7.0 puts its larger half on both sides
    (later versions split it left/right), which is what PSLA's checkpoints were trained with.
    """
    out = math.ceil(image_size / stride)
    total = max((out - 1) * stride + kernel - image_size, 0)
    return total - total // 2


def drop_connect(x: Tensor, rate: float, training: bool) -> Tensor:
    """Drop each sample's residual branch with probability `rate` and rescale the kept ones (training only)."""
    if not training or not rate:
        return x
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device))
    return x / keep * mask


def swish(x: Tensor) -> Tensor:
    """x·sigmoid(x) as efficientnet_pytorch computes it, which keeps PSLA's features bit-exact (F.silu rounds
    differently: 8e-5 on the fixture features). Under autograd F.silu, which like the official
    MemoryEfficientSwish saves only its input."""
    if x.requires_grad:
        return F.silu(x)
    return torch.sigmoid(x).mul_(x)


def _conv(cin: int, cout: int, kernel: int, image_size: int, stride: int = 1, groups: int = 1, bias: bool = False):
    pad = static_same_padding(image_size, kernel, stride)
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, groups=groups, bias=bias)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1×1 expand, depthwise k×k, squeeze-excitation, 1×1 project, skip when shapes allow."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, expand: int, image_size: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _conv(cin, mid, 1, image_size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, image_size, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        squeezed = max(1, int(cin * _SE_RATIO))
        self._se_reduce = nn.Conv2d(mid, squeezed, 1)
        self._se_expand = nn.Conv2d(squeezed, mid, 1)
        self._project_conv = _conv(mid, cout, 1, image_size)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.drop_rate = drop_rate

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs
        if hasattr(self, "_expand_conv"):
            x = swish(self._bn0(self._expand_conv(x)))
        x = swish(self._bn1(self._depthwise_conv(x)))
        squeezed = self._se_expand(swish(self._se_reduce(F.adaptive_avg_pool2d(x, 1))))
        x = torch.sigmoid(squeezed) * x
        x = self._bn2(self._project_conv(x))
        if self.residual:
            x = drop_connect(x, self.drop_rate, self.training) + inputs
        return x


class EfficientNet(nn.Module):
    """The convolutional trunk (efficientnet_pytorch `extract_features`): (B, in, H, W) -> (B, C, H/32, W/32).

    No pooling, dropout or classifier: PSLA replaces `_fc` by Identity and only uses the features.
    """

    def __init__(self, variant: int = 0, in_channels: int = 1, drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise TaggerError(f"EfficientNet variant must be one of 0..7 (B0..B7), got {variant!r}")
        spec = VARIANTS[variant]
        self.variant = variant
        size = spec.image_size
        stem = round_filters(_STEM_FILTERS, spec.width)
        self._conv_stem = _conv(in_channels, stem, 3, size, stride=2)
        self._bn0 = _bn(stem)
        size = math.ceil(size / 2)
        layout = []  # (cin, cout, kernel, stride, expand, native input size) per block
        for repeats, kernel, stride, expand, cin, cout in _STAGES:
            cin, cout = round_filters(cin, spec.width), round_filters(cout, spec.width)
            for index in range(round_repeats(repeats, spec.depth)):
                first = index == 0
                layout.append((cin if first else cout, cout, kernel, stride if first else 1, expand, size))
                if first:
                    size = math.ceil(size / stride)
        total = len(layout)
        self._blocks = nn.ModuleList(
            MBConvBlock(*args[:5], image_size=args[5], drop_rate=drop_connect_rate * k / total)
            for k, args in enumerate(layout)
        )
        last = layout[-1][1]
        self.out_channels = round_filters(_HEAD_FILTERS, spec.width)
        self._conv_head = _conv(last, self.out_channels, 1, size)
        self._bn1 = _bn(self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return swish(self._bn1(self._conv_head(x)))


# --------------------------------------------------------------------------------------------- ImageNet weights

_TIMM_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}
# timm block parts -> efficientnet_pytorch ones, for blocks without (first stage) and with an expansion conv.
_TIMM_DS = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce",
            "se.conv_expand": "_se_expand", "conv_pw": "_project_conv", "bn2": "_bn2"}
_TIMM_IR = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
            "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv",
            "bn3": "_bn2"}
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)$")


def _from_timm(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """timm efficientnet_b* / tf_efficientnet_b* keys (blocks.{stage}.{i}.conv_dw…) in efficientnet_pytorch naming."""
    blocks = sorted({tuple(int(v) for v in m.groups()[:2]) for k in state if (m := _TIMM_BLOCK.match(k))})
    index = {pair: k for k, pair in enumerate(blocks)}
    expanded = {(int(m[1]), int(m[2])) for k in state if (m := _TIMM_BLOCK.match(k)) and m[3] == "conv_pwl"}
    out, dropped = {}, []
    for key, value in state.items():
        match = _TIMM_BLOCK.match(key)
        if match:
            pair = (int(match[1]), int(match[2]))
            parts = _TIMM_IR if pair in expanded else _TIMM_DS
            if match[3] in parts:
                out[f"_blocks.{index[pair]}.{parts[match[3]]}.{match[4]}"] = value
                continue
        else:
            module, _, leaf = key.rpartition(".")
            if module in _TIMM_TOP:
                out[f"{_TIMM_TOP[module]}.{leaf}"] = value
                continue
        dropped.append(key)
    return out, dropped


def imagenet_to_trunk(trunk: EfficientNet, state: dict[str, Tensor], stem: str = "random") -> list[str]:
    """Load an ImageNet EfficientNet state_dict (efficientnet_pytorch or timm naming) into a 1-channel trunk.

    stem: "random" keeps the trunk's own freshly initialised stem, as efficientnet_pytorch's
    `from_pretrained(..., in_channels=1)` does (so PSLA's "ImageNet-pretrained" stem is random); "sum" / "mean"
    fold the RGB kernel into the trunk's input channels by summing / averaging over the colour axis.
    Returns notes on what was dropped or adapted.
    """
    if stem not in ("random", "sum", "mean"):
        raise TaggerError(f"ImageNet stem option must be 'random', 'sum' or 'mean', got {stem!r}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    notes = []
    if "_conv_stem.weight" in state:
        naming = "efficientnet_pytorch"
        dropped = [k for k in state if k.startswith("_fc.")]
        mapped = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    elif "conv_stem.weight" in state and any(_TIMM_BLOCK.match(k) for k in state):
        naming = "timm"
        mapped, dropped = _from_timm(state)
        notes.append("timm naming mapped to efficientnet_pytorch's; the trunk keeps BN eps 1e-3 and 0.7.0 padding")
    else:
        example = next(iter(state), "(empty)")
        raise TaggerError(
            "not an ImageNet EfficientNet state_dict: expected _conv_stem.weight (efficientnet_pytorch) or "
            f"conv_stem.weight + blocks.0.0.* (timm); first key is {example}"
        )
    if dropped:
        notes.append(f"dropped {len(dropped)} classifier/unused key(s) ({dropped[0]}, …)")
    own = trunk.state_dict()
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in own]
    if missing or unexpected:
        first = missing[0] if missing else unexpected[0]
        raise TaggerError(
            f"{naming} ImageNet weights do not fit EfficientNet-B{trunk.variant}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected (first: {first}); pick the ImageNet file of the same variant"
        )
    weight = mapped.pop("_conv_stem.weight")
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise TaggerError(
                f"ImageNet weights do not fit EfficientNet-B{trunk.variant}: {key} is {tuple(value.shape)}, "
                f"the model has {tuple(own[key].shape)}; pick the ImageNet file of the same variant"
            )
    target = trunk._conv_stem.weight
    if stem == "random":
        notes.append("stem: kept random (1-channel), as efficientnet_pytorch does for in_channels=1 and PSLA used")
    else:
        if weight.shape[0] != target.shape[0]:
            raise TaggerError(f"ImageNet stem has {weight.shape[0]} filters, the model {target.shape[0]}")
        folded = weight.sum(1, keepdim=True) if stem == "sum" else weight.mean(1, keepdim=True)
        mapped["_conv_stem.weight"] = folded.expand_as(target).clone()
        how = "summed" if stem == "sum" else "averaged"
        notes.append(f"stem: the {weight.shape[1]}-channel ImageNet kernel {how} over its input channels")
    trunk.load_state_dict(mapped, strict=False)
    return notes
