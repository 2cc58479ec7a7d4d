"""CED (Consistent Ensemble Distillation, Dinkel et al., ICASSP 2024): plain ViTs on 16 kHz log-mels, the four
released sizes, and the importer of their checkpoints (the zenodo `.pt` files and the Hugging Face model cards).

Facts from RicherMans/CED `models/audiotransformer.py` (the model, front-end and chunking) and the model-card code
jimbozhang/hf_transformers_custom_model_ced (its key names); the code is our own. Submodules carry the original
names (`patch_embed.proj`, `time_pos_embed`, `freq_pos_embed`, `blocks.N`, `norm`, `outputlayer.0/1`) except the
BatchNorm over mel bins, `init_bn` here, `init_bn.1` in the original (a Sequential between two rearranges).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.nn import functional as F

from tagger.errors import TaggerError
from tagger.frontends import CedMel
from tagger.models import ImportedWeights, register_importer, register_model
from tagger.models.base import TaggerModel, TaggerOutput, init_transformer_weights, mean_probability_logits
from tagger.models.official import find_state_dict

__all__ = ["CED", "SIZES", "TARGET_LENGTH", "import_ced"]

PATCH = 16  # patch size and stride, in both directions: no overlap
MEL_BINS = 64
DEPTH = 12
TARGET_LENGTH = 1012  # frames of a training crop (10.1 s); longer inputs are cut into chunks of this length
# Registered sizes: name -> (embedding width, heads, the released file, its AudioSet mAP).
SIZES: dict[str, tuple[int, int, str, float]] = {
    "ced-tiny": (192, 3, "audiotransformer_tiny_mAP_4814.pt", 0.481),
    "ced-mini": (256, 4, "audiotransformer_mini_mAP_4896.pt", 0.490),
    "ced-small": (384, 6, "audiotransformer_small_mAP_4958.pt", 0.496),
    "ced-base": (768, 12, "audiotransformer_base_mAP_4999.pt", 0.500),
}


def _block(dim: int, heads: int, drop_path: float) -> Block:
    """A ViT block as CED's (qkv bias, LayerNorm eps 1e-6, exact GELU, MLP ratio 4; the same parameter names),
    its attention run through F.scaled_dot_product_attention whatever timm's global fused-attention setting is."""
    block = Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, drop_path=drop_path,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6))
    block.attn.fused_attn = True
    return block


class PatchEmbed(nn.Module):
    """Non-overlapping 16x16 patches of the (B, 1, 64, T) spectrogram as one Conv2d; the (B, E, 4, T // 16) grid is
    kept so the frequency and time embeddings can be added to its rows and columns."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, PATCH, stride=PATCH)

    def forward(self, spec: Tensor) -> Tensor:
        return self.proj(spec)


class CED(TaggerModel):
    """A ViT over 16x16 patches of CED's 64-bin log-mel, mean-pooled, with a LayerNorm + Linear head.

    forward_features(spec (B, 64, T) in dB): `init_bn` (BatchNorm over mel bins) -> patches -> + time embedding
    (its first T // 16 columns) + frequency embedding -> blocks -> `norm` -> mean over tokens (the embedding) ->
    `outputlayer` (the logits). Inputs longer than `target_length` frames are cut into chunks of that length after
    the BatchNorm, the last one zero-padded (zeros in normalised units, as officially), every chunk encoded on its
    own, and the chunks' probabilities averaged: logits are the log-odds of that mean, the embedding the mean of
    the chunks' embeddings. Inputs up to `target_length` frames run as they are, from 16 frames (one patch) up.
    """

    family = "ced"
    derived_logits = False  # the head is linear; only a chunked clip's logits are log-odds of a mean probability

    def __init__(
        self,
        num_classes: int = 527,
        embed_dim: int = 768,
        depth: int = DEPTH,
        num_heads: int = 12,
        target_length: int = TARGET_LENGTH,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        _check_settings(embed_dim, depth, num_heads, target_length, drop_path_rate)
        self._num_classes = num_classes
        self.target_length = target_length
        self.frontend = CedMel()
        self.init_bn = nn.BatchNorm1d(MEL_BINS, momentum=0.01)
        self.patch_embed = PatchEmbed(embed_dim)
        self.time_pos_embed = nn.Parameter(torch.randn(1, embed_dim, 1, target_length // PATCH) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, embed_dim, MEL_BINS // PATCH, 1) * 0.02)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # rising from 0, as officially
        self.blocks = nn.Sequential(*[_block(embed_dim, num_heads, rate) for rate in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.outputlayer = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))  # eps 1e-5
        init_transformer_weights(self)  # the official init; the patch convolution keeps PyTorch's default

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def min_input_frames(self) -> int:
        return PATCH

    def chunks(self, frames: int) -> int:
        """How many `target_length` chunks an input of `frames` frames is cut into (1: it runs as it is)."""
        return 1 if frames <= self.target_length else math.ceil(frames / self.target_length)

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        name = self.arch or "ced"
        if spec.ndim != 3 or spec.shape[1] != MEL_BINS:
            raise TaggerError(f"{name}: expected log-mel features (batch, {MEL_BINS}, frames), got {tuple(spec.shape)}")
        frames = spec.shape[2]
        if frames < PATCH:
            raise TaggerError(f"{name}: the input has {frames} frames; CED needs at least {PATCH} (one patch, 0.15 s)")
        x = self.init_bn(spec)
        count = self.chunks(frames)
        if count == 1:
            embedding = self._encode(x)
            return TaggerOutput(logits=self.outputlayer(embedding), frame_logits=None, embedding=embedding)
        batch, length = x.shape[0], self.target_length
        x = F.pad(x, (0, count * length - frames))
        x = x.unflatten(2, (count, length)).transpose(1, 2).flatten(0, 1)  # (B * chunks, 64, length), clip-major
        embedding = self._encode(x).unflatten(0, (batch, count))
        logits = mean_probability_logits(self.outputlayer(embedding), dim=1)
        return TaggerOutput(logits=logits, frame_logits=None, embedding=embedding.mean(1))

    def _encode(self, x: Tensor) -> Tensor:
        """(N, 64, T) normalised log-mel, T <= target_length -> (N, E) mean of the final tokens."""
        x = self.patch_embed(x.unsqueeze(1))
        x = x + self.time_pos_embed[:, :, :, : x.shape[3]]
        x = x + self.freq_pos_embed
        x = x.flatten(2).transpose(1, 2)  # (N, F * T, E), frequency-major as officially
        return self.norm(self.blocks(x)).mean(1)


def _check_settings(embed_dim: int, depth: int, num_heads: int, target_length: int, drop_path_rate: float) -> None:
    if depth < 1 or num_heads < 1 or embed_dim % num_heads:
        raise TaggerError(f"ced: need depth >= 1 and embed_dim divisible by num_heads, got {depth}, {embed_dim}, "
                          f"{num_heads}")
    if target_length < PATCH:
        raise TaggerError(f"ced: target_length must be >= {PATCH} frames (one patch), got {target_length}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise TaggerError(f"ced: drop_path_rate must lie in [0, 1), got {drop_path_rate}")


# --------------------------------------------------------------------------------------------- registry


def _register(name: str, embed_dim: int, heads: int, filename: str, mAP: float) -> None:
    size = name.split("-")[1].capitalize()

    @register_model(
        name,
        family="ced",
        frontend="ced-mel",
        sample_rate=16000,
        frame_level=False,
        description=f"CED-{size} ViT ({embed_dim}-d, {heads} heads, {DEPTH} blocks), 16x16 patches of 64 mels, "
        f"10.1 s chunks; AudioSet mAP {mAP:.3f} ({filename}, mispeech/{name})",
    )
    def build(
        num_classes: int = 527,
        embed_dim: int = embed_dim,
        depth: int = DEPTH,
        num_heads: int = heads,
        target_length: int = TARGET_LENGTH,
        drop_path_rate: float = 0.0,
    ) -> CED:
        return CED(num_classes, embed_dim, depth, num_heads, target_length, drop_path_rate)


for _name, (_embed, _heads, _file, _map) in SIZES.items():
    _register(_name, _embed, _heads, _file, _map)


# --------------------------------------------------------------------------------------------- importing

_WINDOW_KEY = "front_end.0.spectrogram.window"
_FILTERS_KEY = "front_end.0.mel_scale.fb"
_HF_PREFIX = "encoder."  # the model card's CedForAudioClassification: everything but outputlayer under encoder.
_WIDTHS = {embed: name for name, (embed, *_rest) in SIZES.items()}


def _rename(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """The file's tensors in tagger naming (front_end.* kept for checking): the original names with init_bn.1
    -> init_bn, or the model card's with the encoder. prefix removed."""
    keys = list(state)
    notes = []
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("stripped the key prefix 'module.'")
    if any(k.startswith(_HF_PREFIX) for k in state):
        notes.append("Hugging Face model-card layout (encoder.*, outputlayer.*): renamed to the original names")
        state = {k[len(_HF_PREFIX):] if k.startswith(_HF_PREFIX) else k: v for k, v in state.items()}
    renamed = {("init_bn." + k[len("init_bn.1."):] if k.startswith("init_bn.1.") else k): v for k, v in state.items()}
    if "patch_embed.proj.weight" not in renamed or "time_pos_embed" not in renamed:
        sample = ", ".join(list(state)[:3]) or "nothing"
        raise TaggerError(
            "not a CED state_dict: expected the keys time_pos_embed, freq_pos_embed, patch_embed.proj.*, init_bn.*, "
            f"blocks.N.*, norm.*, outputlayer.0/1.* (or the model card's encoder.*) (found {sample} ...)"
        )
    if "cls_token" in renamed:
        raise TaggerError("this CED file was trained with token pooling (cls_token); tagger builds the released "
                          "mean-pooled models only")
    if "outputlayer.1.weight" not in renamed:
        raise TaggerError("this CED file has no classification head (outputlayer.*): it is the encoder alone "
                          "(CedModel); import the CedForAudioClassification weights")
    return renamed, notes


def _shapes(state: Mapping[str, Tensor]) -> dict[str, int]:
    """Architecture numbers read from the tensors."""
    kernel = state["patch_embed.proj.weight"]
    if tuple(kernel.shape[1:]) != (1, PATCH, PATCH):
        raise TaggerError(f"patch_embed.proj.weight has shape {tuple(kernel.shape)}; CED takes 1-channel "
                          f"{PATCH}x{PATCH} patches of the log-mel")
    mels = state["init_bn.weight"].shape[0] if "init_bn.weight" in state else -1
    freq = state["freq_pos_embed"].shape[2] if "freq_pos_embed" in state else -1
    if mels != MEL_BINS or freq != MEL_BINS // PATCH:
        raise TaggerError(f"the file is for {mels} mel bins ({freq} frequency patches); ced-mel gives {MEL_BINS} "
                          f"({MEL_BINS // PATCH} patches)")
    depth = len({m[1] for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    return {"embed": kernel.shape[0], "depth": depth, "time": state["time_pos_embed"].shape[3],
            "num_classes": state["outputlayer.1.weight"].shape[0]}


def _arch_for(shape: Mapping[str, int], arch: str | None) -> tuple[str, dict[str, Any], list[str]]:
    """Registered name + the kwargs that differ from it, from the width, depth and time-embedding length."""
    embed = shape["embed"]
    kwargs: dict[str, Any] = {}
    notes = []
    if arch is not None:
        if arch not in SIZES:
            raise TaggerError(f"--arch {arch} is not a CED model; use one of {', '.join(SIZES)}")
        if SIZES[arch][0] != embed:
            raise TaggerError(f"--arch {arch} is {SIZES[arch][0]} wide but the file's embedding is {embed} wide"
                              + (f" ({_WIDTHS[embed]})" if embed in _WIDTHS else ""))
        name = arch
    elif embed in _WIDTHS:
        name = _WIDTHS[embed]
    else:
        name = "ced-base"
        kwargs["embed_dim"], kwargs["num_heads"] = embed, max(embed // 64, 1)
        notes.append(f"embedding width {embed} matches no released size: built ced-base with embed_dim={embed} and "
                     f"{kwargs['num_heads']} heads (64 per head assumed)")
    if shape["depth"] != DEPTH:
        kwargs["depth"] = shape["depth"]
        notes.append(f"depth {shape['depth']} (the releases have {DEPTH})")
    if shape["time"] != TARGET_LENGTH // PATCH:
        kwargs["target_length"] = shape["time"] * PATCH
        notes.append(f"time embedding of {shape['time']} patches (the releases have {TARGET_LENGTH // PATCH}): "
                     f"built with target_length={shape['time'] * PATCH} frames, the chunk length of longer clips")
    return name, kwargs, notes


def _frontend_tensors(state: dict[str, Tensor]) -> tuple[Tensor, list[str]]:
    """The `frontend.melW` to load: the file's own mel filters (zenodo files keep the torchaudio front-end's
    buffers) once checked against ced-mel's, else ced-mel's."""
    own = CedMel()
    window, filters = state.pop(_WINDOW_KEY, None), state.pop(_FILTERS_KEY, None)
    others = sorted(k for k in state if k.startswith("front_end."))
    if others:
        raise TaggerError(f"unexpected front-end tensor {others[0]}; CED files hold only {_WINDOW_KEY} and "
                          f"{_FILTERS_KEY}")
    if filters is None:
        return own.melW.clone(), ["no front-end tensors in the file: the mel filters are ced-mel's (16 kHz, "
                                  "512/160, 64 HTK mels 0-8 kHz, top_db 120, as the model card's feature extractor)"]
    expected = {_WINDOW_KEY: (window, own.window), _FILTERS_KEY: (filters, own.melW)}
    for key, (given, ours) in expected.items():
        if given is None or tuple(given.shape) != tuple(ours.shape):
            shape = None if given is None else tuple(given.shape)
            raise TaggerError(f"{key} has shape {shape}, ced-mel expects {tuple(ours.shape)}: the file was made with "
                              "other front-end settings (CED is 16 kHz, n_fft 512, 64 mels)")
        worst = float((given.double() - ours.double()).abs().max())
        if worst > 1e-5:
            raise TaggerError(f"{key} differs from ced-mel's by {worst:.3g}: the file was made with other front-end "
                              "settings")
    return filters.detach().float().clone(), [f"checked {_WINDOW_KEY} and {_FILTERS_KEY} against ced-mel; its mel "
                                              "filters are kept as frontend.melW"]


@register_importer("ced")
def import_ced(raw: Any, arch: str | None) -> ImportedWeights:
    """An official CED file in tagger naming: a released zenodo state_dict (audiotransformer_mini_mAP_4896.pt,
    bare or under "model"), or the model card's weights (mispeech/ced-*: pytorch_model.bin, or model.safetensors
    read into a dict). The size, depth, chunk length and class count come from the tensors' shapes."""
    state, notes = find_state_dict(raw, "a CED state_dict")
    state, rename_notes = _rename(state)
    shape = _shapes(state)
    name, kwargs, arch_notes = _arch_for(shape, arch)
    melw, frontend_notes = _frontend_tensors(state)
    state["frontend.melW"] = melw
    if "init_bn.num_batches_tracked" not in state:
        state["init_bn.num_batches_tracked"] = torch.tensor(0)
    kwargs = {"num_classes": shape["num_classes"], **kwargs}
    head = f"{name} with {shape['num_classes']} classes (width {shape['embed']}, {shape['depth']} blocks)"
    return ImportedWeights(arch=name, model_kwargs=kwargs, state_dict=state,
                           notes=[head, *arch_notes, *notes, *rename_notes, *frontend_notes])
