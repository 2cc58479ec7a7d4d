"""PSLA taggers (Gong et al. 2021): EfficientNet-B0…B7 on a normalised Kaldi fbank, with a pooling head.

Layout and numerics follow YuanGongND/psla `EffNetAttention` (efficientnet_pytorch 0.7.0 trunk): the fbank
(B, 128, T) becomes a 1-channel image, the trunk downsamples 32×, AvgPool2d((4, 1)) averages the 4 remaining
frequency rows, and the head pools the T/32 time steps. Keys are the official ones without `module.`:
`effnet.*` (trunk) and `attention.*` (head).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from tagger.errors import TaggerError
from tagger.frontends import build_frontend
from tagger.models import ImportedWeights, register_importer, register_model
from tagger.models.base import TaggerModel, TaggerOutput, logit_from_probability, repeat_steps, time_stride
from tagger.models.efficientnet import VARIANTS, EfficientNet, imagenet_to_trunk, trunk_signature
from tagger.models.heads import AttentionPooling, MeanPooling, MultiHeadAttentionPooling, Pooled
from tagger.models.official import find_state_dict

__all__ = ["PSLA", "HEADS", "psla_arch"]

# name suffix -> (official head_num, description)
HEADS = {"mean": (0, "mean pooling"), "att1": (1, "single-head attention"), "att4": (4, "4-head attention")}
_FREQ_ROWS = 4  # 128 mel bins / 32


def _build_head(head: str, channels: int, num_classes: int) -> nn.Module:
    if head == "mean":
        return MeanPooling(channels, num_classes)
    if head == "att1":
        return AttentionPooling(channels, num_classes)
    return MultiHeadAttentionPooling(channels, num_classes, num_heads=4)  # official: any head_num > 1 gives 4


def _psla_frontend(target_length: int | None) -> nn.Module:
    """KaldiFbank with PSLA's AudioSet normalisation; its tiny filter tables are computed from values, so a
    meta-device build (parameter counting) makes them on the CPU."""
    meta = torch.get_default_device().type == "meta"
    with torch.device("cpu") if meta else contextlib.nullcontext():
        return build_frontend("psla-audioset", target_length=target_length)


class PSLA(TaggerModel):
    """EfficientNet trunk + pooling head; logits are the log-odds of the official pooled probability.

    embedding: the time-mean of the pooled trunk features (B, C) (the official code exposes none).
    frame_logits: None by default. frame_output=True (not in the official code) gives (B, T, C), T = the
    fbank's frame count (after the front-end's padding to target_length): the log-odds of the head's per-step
    `cla` probabilities (`pool(spec).frame`, summed over heads with the head weights for att4), each step
    repeated over the `time_stride` (32) input frames it covers (step s is centred on frame 32 s: the trunk's
    static padding is symmetric). The attention weights play no part: they are not calibrated frame scores.
    The clip logits are unchanged.
    """

    family = "psla"
    derived_logits = True

    def __init__(
        self,
        variant: int,
        head: str,
        num_classes: int = 527,
        target_length: int | None = 1056,
        imagenet_stem: str = "random",
        frame_output: bool = False,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise TaggerError(f"PSLA head must be one of {', '.join(HEADS)}, got {head!r}")
        if imagenet_stem not in ("random", "sum", "mean"):
            raise TaggerError(f"imagenet_stem must be 'random', 'sum' or 'mean', got {imagenet_stem!r}")
        self.head = head
        self.imagenet_stem = imagenet_stem
        self.frontend = _psla_frontend(target_length)
        self.effnet = EfficientNet(variant, in_channels=1)
        self.avgpool = nn.AvgPool2d((_FREQ_ROWS, 1))
        self.attention = _build_head(head, self.effnet.out_channels, num_classes)
        self.frame_output = bool(frame_output)
        if self.frame_output:
            self.frame_level = True  # read by inference before the registry (which says no: it is opt-in)
        self.time_stride = time_stride(self.effnet) * time_stride(self.avgpool)

    @property
    def num_classes(self) -> int:
        return self.attention.num_classes

    def features(self, spec: Tensor) -> Tensor:
        """Trunk features as the head sees them: (B, F, T) fbank -> (B, C, T/32, 1) (official `x` before pooling)."""
        x = self.effnet(spec.unsqueeze(1))
        return self.avgpool(x).transpose(2, 3)

    def pool(self, spec: Tensor) -> Pooled:
        """The head's full output (clip probability, per-time probabilities, attention) for a (B, F, T) fbank."""
        return self.attention(self.features(spec))

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        x = self.features(spec)
        pooled = self.attention(x)
        frames = None
        if self.frame_output:
            steps = logit_from_probability(pooled.frame).transpose(1, 2)  # (B, T/32, K)
            frames = repeat_steps(steps, spec.shape[-1], self.time_stride, self.time_stride // 2)
        return TaggerOutput(logit_from_probability(pooled.clip), frames, x.mean(dim=(2, 3)))

    def init_from_imagenet(self, state_dict: dict[str, Tensor]) -> list[str]:
        """Trunk from an ImageNet EfficientNet of the same variant; the stem follows `imagenet_stem`."""
        return imagenet_to_trunk(self.effnet, state_dict, stem=self.imagenet_stem)


def psla_arch(variant: int, head: str) -> str:
    return f"psla-effnet-b{variant}-{head}"


def _register(variant: int, head: str) -> None:
    head_num, what = HEADS[head]

    def build(num_classes: int = 527, **kwargs: Any) -> PSLA:
        return PSLA(variant, head, num_classes=num_classes, **kwargs)

    description = f"PSLA EfficientNet-B{variant} + {what} (head_num={head_num})"
    if (variant, head) == (2, "att4"):
        description += "; the official AudioSet/FSD50K checkpoints"
    register_model(
        psla_arch(variant, head), family="psla", frontend="kaldi-fbank", sample_rate=16000, description=description
    )(build)


for _variant in VARIANTS:
    for _head in HEADS:
        _register(_variant, _head)


# --------------------------------------------------------------------------------------------- importer


def _detect_head(state: dict[str, Any]) -> str:
    if "attention.head_weight" in state:
        heads = state["attention.head_weight"].shape[0]
        if heads != 4:
            raise TaggerError(f"PSLA checkpoint has {heads} attention heads; the official code always builds 4")
        return "att4"
    if "attention.att.weight" in state:
        return "att1"
    if "attention.cla.weight" in state:
        return "mean"
    raise TaggerError("PSLA checkpoint has no pooling head: expected attention.cla.* (and attention.att.*)")


@register_importer("psla")
def import_psla(raw: Any, arch: str | None) -> ImportedWeights:
    """Official PSLA EffNetAttention files: raw state_dicts saved from DataParallel (`module.effnet.*`,
    `module.attention.*`), e.g. as_mdl_0.pth, as_mdl_0_wa.pth, fsd_mdl_best_single.pth, fsd_mdl_wa.pth."""
    source = find_state_dict(raw, "a PSLA checkpoint")[0]
    state = {k.removeprefix("module."): v for k, v in source.items()}
    if "effnet._conv_stem.weight" not in state:
        first = next(iter(source), "(empty)")
        hint = ""
        if "_conv_stem.weight" in state or "conv_stem.weight" in state:
            hint = "; this looks like an ImageNet EfficientNet: use create_model(..., init='imagenet:PATH')"
        raise TaggerError(
            "not a PSLA EfficientNet checkpoint: expected module.effnet._conv_stem.weight and module.attention.* "
            f"(EffNetAttention); first key is {first}{hint}"
        )
    notes = []
    extra = [k for k in state if k.startswith("effnet._fc.")]
    if extra:
        notes.append(f"dropped {', '.join(extra)} (the ImageNet classifier PSLA replaces by Identity; unused)")
        state = {k: v for k, v in state.items() if k not in extra}
    blocks = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("effnet._blocks.")), default=-1)
    head_conv = state.get("effnet._conv_head.weight")
    width = None if head_conv is None else head_conv.shape[0]
    variants = [b for b in VARIANTS if trunk_signature(b) == (blocks, width)]
    if not variants:
        raise TaggerError(f"PSLA checkpoint trunk ({blocks} blocks, {width} channels) is not EfficientNet-B0..B7")
    head = _detect_head(state)
    inferred = psla_arch(variants[0], head)
    if arch is not None and arch != inferred:
        raise TaggerError(f"the checkpoint is {inferred} (from its keys), not {arch}; omit --arch or pass {inferred}")
    classifier = state.get("attention.cla.0.weight" if head == "att4" else "attention.cla.weight")
    if classifier is None:
        raise TaggerError(f"PSLA checkpoint ({inferred}) lacks attention.cla weights; the file is incomplete")
    num_classes = int(classifier.shape[0])
    notes.append(f"inferred {inferred} with {num_classes} classes; logits are log-odds of the pooled probability")
    return ImportedWeights(inferred, {"num_classes": num_classes}, state, notes)
