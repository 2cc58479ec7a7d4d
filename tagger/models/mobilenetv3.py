"""MobileNetV3-Large trunk for 1-channel spectrograms, with EfficientAT's layout and parameter names."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

BN_EPS = 1e-3  # EfficientAT (like torchvision's MobileNetV3) uses TF-style BatchNorm settings
BN_MOMENTUM = 0.01

# The 15 bottlenecks of MobileNetV3-Large at width 1: kernel, expanded, out, squeeze-excitation, hardswish,
# and which of the 4 configurable strides applies (None: stride 1). The input of the first is the stem (16).
_LARGE = (
    (3, 16, 16, False, False, None),
    (3, 64, 24, False, False, 0),
    (3, 72, 24, False, False, None),
    (5, 72, 40, True, False, 1),
    (5, 120, 40, True, False, None),
    (5, 120, 40, True, False, None),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, None),
    (3, 184, 80, False, True, None),
    (3, 184, 80, False, True, None),
    (3, 480, 112, True, True, None),
    (3, 672, 112, True, True, None),
    (5, 672, 160, True, True, 3),
    (5, 960, 160, True, True, None),
    (5, 960, 160, True, True, None),
)
_STEM = 16
_LAST_HIDDEN = 1280  # width of the MLP head's hidden layer at width 1


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never more than 10 % below the value.

    The TF MobileNet rule; every channel count of every width follows it, so checkpoints only fit this way.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class BlockConfig:
    """One inverted-residual block, channel counts already scaled by the width."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    hardswish: bool
    stride: int


def block_configs(width: float, strides: tuple[int, int, int, int] = (2, 2, 2, 2)) -> list[BlockConfig]:
    configs, channels = [], make_divisible(_STEM * width)
    for kernel, expanded, out, use_se, hardswish, slot in _LARGE:
        out = make_divisible(out * width)
        stride = 1 if slot is None else strides[slot]
        configs.append(BlockConfig(channels, kernel, make_divisible(expanded * width), out, use_se, hardswish, stride))
        channels = out
    return configs


def last_channels(width: float) -> int:
    """Channels of the final 1x1 conv (the embedding size): 6 x the last block's output (960 at width 1)."""
    return 6 * make_divisible(_LARGE[-1][2] * width)


def head_hidden(width: float) -> int:
    """Hidden size of the MLP head (1280 at width 1)."""
    return make_divisible(_LAST_HIDDEN * width)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation; children 0, 1, 2 as in torchvision's ConvNormActivation."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, activation: type | None = None
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel squeeze-excitation with Linear layers and a true sigmoid (not torchvision's hard-sigmoid)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.fc1(x.mean((2, 3))).relu()).sigmoid()
        return x * scale[:, :, None, None]


class ConcurrentSE(nn.Module):
    """EfficientAT's wrapper around its SE layers; with channel SE only (every released model) it holds one.

    The official block fuses several SE outputs (channel/frequency/time) with a max; for one layer that
    is the identity, so it is simply applied. The ModuleList keeps the official key names.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels, make_divisible(channels // reduction))])

    def forward(self, x: Tensor) -> Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """Expand (1x1, absent without expansion) -> depthwise -> [SE] -> linear 1x1 projection, + skip if shapes match."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        act = nn.Hardswish if cfg.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.in_channels:
            layers.append(ConvBNAct(cfg.in_channels, cfg.expanded, 1, activation=act))
        depthwise = ConvBNAct(cfg.expanded, cfg.expanded, cfg.kernel, cfg.stride, groups=cfg.expanded, activation=act)
        layers.append(depthwise)
        if cfg.use_se:
            layers.append(ConcurrentSE(cfg.expanded))
        layers.append(ConvBNAct(cfg.expanded, cfg.out_channels, 1))
        self.block = nn.Sequential(*layers)
        self.residual = cfg.stride == 1 and cfg.in_channels == cfg.out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.residual else out


def build_features(
    width: float, strides: tuple[int, int, int, int] = (2, 2, 2, 2), in_channels: int = 1
) -> nn.Sequential:
    """`features`: stem conv (stride 2, hardswish), the 15 blocks, final 1x1 conv to last_channels(width)."""
    configs = block_configs(width, strides)
    layers: list[nn.Module] = [ConvBNAct(in_channels, configs[0].in_channels, 3, 2, activation=nn.Hardswish)]
    layers += [InvertedResidual(cfg) for cfg in configs]
    layers.append(ConvBNAct(configs[-1].out_channels, last_channels(width), 1, activation=nn.Hardswish))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """The official initialisation: Kaiming (fan-out) convs, unit BatchNorms, N(0, 0.01) Linears, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
