"""PANNs 1-D CNNs on the raw waveform: LeeNet11/24, DaiNet19, Res1dNet31/51 with the official key names."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tagger.errors import TaggerError
from tagger.frontends import Waveform
from tagger.models import register_model
from tagger.models.base import TaggerModel, TaggerOutput
from tagger.models.panns import init_bn, init_layer

__all__ = ["LeeNet", "DaiNet19", "Res1dNet", "PannsWaveModel"]

SAMPLE_RATE = 32000


def _conv1d(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> nn.Conv1d:
    conv = nn.Conv1d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
    init_layer(conv)
    return conv


def _bn1d(channels: int, weight: float = 1.0) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(channels)
    init_bn(bn, weight)
    return bn


class PannsWaveModel(TaggerModel):
    """Shared waveform input and Cnn14-style clip head: max + mean over time, fc1 + ReLU, fc_audioset.

    As in the official code, `fc_audioset` reads the fc1 activation directly while `embedding` is the same
    activation after dropout(0.5): identical in eval, different in training. Logits are the true pre-sigmoid
    `fc_audioset` output, so sigmoid(logits) is the official `clipwise_output`.
    """

    family = "panns"
    derived_logits = False
    min_samples = 1  # shortest waveform whose trunk output still has one time step

    @property
    def min_input_frames(self) -> int:
        return self.min_samples

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.frontend = Waveform(sample_rate=SAMPLE_RATE)
        self._embed_dim = embed_dim
        self._num_classes = num_classes

    def _make_head(self, in_dim: int) -> None:
        """Called last in each constructor so fc1 / fc_audioset come last in the state_dict, as officially."""
        self.fc1 = nn.Linear(in_dim, self._embed_dim)
        self.fc_audioset = nn.Linear(self._embed_dim, self._num_classes)
        init_layer(self.fc1)
        init_layer(self.fc_audioset)

    @property
    def num_classes(self) -> int:
        return self.fc_audioset.out_features

    def trunk(self, x: Tensor) -> Tensor:
        """(B, 1, S) waveform -> (B, C, T) features."""
        raise NotImplementedError

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        if spec.ndim != 2:
            raise TaggerError(
                f"{self.arch or type(self).__name__}: expected a (batch, samples) waveform, "
                f"got shape {tuple(spec.shape)}"
            )
        if spec.shape[-1] < self.min_samples:
            raise TaggerError(
                f"{self.arch or type(self).__name__}: clips of {spec.shape[-1]} samples are too short; need >= "
                f"{self.min_samples} ({self.min_samples / SAMPLE_RATE:.3f} s at {SAMPLE_RATE} Hz): pad the audio"
            )
        x = self.trunk(spec[:, None, :])
        x = x.max(dim=2).values + x.mean(dim=2)  # max + mean over time, as the official head
        x = F.dropout(x, p=0.5, training=self.training)
        hidden = F.relu(self.fc1(x))
        embedding = F.dropout(hidden, p=0.5, training=self.training)
        return TaggerOutput(logits=self.fc_audioset(hidden), frame_logits=None, embedding=embedding)


# ----------------------------------------------------------------------------------------------- LeeNet


class _LeeNetBlock(nn.Module):
    """Conv1d k3 + BN + ReLU (twice in LeeNet24), then max-pool k3 s3 padding 1 unless pool is 1."""

    def __init__(self, cin: int, cout: int, stride: int, pool: int, double: bool) -> None:
        super().__init__()
        self.pool = pool
        self.double = double
        self.conv1 = _conv1d(cin, cout, 3, stride=stride, padding=1)
        if double:
            self.conv2 = _conv1d(cout, cout, 3, padding=1)
        self.bn1 = _bn1d(cout)
        if double:
            self.bn2 = _bn1d(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.double:
            x = F.relu(self.bn2(self.conv2(x)))
        if self.pool != 1:
            x = F.max_pool1d(x, kernel_size=self.pool, padding=self.pool // 2)
        return x


# channels of conv_block1..9; block1 is the stride-3 "sample-level" conv, without pooling
_LEENET11 = (64, 64, 64, 128, 128, 128, 128, 128, 256)
_LEENET24 = (64, 96, 128, 128, 256, 256, 512, 512, 1024)


class LeeNet(PannsWaveModel):
    """LeeNet11 (single-conv blocks, fc 512) and LeeNet24 (double-conv blocks, dropout 0.1, fc 1024).

    LeeNet11 pools after blocks 2..9, LeeNet24 after blocks 2..8 only; both keep full length otherwise.
    """

    def __init__(self, num_classes: int = 527, deep: bool = False) -> None:
        channels = _LEENET24 if deep else _LEENET11
        super().__init__(embed_dim=1024 if deep else 512, num_classes=num_classes)
        self.block_dropout = 0.1 if deep else 0.0
        cin = 1
        for index, cout in enumerate(channels, start=1):
            stride = 3 if index == 1 else 1
            pool = 1 if index == 1 or (deep and index == 9) else 3
            self.add_module(f"conv_block{index}", _LeeNetBlock(cin, cout, stride, pool, double=deep))
            cin = cout
        self.blocks = len(channels)
        self._make_head(cin)

    def trunk(self, x: Tensor) -> Tensor:
        for index in range(1, self.blocks + 1):
            x = getattr(self, f"conv_block{index}")(x)
            if self.block_dropout and index < self.blocks:
                x = F.dropout(x, p=self.block_dropout, training=self.training)
        return x


# ----------------------------------------------------------------------------------------------- DaiNet19


class _DaiNetBlock(nn.Module):
    """Four Conv1d k3 + BN (ReLU between), plus the input, then ReLU.

    The shortcut is the identity when the channel count is unchanged (the official `input.shape == x.shape`,
    equivalent since k3/padding 1 keeps the length), else a 1x1 conv + BN. The official block always builds
    `downsample` / `bn_downsample`, so its conv_block1 carries them unused; we build them only where they are
    used (every parameter then gets a gradient, as DDP needs), and the importer drops the unused official keys.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.identity_shortcut = cin == cout
        for index in range(1, 5):
            self.add_module(f"conv{index}", _conv1d(cin if index == 1 else cout, cout, 3, padding=1))
        if not self.identity_shortcut:
            self.downsample = _conv1d(cin, cout, 1)
        for index in range(1, 5):
            self.add_module(f"bn{index}", _bn1d(cout, weight=0.0 if index == 4 else 1.0))
        if not self.identity_shortcut:
            self.bn_downsample = _bn1d(cout)

    def forward(self, inp: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(inp)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.bn4(self.conv4(x))
        shortcut = inp if self.identity_shortcut else self.bn_downsample(self.downsample(inp))
        return F.relu(x + shortcut)


class DaiNet19(PannsWaveModel):
    """Conv1d(1, 64, k80, s4) + BN (no ReLU), 4 residual blocks (64..512) with max-pool 4 between, fc 512."""

    min_samples = 80 + 4 * (4**3 - 1)  # conv0 must leave 64 steps for the three pools of 4

    def __init__(self, num_classes: int = 527) -> None:
        super().__init__(embed_dim=512, num_classes=num_classes)
        self.conv0 = _conv1d(1, 64, 80, stride=4)
        self.bn0 = _bn1d(64)
        cin = 64
        for index, cout in enumerate((64, 128, 256, 512), start=1):
            self.add_module(f"conv_block{index}", _DaiNetBlock(cin, cout))
            cin = cout
        self._make_head(cin)

    def trunk(self, x: Tensor) -> Tensor:
        x = self.bn0(self.conv0(x))
        x = F.max_pool1d(self.conv_block1(x), kernel_size=4)
        x = F.max_pool1d(self.conv_block2(x), kernel_size=4)
        x = F.max_pool1d(self.conv_block3(x), kernel_size=4)
        return self.conv_block4(x)


# ----------------------------------------------------------------------------------------------- Res1dNet


class _Res1dBlock(nn.Module):
    """Basic block: [max-pool(stride)] conv k3 + BN + ReLU + dropout 0.1, dilated conv k3 d2 + BN, + shortcut.

    The shortcut downsamples with AvgPool1d(stride) + 1x1 conv + BN (indices 1, 2 of `downsample`, as the
    official Sequential); the last BN starts at weight 0.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = _conv1d(cin, cout, 3, padding=1)
        self.bn1 = _bn1d(cout)
        self.conv2 = _conv1d(cout, cout, 3, padding=2, dilation=2)
        self.bn2 = _bn1d(cout, weight=0.0)
        self.downsample: nn.Sequential | None = None
        if stride != 1:
            self.downsample = nn.Sequential(nn.AvgPool1d(stride), _conv1d(cin, cout, 1), _bn1d(cout))
        elif cin != cout:
            self.downsample = nn.Sequential(_conv1d(cin, cout, 1), _bn1d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.max_pool1d(x, kernel_size=self.stride) if self.stride != 1 else x
        out = F.relu(self.bn1(self.conv1(out)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


_RES1D_WIDTHS = (64, 128, 256, 512, 1024, 1024, 2048)
_RES1D_STRIDE = 4  # every stage but the first


class _ResNetWav1d(nn.Module):
    """Seven stages layer1..layer7 of `_Res1dBlock`, the stride of each in its first block."""

    def __init__(self, depths: tuple[int, ...]) -> None:
        super().__init__()
        cin = 64
        for stage, (width, depth) in enumerate(zip(_RES1D_WIDTHS, depths, strict=True), start=1):
            stride = 1 if stage == 1 else _RES1D_STRIDE
            blocks = [_Res1dBlock(cin, width, stride)] + [_Res1dBlock(width, width) for _ in range(depth - 1)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            cin = width

    def forward(self, x: Tensor) -> Tensor:
        for stage in range(1, len(_RES1D_WIDTHS) + 1):
            x = getattr(self, f"layer{stage}")(x)
        return x


class Res1dNet(PannsWaveModel):
    """Conv1d(1, 64, k11, s5, p5) + BN (no ReLU), `_ResNetWav1d`, fc 2048 (Res1dNet31 / Res1dNet51)."""

    # conv0 gives ceil(S / 5) steps; six stride-4 stages need 4**6 of them
    min_samples = 5 * (_RES1D_STRIDE ** (len(_RES1D_WIDTHS) - 1) - 1) + 1

    def __init__(self, depths: tuple[int, ...], num_classes: int = 527) -> None:
        super().__init__(embed_dim=2048, num_classes=num_classes)
        self.conv0 = _conv1d(1, 64, 11, stride=5, padding=5)
        self.bn0 = _bn1d(64)
        self.resnet = _ResNetWav1d(depths)
        self._make_head(_RES1D_WIDTHS[-1])

    def trunk(self, x: Tensor) -> Tensor:
        return self.resnet(self.bn0(self.conv0(x)))


# ----------------------------------------------------------------------------------------------- registry

_REGISTER = {"family": "panns", "frontend": "waveform", "sample_rate": SAMPLE_RATE, "frame_level": False}


@register_model("panns-leenet11", description="PANNs LeeNet11, 1-D CNN on the 32 kHz waveform", **_REGISTER)
def leenet11(num_classes: int = 527) -> LeeNet:
    return LeeNet(num_classes, deep=False)


@register_model("panns-leenet24", description="PANNs LeeNet24, double-conv 1-D CNN on the waveform", **_REGISTER)
def leenet24(num_classes: int = 527) -> LeeNet:
    return LeeNet(num_classes, deep=True)


@register_model("panns-dainet19", description="PANNs DaiNet19, residual 1-D CNN on the waveform", **_REGISTER)
def dainet19(num_classes: int = 527) -> DaiNet19:
    return DaiNet19(num_classes)


@register_model("panns-res1dnet31", description="PANNs Res1dNet31, 1-D ResNet on the waveform", **_REGISTER)
def res1dnet31(num_classes: int = 527) -> Res1dNet:
    return Res1dNet((2, 2, 2, 2, 2, 2, 2), num_classes)


@register_model("panns-res1dnet51", description="PANNs Res1dNet51, deeper 1-D ResNet on the waveform", **_REGISTER)
def res1dnet51(num_classes: int = 527) -> Res1dNet:
    return Res1dNet((2, 3, 4, 6, 4, 3, 2), num_classes)
