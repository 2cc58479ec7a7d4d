"""AST (Audio Spectrogram Transformer) taggers: a distilled DeiT on a Kaldi fbank, importer and ImageNet init.

Layout and numerics follow YuanGongND/ast `ASTModel`: the fbank (B, F=128, T) becomes a 1-channel image
(B, 1, F, T); 16x16 patches with strides (fstride, tstride) (overlapping at the default 10); cls + dist
tokens in front; a learned positional embedding over the patch grid; 12 pre-norm blocks (LayerNorm eps 1e-6);
the two token outputs are averaged and `mlp_head` (LayerNorm eps 1e-5 + Linear) gives the logits.
Parameter names are the official ones without `module.`: `v.*` (trunk) and `mlp_head.0/1`. The DeiT's
1000-class `v.head` / `v.head_dist`, which the official forward never calls, are not built.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from tagger.errors import TaggerError
from tagger.frontends import KALDI_PRESETS, build_frontend
from tagger.models import ImportedWeights, register_importer, register_model
from tagger.models.base import TaggerModel, TaggerOutput
from tagger.models.official import find_state_dict

__all__ = ["AST", "SIZES", "adapt_pos_embed", "import_ast", "patch_grid"]

PATCH = 16
DEPTH = 12
NUM_TOKENS = 2  # cls + dist
# size -> (embedding dim, heads, side of the DeiT ImageNet grid it starts from, timm DeiT name)
SIZES = {
    "tiny224": (192, 3, 14, "deit_tiny_distilled_patch16_224"),
    "small224": (384, 6, 14, "deit_small_distilled_patch16_224"),
    "base224": (768, 12, 14, "deit_base_distilled_patch16_224"),
    "base384": (768, 12, 24, "deit_base_distilled_patch16_384"),
}
# Recipe lengths (AudioSet, ESC-50, SpeechCommands, the official demo) preferred when a file's grid fits several.
_KNOWN_TDIMS = (1024, 512, 128, 100)
_OFFICIAL_STRIDES = (10, 12, 14, 16)  # audioset_<s>_<s>_*.pth
_UNUSED_HEADS = ("v.head.", "v.head_dist.")
_OFFICIAL_FDIM = 128


# --------------------------------------------------------------------------------------------- grid helpers


def patch_grid(input_fdim: int, input_tdim: int, fstride: int, tstride: int) -> tuple[int, int]:
    """(frequency, time) patches of a 16x16 conv with these strides, as the official `get_shape` finds them."""
    return (input_fdim - PATCH) // fstride + 1, (input_tdim - PATCH) // tstride + 1


def _fit_axis(grid: Tensor, size: int, dim: int) -> Tensor:
    """Cut `size` positions from the middle of axis `dim` when it shrinks, bilinear-interpolate when it grows.

    The middle is `old // 2 - size // 2`: DeiT-384 columns 12 - t//2 ..., AudioSet 12x101 columns 50 - t//2 ...
    """
    old = grid.shape[dim]
    if size == old:
        return grid
    if size < old:
        return grid.narrow(dim, old // 2 - size // 2, size)
    shape = list(grid.shape[2:])
    shape[dim - 2] = size
    return nn.functional.interpolate(grid, size=tuple(shape), mode="bilinear", align_corners=False)


def adapt_pos_embed(
    pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_tokens: int = NUM_TOKENS
) -> Tensor:
    """A (1, tokens + f*t, D) positional embedding moved from one (freq, time) patch grid to another.

    The official rule for both the DeiT ImageNet grid and the AudioSet 12x101 grid: the time axis first, then
    the frequency axis; an axis that shrinks (or stays) keeps its centred part, one that grows is bilinearly
    interpolated. The token embeddings in front are kept as they are.
    """
    (old_f, old_t), (new_f, new_t) = old_grid, new_grid
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[1] != num_tokens + old_f * old_t:
        raise TaggerError(
            f"pos_embed {tuple(pos_embed.shape)} does not fit {num_tokens} tokens + a {old_f}x{old_t} patch grid"
        )
    if min(new_f, new_t) < 1:
        raise TaggerError(f"target patch grid {new_f}x{new_t} is empty")
    if (old_f, old_t) == (new_f, new_t):
        return pos_embed
    dim = pos_embed.shape[2]
    grid = pos_embed[:, num_tokens:].transpose(1, 2).reshape(1, dim, old_f, old_t)
    grid = _fit_axis(_fit_axis(grid, new_t, 3), new_f, 2)
    grid = grid.reshape(1, dim, new_f * new_t).transpose(1, 2)
    return torch.cat([pos_embed[:, :num_tokens], grid], dim=1)


def _how_adapted(old_grid: tuple[int, int], new_grid: tuple[int, int]) -> str:
    words = []
    for axis, old, new in (("time", old_grid[1], new_grid[1]), ("frequency", old_grid[0], new_grid[0])):
        if new < old:
            words.append(f"{axis} {old}->{new} cut from the middle")
        elif new > old:
            words.append(f"{axis} {old}->{new} bilinear")
    detail = "; ".join(words) or "unchanged"
    old, new = "x".join(map(str, old_grid)), "x".join(map(str, new_grid))
    return f"positional embedding adapted from the {old} to the {new} patch grid ({detail})"


# --------------------------------------------------------------------------------------------- model


class _PatchEmbed(nn.Module):
    """Overlapping 16x16 patches of the 1-channel fbank image, as a token sequence (B, f*t, D)."""

    def __init__(self, dim: int, fstride: int, tstride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=PATCH, stride=(fstride, tstride))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _DistilledViT(nn.Module):
    """The official `v`: the timm DeiT without its classification heads; parameters in the official key order."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], fstride: int, tstride: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_TOKENS + grid[0] * grid[1], dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = _PatchEmbed(dim, fstride, tstride)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm)
                                      for _ in range(DEPTH)])
        self.norm = norm(dim)
        for block in self.blocks:
            block.attn.fused_attn = True  # torch's scaled_dot_product_attention, whatever timm's global setting
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's DeiT init (truncated normal 0.02 for tokens, embedding and Linear; zero bias); the patch conv
        keeps torch's default, like the official fresh `new_proj`."""
        for tensor in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(tensor, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 1, F, T) -> the two token outputs averaged, after the final norm (B, D)."""
        x = self.patch_embed(image)
        batch = x.shape[0]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), self.dist_token.expand(batch, -1, -1), x], dim=1)
        x = self.norm(self.blocks(tokens + self.pos_embed))
        return (x[:, 0] + x[:, 1]) / 2


def _ast_frontend(norm: str, input_tdim: int, input_fdim: int) -> nn.Module:
    """The Kaldi fbank preset `norm`, padding/cropping to input_tdim; built on the CPU under the meta device
    (its mel filters are computed from values)."""
    if norm not in KALDI_PRESETS:
        raise TaggerError(f"norm {norm!r} is not a Kaldi fbank preset; use one of {', '.join(KALDI_PRESETS)}")
    meta = torch.get_default_device().type == "meta"
    with torch.device("cpu") if meta else contextlib.nullcontext():
        return build_frontend(norm, target_length=input_tdim, num_mel_bins=input_fdim)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TaggerError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class AST(TaggerModel):
    """Audio Spectrogram Transformer on the normalised Kaldi fbank (B, F, T) with exactly input_tdim frames.

    logits: the official output (mlp_head, pre-sigmoid). embedding: (cls + dist) / 2 after the final norm,
    the input of mlp_head before its LayerNorm (B, D). The positional embedding fixes the frame count:
    `forward` pads/crops through the front-end as the official loader does; `forward_features` checks it.
    """

    family = "ast"
    derived_logits = False

    def __init__(
        self,
        size: str,
        num_classes: int = 527,
        fstride: int = 10,
        tstride: int = 10,
        input_tdim: int = 1024,
        input_fdim: int = 128,
        norm: str = "ast-audioset",
    ) -> None:
        super().__init__()
        if size not in SIZES:
            raise TaggerError(f"AST size must be one of {', '.join(SIZES)}, got {size!r}")
        self.fstride = _positive_int("fstride", fstride)
        self.tstride = _positive_int("tstride", tstride)
        self.input_tdim = _positive_int("input_tdim", input_tdim, PATCH)
        self.input_fdim = _positive_int("input_fdim", input_fdim, PATCH)
        self.size = size
        dim, heads, self.imagenet_side, _ = SIZES[size]
        self.grid = patch_grid(input_fdim, input_tdim, fstride, tstride)
        self.frontend = _ast_frontend(norm, input_tdim, input_fdim)
        self.v = _DistilledViT(dim, heads, self.grid, fstride, tstride)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    @property
    def num_classes(self) -> int:
        return self.mlp_head[1].out_features

    def _check_spec(self, spec: Tensor) -> None:
        want = (self.input_fdim, self.input_tdim)
        if spec.ndim == 3 and tuple(spec.shape[1:]) == want:
            return
        name = self.arch or f"ast-{self.size}"
        hint = ("the front-end (model.frontend / model(wave)) pads or crops to that; or build the model with "
                "input_tdim=<frames> (importer('ast')(raw, None, {'input_tdim': N}) adapts a checkpoint)")
        if spec.ndim == 3 and tuple(spec.shape[1:]) == want[::-1]:
            hint = "this is the official (B, T, F) layout: pass spec.transpose(1, 2)"
        raise TaggerError(
            f"{name}: expected an fbank (B, {self.input_fdim}, {self.input_tdim}) = (batch, mel bins, input_tdim "
            f"frames), got {tuple(spec.shape)}; {hint}"
        )

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        self._check_spec(spec)
        embedding = self.v(spec.unsqueeze(1))
        return TaggerOutput(logits=self.mlp_head(embedding), frame_logits=None, embedding=embedding)

    def init_from_imagenet(self, state_dict: Mapping[str, Any]) -> list[str]:
        """Load a timm / facebookresearch distilled DeiT of the same width into `v`, adapted as officially.

        The RGB patch kernel is summed over its 3 channels (bias copied), the DeiT positional embedding grid
        (24x24 for 384, 14x14 for 224) is cut or interpolated to this model's patch grid (adapt_pos_embed);
        the DeiT heads `head` / `head_dist` are not loaded and `mlp_head` stays random.
        """
        state = find_state_dict(state_dict, "ImageNet DeiT weights")[0]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        dim = self.mlp_head[0].normalized_shape[0]
        deit = SIZES[self.size][3]
        for key in ("cls_token", "dist_token", "pos_embed", "patch_embed.proj.weight"):
            if not isinstance(state.get(key), Tensor):
                what = " (a distilled DeiT has cls_token and dist_token)" if key == "dist_token" else ""
                raise TaggerError(f"ImageNet weights lack {key}{what}; expected timm's {deit} state_dict")
        if state["cls_token"].shape[-1] != dim:
            raise TaggerError(
                f"ImageNet weights have embedding dim {state['cls_token'].shape[-1]} but {self.arch or self.size} "
                f"needs {dim}; use {deit}"
            )
        notes = []
        kernel = state["patch_embed.proj.weight"]
        if kernel.ndim != 4 or kernel.shape[1] not in (1, 3) or tuple(kernel.shape[2:]) != (PATCH, PATCH):
            raise TaggerError(f"ImageNet weights: patch_embed.proj.weight is {tuple(kernel.shape)}; "
                              f"expected ({dim}, 3, 16, 16)")
        if kernel.shape[1] == 3:
            kernel = kernel.sum(1, keepdim=True)
            notes.append("summed the RGB patch kernel patch_embed.proj.weight over its 3 channels; bias copied")
        pos = state["pos_embed"]
        side = math.isqrt(max(pos.shape[1] - NUM_TOKENS, 0))
        if pos.ndim != 3 or side * side + NUM_TOKENS != pos.shape[1]:
            raise TaggerError(f"ImageNet weights: pos_embed {tuple(pos.shape)} is not 2 tokens + a square grid")
        if side != self.imagenet_side:
            notes.append(f"the file's grid is {side}x{side}; {self.arch or self.size} officially starts from "
                         f"{self.imagenet_side}x{self.imagenet_side} ({deit})")
        new = {"cls_token": state["cls_token"], "dist_token": state["dist_token"], "patch_embed.proj.weight": kernel,
               "pos_embed": adapt_pos_embed(pos.detach().float(), (side, side), self.grid)}
        notes.append(_how_adapted((side, side), self.grid).replace("from the", "from the DeiT", 1))
        own = self.v.state_dict()
        for key in own:
            if key in new:
                continue
            if not isinstance(state.get(key), Tensor):
                raise TaggerError(f"ImageNet weights lack {key}; expected timm's {deit} state_dict")
            new[key] = state[key]
        for key, value in new.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise TaggerError(f"ImageNet weights: {key} is {tuple(value.shape)}, this model needs "
                                  f"{tuple(own[key].shape)}; use {deit}")
        self.v.load_state_dict(new, strict=True)
        skipped = [k for k in ("head.weight", "head_dist.weight") if k in state]
        if skipped:
            notes.append("the DeiT 1000-class heads head / head_dist are not loaded")
        notes.append(f"mlp_head (LayerNorm + Linear to {self.num_classes} classes) is randomly initialised")
        return notes


def _register(size: str) -> None:
    dim, heads, side, deit = SIZES[size]
    description = (f"AST, DeiT {size[:-3]} ({dim}-d, {heads} heads, 12 blocks), 128-bin Kaldi fbank, "
                   f"ImageNet init from {deit} ({side}x{side} grid)")
    if size == "base384":
        description += "; the official AudioSet / ESC-50 / SpeechCommands checkpoints"

    @register_model(f"ast-{size}", family="ast", frontend="kaldi-fbank", sample_rate=16000, frame_level=False,
                    description=description)
    def build(num_classes: int = 527, fstride: int = 10, tstride: int = 10, input_tdim: int = 1024,
              input_fdim: int = 128, norm: str = "ast-audioset") -> AST:
        return AST(size, num_classes, fstride, tstride, input_tdim, input_fdim, norm)


for _size in SIZES:
    _register(_size)


# --------------------------------------------------------------------------------------------- importer


def _strip_prefix(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Official keys without the DataParallel `module.` (or any other) prefix in front of `v.pos_embed`."""
    anchor = next((k for k in state if k.endswith("v.pos_embed")), None)
    if anchor is None:
        sample = ", ".join(list(state)[:3])
        if "pos_embed" in state and "dist_token" in state:
            raise TaggerError("this is an ImageNet DeiT (keys pos_embed, dist_token, ...), not an AST audio model; "
                              "use create_model('ast-...', init='imagenet:PATH') to start training from it")
        if any("audio_spectrogram_transformer." in k for k in state):
            raise TaggerError("this is a Hugging Face transformers AST conversion; import the original .pth "
                              "(e.g. audioset_10_10_0.4593.pth), whose keys are module.v.* and module.mlp_head.*")
        raise TaggerError(f"not an AST checkpoint: expected keys module.v.pos_embed, module.v.blocks.*, "
                          f"module.mlp_head.* (found {sample} ...)")
    prefix = anchor[: -len("v.pos_embed")]
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return out, ([f"stripped the key prefix {prefix!r}"] if prefix else [])


def _size_of(state: Mapping[str, Tensor], arch: str | None) -> str:
    """The size from the embedding dim; 768 is base384 (the official AudioSet models) unless arch says base224."""
    dim = state["v.pos_embed"].shape[-1]
    fits = [s for s, (d, *_) in SIZES.items() if d == dim]
    if not fits:
        raise TaggerError(f"v.pos_embed has embedding dim {dim}; AST sizes have 192 (tiny), 384 (small), 768 (base)")
    if arch is None:
        return fits[-1]
    wanted = arch.removeprefix("ast-")
    if wanted not in SIZES:
        raise TaggerError(f"--arch {arch} is not an AST model; use one of {', '.join('ast-' + s for s in SIZES)}")
    if wanted not in fits:
        raise TaggerError(f"--arch {arch} does not fit this file: its embedding dim {dim} is that of "
                          f"{' / '.join('ast-' + s for s in fits)}")
    return wanted


def _length_for(t_dim: int, tstride: int, preferred: int | None) -> int:
    """An input_tdim giving t_dim time patches: the given one, a recipe length, else the shortest."""
    for length in (preferred, *_KNOWN_TDIMS):
        if length is not None and length >= PATCH and (length - PATCH) // tstride + 1 == t_dim:
            return length
    return PATCH + (t_dim - 1) * tstride


def _source_layout(patches: int, kwargs: Mapping[str, Any]) -> tuple[int, int, int, str]:
    """(fstride, tstride, input_tdim, how it was found) of the model that saved a file with this many patches.

    Strides are not in the weights: the strides given in kwargs when the file's grid fits them; else the
    official stride (10/12/14/16 on both axes) whose 1024-frame grid has exactly this many patches; else 10/10.
    The official models all take 128 mel bins.
    """
    fdim = _OFFICIAL_FDIM
    given = "fstride" in kwargs or "tstride" in kwargs
    fs, ts = kwargs.get("fstride", 10), kwargs.get("tstride", 10)
    f_dim = (fdim - PATCH) // fs + 1
    if given and patches % f_dim == 0:
        t_dim = patches // f_dim
        return fs, ts, _length_for(t_dim, ts, kwargs.get("input_tdim")), "the given strides"
    for stride in _OFFICIAL_STRIDES:
        f_dim, t_dim = patch_grid(fdim, 1024, stride, stride)
        if f_dim * t_dim == patches:
            return stride, stride, 1024, f"the grid {f_dim}x{t_dim} (official stride {stride}, 1024 frames)"
    f_dim = (fdim - PATCH) // 10 + 1
    if patches % f_dim:
        raise TaggerError(f"v.pos_embed has {patches} patches, which fits no 16x16 patch grid at stride 10 on "
                          f"{fdim} mel bins; pass the file's fstride / tstride / input_tdim as model_kwargs")
    t_dim = patches // f_dim
    length = _length_for(t_dim, 10, kwargs.get("input_tdim"))
    return 10, 10, length, f"stride 10/10 assumed (not stored in the file); {f_dim}x{t_dim} grid"


_MODEL_KEYS = ("fstride", "tstride", "input_tdim", "input_fdim", "norm", "num_classes")


@register_importer("ast")
def import_ast(raw: Any, arch: str | None = None, model_kwargs: Mapping[str, Any] | None = None) -> ImportedWeights:
    """An official AST file (e.g. audioset_10_10_0.4593.pth: DataParallel keys module.v.*, module.mlp_head.*).

    Size comes from the embedding dim (768 -> ast-base384 unless arch says ast-base224); the strides and frame
    count from the positional embedding's length (see _source_layout). model_kwargs (fstride, tstride,
    input_tdim, input_fdim, norm) ask for another model: the positional embedding is adapted to its grid
    as the official audioset_pretrain path does. The unused DeiT heads v.head / v.head_dist are dropped.
    """
    kwargs = dict(model_kwargs or {})
    unknown = sorted(set(kwargs) - set(_MODEL_KEYS))
    if unknown:
        raise TaggerError(f"AST import: unknown model_kwargs {', '.join(unknown)}; valid: {', '.join(_MODEL_KEYS)}")
    state, notes = _strip_prefix(find_state_dict(raw, "an AST state_dict")[0])
    for key in ("v.cls_token", "v.dist_token", "v.patch_embed.proj.weight", "mlp_head.1.weight"):
        if key not in state:
            raise TaggerError(f"AST checkpoint without {key}; expected the keys of YuanGongND/ast ASTModel")
    kernel = state["v.patch_embed.proj.weight"]
    if kernel.ndim != 4 or kernel.shape[1] != 1:
        raise TaggerError(f"v.patch_embed.proj.weight is {tuple(kernel.shape)}; an AST patch conv takes 1 channel")
    blocks = {int(m[1]) for k in state if (m := re.match(r"v\.blocks\.(\d+)\.", k))}
    if blocks != set(range(DEPTH)):
        raise TaggerError(f"AST checkpoint has {len(blocks)} blocks; the official AST models have {DEPTH}")
    size = _size_of(state, arch)
    num_classes = state["mlp_head.1.weight"].shape[0]
    if kwargs.setdefault("num_classes", num_classes) != num_classes:
        raise TaggerError(f"the file's mlp_head has {num_classes} classes, not {kwargs['num_classes']}; import "
                          "it as it is, then replace model.mlp_head[1] to fine-tune on other classes")

    pos = state["v.pos_embed"]
    fs, ts, tdim, how = _source_layout(pos.shape[1] - NUM_TOKENS, kwargs)
    source = patch_grid(_OFFICIAL_FDIM, tdim, fs, ts)
    target_kwargs = {"num_classes": num_classes, "fstride": fs, "tstride": ts, "input_tdim": tdim, **kwargs}
    target = patch_grid(target_kwargs.get("input_fdim", 128), target_kwargs["input_tdim"],
                        target_kwargs["fstride"], target_kwargs["tstride"])
    notes.insert(0, f"ast-{size} with {num_classes} classes; layout from {how}")
    if size == "base384" and arch is None:
        notes.append("embedding dim 768: ast-base384 (the official AudioSet models; base224 has the same shapes)")
    if target != source:
        state["v.pos_embed"] = adapt_pos_embed(pos, source, target)
        notes.append(_how_adapted(source, target))
    dropped = [k for k in state if k.startswith(_UNUSED_HEADS)]
    for key in dropped:
        del state[key]
    if dropped:
        notes.append(f"dropped {len(dropped)} official keys that forward never uses (the DeiT 1000-class heads "
                     "v.head.*, v.head_dist.*)")
    return ImportedWeights(arch=f"ast-{size}", model_kwargs=target_kwargs, state_dict=state, notes=notes)
