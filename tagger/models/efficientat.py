"""EfficientAT MobileNetV3 taggers (mn01 ... mn40): models, checkpoint importer and ImageNet initialisation."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tagger.errors import TaggerError
from tagger.frontends import PasstMel
from tagger.models import ImportedWeights, register_importer, register_model
from tagger.models.base import TaggerModel, TaggerOutput, repeat_steps, time_stride
from tagger.models.mobilenetv3 import build_features, head_hidden, init_weights, last_channels
from tagger.models.official import find_state_dict

# Official NAME_TO_WIDTH for the released AudioSet models.
WIDTHS = {"mn01": 0.1, "mn02": 0.2, "mn04": 0.4, "mn05": 0.5, "mn10": 1.0, "mn20": 2.0, "mn30": 3.0, "mn40": 4.0}
HEAD_TYPES = ("mlp", "fully_convolutional", "multihead_attention_pooling")
_STEM_KEY = "features.0.0.weight"
_LAST_KEY = "features.16.0.weight"


class MultiHeadAttentionPooling(nn.Module):
    """PSLA-style head: per head, sigmoid attention normalised over time weights identity class scores.

    The frequency axis is averaged first; heads are summed with learnable weights (initially 1 / heads).
    The output is linear in the projections (no sigmoid), so it is a true logit.
    """

    def __init__(self, channels: int, num_classes: int, num_heads: int = 4, eps: float = 1e-7) -> None:
        super().__init__()
        self.num_classes, self.num_heads, self.eps = num_classes, num_heads, eps
        self.subspace_proj = nn.Linear(channels, num_classes * 2 * num_heads)
        self.head_weight = nn.Parameter(torch.full((1, num_heads, 1), 1.0 / num_heads))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.project(x))

    def project(self, x: Tensor) -> Tensor:
        """(B, C, F, T) features -> per-step projections (B, T, 2, H, K): [:, :, 0] attention, [:, :, 1] classes."""
        x = x.mean(2).transpose(1, 2)  # (B, T, C)
        return self.subspace_proj(x).unflatten(-1, (2, self.num_heads, self.num_classes))

    def pool(self, proj: Tensor) -> Tensor:
        """Clip logits (B, K) from `project`'s output."""
        att = proj[:, :, 0].sigmoid().clamp(self.eps, 1 - self.eps)
        att = att / att.sum(1, keepdim=True)
        pooled = (att * proj[:, :, 1]).sum(1)  # (B, H, K)
        return (pooled * self.head_weight).sum(1)

    def steps(self, proj: Tensor) -> Tensor:
        """Per-step logits (B, T, K): the class projections summed over heads with the head weights (no attention)."""
        return (proj[:, :, 1] * self.head_weight).sum(2)


def _build_head(head_type: str, channels: int, hidden: int, num_classes: int, attention_heads: int) -> nn.Module:
    """`classifier` with the official child indices, so checkpoint keys are classifier.2 / classifier.5 etc."""
    if head_type == "mlp":
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(channels, hidden),
            nn.Hardswish(),
            nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        )
    if head_type == "fully_convolutional":  # its BatchNorm keeps torch's defaults (eps 1e-5), as officially
        return nn.Sequential(nn.Conv2d(channels, num_classes, 1, bias=False), nn.BatchNorm2d(num_classes),
                             nn.AdaptiveAvgPool2d(1))
    return MultiHeadAttentionPooling(channels, num_classes, attention_heads)


def _passt_mel() -> PasstMel:
    """The PaSST mel front-end; on the meta device (parameter counting) it is built on the CPU.

    Its mel banks are computed from data, which meta tensors do not have; it holds no parameters.
    """
    if torch.get_default_device().type == "meta":
        with torch.device("cpu"):
            return PasstMel()
    return PasstMel()


class EfficientAT(TaggerModel):
    """MobileNetV3 on the PaSST mel spectrogram (B, 128, T), as (B, 1, 128, T); any T works.

    logits: the official first output (pre-sigmoid); embedding: the official `features`, the global average
    of the last feature map (960 x width channels). Batch 1 returns (1, C) like any batch: the official
    `.squeeze()` is not reproduced.

    frame_output=True (not in the official code) adds frame_logits (B, T, C), T = the input frame count: the
    head applied at each time step of the last feature map (averaged over frequency), each step's logits
    repeated over the `time_stride` input frames it covers (32 with the default strides; step s is centred on
    frame s * time_stride, as the strided convolutions pad symmetrically). The clip logits stay the official
    ones, pooled before the head. Per head: `fully_convolutional` gives the 1x1 conv + BN
    per position averaged over frequency (their mean over steps is exactly the clip logit);
    `multihead_attention_pooling` the class projections summed over heads with the head weights (the clip
    logit is their attention-weighted mean per head); `mlp` applies Linear-Hardswish-Dropout-Linear per step,
    which is not what the official clip output pools (it averages before the Hardswish, which is not linear),
    so these frame logits are meaningful mainly after training with strong (frame) labels.
    """

    family = "efficientat"
    derived_logits = False

    def __init__(
        self,
        num_classes: int = 527,
        width: float = 1.0,
        head_type: str = "mlp",
        strides: tuple[int, int, int, int] | list[int] = (2, 2, 2, 2),
        attention_heads: int = 4,
        frame_output: bool = False,
    ) -> None:
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise TaggerError(f"head_type {head_type!r} is not one of {', '.join(HEAD_TYPES)}")
        strides = tuple(int(s) for s in strides)
        if len(strides) != 4 or any(s not in (1, 2) for s in strides):
            raise TaggerError(f"strides {strides} must be 4 values, each 1 or 2 (official default 2, 2, 2, 2)")
        if attention_heads < 1:
            raise TaggerError(f"attention_heads must be >= 1, got {attention_heads}")
        self.width, self.head_type, self._num_classes = width, head_type, num_classes
        self.frontend = _passt_mel()
        self.features = build_features(width, strides)
        self.classifier = _build_head(head_type, last_channels(width), head_hidden(width), num_classes,
                                      attention_heads)
        init_weights(self.features)
        init_weights(self.classifier)
        self.frame_output = bool(frame_output)
        if self.frame_output:
            self.frame_level = True  # read by inference before the registry (which says no: it is opt-in)
        self.time_stride = time_stride(self.features)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        if spec.ndim != 3:
            raise TaggerError(f"{self.arch or 'efficientat'}: expected mel features (B, F, T), got {tuple(spec.shape)}")
        x = self.features(spec.unsqueeze(1))
        embedding = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        if not self.frame_output:
            return TaggerOutput(logits=self.classifier(x).flatten(1), frame_logits=None, embedding=embedding)
        head = self.classifier
        if self.head_type == "mlp":  # the head's layers after its pooling (Linear, Hardswish, Dropout, Linear) per step
            logits, steps = head(x).flatten(1), head[2:](x.mean(2).transpose(1, 2))
        elif self.head_type == "fully_convolutional":  # 1x1 conv + BN per position, then the frequency mean
            maps = head[:2](x)
            logits, steps = head[2](maps).flatten(1), maps.mean(2).transpose(1, 2)
        else:
            proj = head.project(x)
            logits, steps = head.pool(proj), head.steps(proj)
        frames = repeat_steps(steps, spec.shape[-1], self.time_stride, self.time_stride // 2)
        return TaggerOutput(logits=logits, frame_logits=frames, embedding=embedding)

    def init_from_imagenet(self, state_dict: Mapping[str, Any]) -> list[str]:
        """Load an ImageNet MobileNetV3 of the same width into `features` (and the MLP's hidden layer).

        Accepts EfficientAT's `mn*_im.pt` / `mn10_im_pytorch.pt` (official names) and torchvision's
        mobilenet_v3_large layout (width 1.0). The final class layer is never loaded. A 3-channel (RGB) stem
        is summed over its input channels, see _adapt_stem.
        """
        state, notes = _unwrap(state_dict)
        if _is_torchvision(state):
            state = _from_torchvision(state)
            notes.append("torchvision MobileNetV3 names mapped to EfficientAT's (SE 1x1 convs -> Linear)")
        notes += _adapt_stem(state)
        own = self.state_dict()
        wanted = [k for k in own if k.startswith("features.") and not k.endswith("num_batches_tracked")]
        for key in wanted:
            if key not in state:
                raise TaggerError(f"ImageNet weights lack {key}; expected an EfficientAT/torchvision MobileNetV3")
            if tuple(state[key].shape) != tuple(own[key].shape):
                raise TaggerError(
                    f"ImageNet weights: {key} is {tuple(state[key].shape)} but {self.arch or 'this model'} needs "
                    f"{tuple(own[key].shape)}; use the ImageNet file of the same width (mnXX_im.pt for mnXX)"
                )
        hidden = ["classifier.2.weight", "classifier.2.bias"]
        if self.head_type == "mlp" and all(k in state and state[k].shape == own[k].shape for k in hidden):
            wanted += hidden
            notes.append("loaded the head's hidden layer classifier.2")
        else:
            notes.append("the head is randomly initialised (no matching classifier.2 in the file)")
        self.load_state_dict({k: state[k] for k in wanted}, strict=False)
        notes.append(f"kept the random final layer ({self.num_classes} classes); the file's class layer is unused")
        return notes


def _register(name: str, width: float) -> None:
    @register_model(
        f"efficientat-{name}",
        family="efficientat",
        frontend="passt-mel",
        sample_rate=32000,
        frame_level=False,
        description=f"EfficientAT MobileNetV3 width {width:g} (KD from PaSST), 128 mels",
    )
    def build(
        num_classes: int = 527,
        head_type: str = "mlp",
        strides: tuple[int, int, int, int] | list[int] = (2, 2, 2, 2),
        attention_heads: int = 4,
        frame_output: bool = False,
    ) -> EfficientAT:
        return EfficientAT(num_classes, width, head_type, strides, attention_heads, frame_output)


for _name, _width in WIDTHS.items():
    _register(_name, _width)


# --------------------------------------------------------------------------------------------- importing


def _unwrap(raw: Any) -> tuple[dict[str, Any], list[str]]:
    """The official-name state_dict inside a file: unwraps {"state_dict": ...}-style dicts and strips a
    prefix such as `module.` (DataParallel) or `model.` (the Lightning training script)."""
    state, _ = find_state_dict(raw, "an EfficientAT state_dict")
    stem = next((k for k in state if isinstance(k, str) and k.endswith(_STEM_KEY)), None)
    if stem is None or not isinstance(state[stem], Tensor):
        sample = ", ".join(list(map(str, state))[:3]) or "nothing"
        raise TaggerError(
            f"not an EfficientAT MobileNet state_dict: expected keys {_STEM_KEY}, {_LAST_KEY}, classifier.* "
            f"(found {sample} ...)"
        )
    prefix = stem[: -len(_STEM_KEY)]
    notes = [f"stripped the key prefix {prefix!r}"] if prefix else []
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, Tensor)}, notes


def _is_torchvision(state: Mapping[str, Tensor]) -> bool:
    return any(re.fullmatch(r"features\.\d+\.block\.\d+\.fc1\.weight", k) for k in state)


def _from_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision names: SE layers are 1x1 convs at block.N.fc1/fc2, the MLP is classifier.0 / classifier.3."""
    out = {}
    for key, value in state.items():
        se = re.fullmatch(r"(features\.\d+\.block\.\d+)\.(fc[12])\.(weight|bias)", key)
        if se:
            out[f"{se[1]}.conc_se_layers.0.{se[2]}.{se[3]}"] = value.flatten(1) if se[3] == "weight" else value
        elif key.startswith("classifier.0."):
            out["classifier.2." + key.removeprefix("classifier.0.")] = value
        elif not key.startswith("classifier."):
            out[key] = value
    return out


def _adapt_stem(state: dict[str, Tensor]) -> list[str]:
    """Make the stem take 1 channel. EfficientAT's ImageNet files already have a 1-channel stem (the official
    loader does no conversion); for an RGB stem we sum the 3 input channels, which keeps the response to a
    grey image (R = G = B = x) exactly, as timm does for in_chans=1."""
    stem = state[_STEM_KEY]
    if stem.ndim != 4 or stem.shape[1] not in (1, 3):
        raise TaggerError(f"ImageNet weights: {_STEM_KEY} has shape {tuple(stem.shape)}; expected (C, 1 or 3, 3, 3)")
    if stem.shape[1] == 1:
        return []
    state[_STEM_KEY] = stem.sum(1, keepdim=True)
    return ["summed the RGB stem features.0.0.weight over its 3 input channels for the 1-channel spectrogram"]


def _head_of(state: Mapping[str, Tensor]) -> tuple[dict[str, Any], str]:
    """model kwargs for the head found in the keys, and a description."""
    if "classifier.5.weight" in state:
        return {"num_classes": state["classifier.5.weight"].shape[0]}, "mlp head"
    if "classifier.0.weight" in state and state["classifier.0.weight"].ndim == 4:
        kwargs = {"num_classes": state["classifier.0.weight"].shape[0], "head_type": "fully_convolutional"}
        return kwargs, "fully-convolutional head (strides cannot be read from the weights: 2, 2, 2, 2 assumed)"
    if "classifier.subspace_proj.weight" in state and "classifier.head_weight" in state:
        heads = state["classifier.head_weight"].shape[1]
        kwargs = {"num_classes": state["classifier.subspace_proj.weight"].shape[0] // (2 * heads),
                  "head_type": "multihead_attention_pooling", "attention_heads": heads}
        return kwargs, f"multi-head attention pooling head ({heads} heads)"
    raise TaggerError(
        "EfficientAT state_dict without a known head: expected classifier.5.weight (mlp), classifier.0.weight "
        "(fully_convolutional) or classifier.subspace_proj.weight (multihead_attention_pooling)"
    )


def _name_for(state: Mapping[str, Tensor]) -> str:
    """The model name whose final conv width matches the file (6 x 160 x width channels)."""
    last = state.get(_LAST_KEY)
    if not isinstance(last, Tensor) or last.ndim != 4:
        raise TaggerError(f"EfficientAT state_dict without {_LAST_KEY} (the final 1x1 conv); not an mn01..mn40 file")
    for name, width in WIDTHS.items():
        if last_channels(width) == last.shape[0]:
            return name
    sizes = ", ".join(f"{n}: {last_channels(w)}" for n, w in WIDTHS.items())
    raise TaggerError(f"{_LAST_KEY} has {last.shape[0]} output channels, which fits no released width ({sizes})")


@register_importer("efficientat")
def import_efficientat(raw: Any, arch: str | None) -> ImportedWeights:
    """An official EfficientAT MobileNet file (raw state_dict, e.g. mn10_as_mAP_471.pt) in tagger naming.

    The official names are ours, so only wrappers and prefixes go; width and class count come from shapes.
    DyMN files (dymn*.pt) are a different architecture and are refused.
    """
    state, notes = _unwrap(raw)
    stem = state[_STEM_KEY]
    if stem.ndim == 4 and stem.shape[1] == 3:
        raise TaggerError(
            f"{_STEM_KEY} takes 3 (RGB) channels: an ImageNet model, not an audio tagger; "
            "use create_model(..., init='imagenet:PATH') to start training from it"
        )
    name = _name_for(state)
    kwargs, head = _head_of(state)
    inferred = f"efficientat-{name}"
    if arch is not None:
        wanted = arch if arch.startswith("efficientat-") else f"efficientat-{arch}"
        if wanted != inferred:
            raise TaggerError(f"--arch {arch} does not fit this file: its shapes are those of {inferred}")
    notes.insert(0, f"{inferred} (width {WIDTHS[name]:g}) with {kwargs['num_classes']} classes, {head}")
    return ImportedWeights(arch=inferred, model_kwargs=kwargs, state_dict=state, notes=notes)
