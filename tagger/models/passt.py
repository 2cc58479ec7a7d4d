"""PaSST (Patchout faSt Spectrogram Transformer): models, patchout, checkpoint importer and ImageNet initialisation."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.nn import functional as F

from tagger.errors import TaggerError
from tagger.frontends import PasstMel
from tagger.models import ImportedWeights, register_importer, register_model
from tagger.models.base import TaggerModel, TaggerOutput, init_transformer_weights
from tagger.models.official import find_state_dict

PATCH = 16
INPUT_FDIM = 128  # mel bins of the passt-mel front-end
# Registered variants: name -> (fstride = tstride, input_tdim). input_tdim only sets the time-PE length
# (input_tdim // tstride patches); 998 frames is the official value for 10 s clips (1000 frames give 99 patches).
VARIANTS: dict[str, tuple[int, int]] = {
    "passt-s-p16-s10": (10, 998),
    "passt-s-p16-s12": (12, 998),
    "passt-s-p16-s14": (14, 998),
    "passt-s-p16-s16": (16, 998),
    "passt-s-p16-s10-20s": (10, 2000),
    "passt-s-p16-s10-30s": (10, 3000),
}
_RELEASES = {
    "passt-s-p16-s10": "passt-s-f128-p16-s10-ap.476-swa.pt (also ap.4761-swa, ap.472, kd-ap.486)",
    "passt-s-p16-s12": "passt-s-f128-p16-s12-ap.473-swa.pt / ap.470",
    "passt-s-p16-s14": "passt-s-f128-p16-s14-ap.471-swa.pt / ap.469",
    "passt-s-p16-s16": "passt-s-f128-p16-s16-ap.473-swa.pt / ap.468",
    "passt-s-p16-s10-20s": "passt-s-f128-20sec-p16-s10-ap.474-swa.pt",
    "passt-s-p16-s10-30s": "passt-s-f128-30sec-p16-s10-ap.473-swa.pt",
}
_PE_KEYS = ("new_pos_embed", "freq_new_pos_embed", "time_new_pos_embed")


def patch_count(length: int, stride: int) -> int:
    """Patches a 16-wide kernel at `stride` makes over `length` bins (0 when shorter than a patch)."""
    return 0 if length < PATCH else (length - PATCH) // stride + 1


def _passt_mel() -> PasstMel:
    """The PaSST mel front-end; on the meta device (parameter counting) it is built on the CPU, because its
    mel banks are computed from data, which meta tensors do not have; it holds no parameters."""
    if torch.get_default_device().type == "meta":
        with torch.device("cpu"):
            return PasstMel()
    return PasstMel()


def _block(dim: int, heads: int) -> Block:
    """A DeiT block (qkv bias, LayerNorm eps 1e-6, exact GELU) whose attention runs through
    F.scaled_dot_product_attention whatever timm's global fused-attention setting is."""
    block = Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    block.attn.fused_attn = True
    return block


class PatchEmbed(nn.Module):
    """16x16 patches at (fstride, tstride) as a Conv2d; the (B, E, F, T) grid is kept (no flatten) so the
    frequency and time embeddings can be added and whole rows/columns dropped."""

    def __init__(self, embed_dim: int, fstride: int, tstride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, PATCH, stride=(fstride, tstride))

    def forward(self, spec: Tensor) -> Tensor:
        return self.proj(spec)


@dataclass
class Patchout:
    """What one forward drops: the time-PE offset and the kept (sorted) indices; None keeps everything.

    kept_time / kept_freq index the patch grid (same for the whole batch), kept_tokens the flattened
    frequency-major sequence after them. The default is the eval behaviour.
    """

    time_offset: int = 0
    kept_time: Tensor | None = None
    kept_freq: Tensor | None = None
    kept_tokens: Tensor | None = None


class PaSST(TaggerModel):
    """DeiT-B (distilled: cls + dist tokens) over overlapping 16x16 patches of the PaSST mel (B, 128, T).

    Disentangled positional embeddings: `time_new_pos_embed` (1, E, 1, T_grid) and `freq_new_pos_embed`
    (1, E, F_grid, 1) are added to the patch grid, `new_pos_embed` (1, 2, E) to the two tokens. In training,
    structured patchout drops `s_patchout_t` random time columns then `s_patchout_f` frequency rows (the same
    for the whole batch), and unstructured patchout `u_patchout` random tokens; draws use `self.generator`
    when set (else torch's global RNG, in the official order, so a seeded run matches the official one).
    logits: head (LayerNorm + Linear) of (cls + dist) / 2, pre-sigmoid; embedding: that token average.
    The official `head_dist` is never used by forward and is not built.
    """

    family = "passt"
    derived_logits = False

    def __init__(
        self,
        num_classes: int = 527,
        fstride: int = 10,
        tstride: int = 10,
        input_tdim: int = 998,
        s_patchout_t: int = 40,
        s_patchout_f: int = 4,
        u_patchout: int = 0,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
    ) -> None:
        super().__init__()
        _check_settings(fstride, tstride, input_tdim, (s_patchout_t, s_patchout_f, u_patchout), embed_dim, depth,
                        num_heads)
        self._num_classes = num_classes
        self.fstride, self.tstride, self.input_tdim = fstride, tstride, input_tdim
        self.s_patchout_t, self.s_patchout_f, self.u_patchout = s_patchout_t, s_patchout_f, u_patchout
        self.generator: torch.Generator | None = None
        self.frontend = _passt_mel()
        freq, time = INPUT_FDIM // fstride, input_tdim // tstride  # the official grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, embed_dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, freq, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, 1, time))
        self.patch_embed = PatchEmbed(embed_dim, fstride, tstride)
        self.blocks = nn.Sequential(*[_block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))  # eps 1e-5
        self._init_weights()

    def _init_weights(self) -> None:
        """The official init: truncated normal (std 0.02) for tokens, embeddings and Linear weights."""
        for param in (self.cls_token, self.dist_token, *(getattr(self, k) for k in _PE_KEYS)):
            nn.init.trunc_normal_(param, std=0.02)
        init_transformer_weights(self)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def min_input_frames(self) -> int:
        return PATCH

    @property
    def max_input_frames(self) -> int:
        """The most frames whose time patches the time embedding covers."""
        return (self.grid[1] - 1) * self.tstride + PATCH + self.tstride - 1

    @property
    def grid(self) -> tuple[int, int]:
        """(frequency, time) patches the positional embeddings cover."""
        return self.freq_new_pos_embed.shape[2], self.time_new_pos_embed.shape[3]

    # ----------------------------------------------------------------------------------------- forward

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        x = self._patches(spec)
        plan = self.draw_patchout(x.shape[2], x.shape[3]) if self.training else Patchout()
        return self._encode(x, plan)

    def replay_patchout(
        self,
        spec: Tensor,
        kept_time: Sequence[int] | Tensor | None = None,
        kept_freq: Sequence[int] | Tensor | None = None,
        kept_tokens: Sequence[int] | Tensor | None = None,
        time_offset: int = 0,
    ) -> TaggerOutput:
        """forward_features with the given patchout instead of a random one, in train or eval mode alike.

        For reproducing a recorded training step (parity with the official code, debugging).
        """
        x = self._patches(spec)
        limit = self.grid[1] - x.shape[3]
        if not 0 <= time_offset <= limit:
            raise TaggerError(f"time_offset {time_offset} must lie in 0..{limit} for {x.shape[3]} time patches")
        freq, time = x.shape[2], x.shape[3]
        kept_time = _index(kept_time, time, "kept_time")
        kept_freq = _index(kept_freq, freq, "kept_freq")
        tokens = (time if kept_time is None else len(kept_time)) * (freq if kept_freq is None else len(kept_freq))
        plan = Patchout(time_offset, kept_time, kept_freq, _index(kept_tokens, tokens, "kept_tokens"))
        return self._encode(x, plan)

    def draw_patchout(self, freq: int, time: int) -> Patchout:
        """A training-mode patchout for a (freq, time) patch grid, drawn in the official order: time-PE
        offset (only when the input is shorter than the embedding), time columns, frequency rows, tokens.

        Keeps at least one column / row / token: the official code would keep none when the input has no
        more patches than it drops.
        """
        gen = self.generator
        plan = Patchout()
        spare = self.grid[1] - time
        if spare > 0:
            plan.time_offset = int(torch.randint(spare + 1, (1,), generator=gen, device=_rng_device(gen)).item())
        if self.s_patchout_t:
            plan.kept_time = _keep(time, self.s_patchout_t, gen)
            time = len(plan.kept_time)
        if self.s_patchout_f:
            plan.kept_freq = _keep(freq, self.s_patchout_f, gen)
            freq = len(plan.kept_freq)
        if self.u_patchout:
            plan.kept_tokens = _keep(freq * time, self.u_patchout, gen)
        return plan

    def _patches(self, spec: Tensor) -> Tensor:
        """Checked input -> patch grid (B, E, F, T)."""
        name = self.arch or "passt"
        if spec.ndim != 3 or spec.shape[1] != INPUT_FDIM:
            raise TaggerError(f"{name}: expected mel features (B, {INPUT_FDIM}, T), got {tuple(spec.shape)}")
        frames = spec.shape[2]
        if frames < PATCH:
            raise TaggerError(f"{name}: the input has {frames} frames; PaSST needs at least {PATCH} (one patch)")
        x = self.patch_embed(spec.unsqueeze(1))
        if x.shape[2] != self.grid[0]:
            raise TaggerError(f"{name}: {x.shape[2]} frequency patches but the embedding has {self.grid[0]}")
        if x.shape[3] > self.grid[1]:
            raise TaggerError(self._too_long(x.shape[3]))
        return x

    def _too_long(self, patches: int) -> str:
        """The official code silently cuts such input to the embedding; we refuse and say what to do."""
        covered = self.grid[1]
        frames = self.max_input_frames
        config = self.frontend.config
        seconds = frames * config.hop_length / config.sample_rate
        return (
            f"{self.arch or 'passt'}: input has {patches} time patches, the model's time embedding covers "
            f"{covered} ({seconds:.2f} s); use windows (`tagger predict --window`) or a 20 s/30 s model "
            "(passt-s-p16-s10-20s, passt-s-p16-s10-30s)"
        )

    def _encode(self, x: Tensor, plan: Patchout) -> TaggerOutput:
        batch, time = x.shape[0], x.shape[3]
        x = x + self.time_new_pos_embed[:, :, :, plan.time_offset:plan.time_offset + time]
        x = x + self.freq_new_pos_embed
        if plan.kept_time is not None:  # time first, then frequency, as officially
            x = x.index_select(3, plan.kept_time.to(x.device))
        if plan.kept_freq is not None:
            x = x.index_select(2, plan.kept_freq.to(x.device))
        x = x.flatten(2).transpose(1, 2)  # (B, F*T, E), frequency-major
        if plan.kept_tokens is not None:
            x = x.index_select(1, plan.kept_tokens.to(x.device))
        cls = self.cls_token.expand(batch, -1, -1) + self.new_pos_embed[:, :1]
        dist = self.dist_token.expand(batch, -1, -1) + self.new_pos_embed[:, 1:]
        x = self.norm(self.blocks(torch.cat((cls, dist, x), dim=1)))
        embedding = (x[:, 0] + x[:, 1]) / 2
        return TaggerOutput(logits=self.head(embedding), frame_logits=None, embedding=embedding)

    # ----------------------------------------------------------------------------------------- ImageNet

    def init_from_imagenet(self, state_dict: Mapping[str, Any]) -> list[str]:
        """Start from an ImageNet DeiT distilled (deit_base_distilled_patch16_384 for PaSST-S), as the official
        `passt_deit_bd_p16_384` does.

        Its pos_embed grid (24 x 24 at 384 px) is bicubic-interpolated to this model's (F, T) patch grid;
        the frequency embedding is its mean over time, the time embedding its mean over frequency; the first
        two entries become `new_pos_embed` (cls, dist). The RGB patch kernel is summed to one channel. Tokens,
        blocks and norm load as they are; the head (ImageNet classes) stays random.
        """
        state = _unwrap_imagenet(state_dict)
        own = self.state_dict()
        embed = own["cls_token"].shape[-1]
        pos = state["pos_embed"].float()
        side = math.isqrt(pos.shape[1] - 2)
        if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != embed or side * side != pos.shape[1] - 2:
            raise TaggerError(
                f"ImageNet weights: pos_embed has shape {tuple(pos.shape)}; expected (1, 2 + n*n, {embed}) of a "
                f"distilled DeiT with embedding width {embed}"
            )
        image = pos[:, 2:].reshape(1, side, side, embed).permute(0, 3, 1, 2)
        image = F.interpolate(image, size=self.grid, mode="bicubic", align_corners=False)
        loaded = {
            "new_pos_embed": pos[:, :2],
            "freq_new_pos_embed": image.mean(3, keepdim=True),
            "time_new_pos_embed": image.mean(2, keepdim=True),
        }
        notes = [f"pos_embed {side}x{side} grid -> bicubic to {self.grid[0]}x{self.grid[1]}, then frequency and "
                 "time embeddings as its means over time and frequency; cls/dist embeddings from its first 2 rows"]
        kernel = state["patch_embed.proj.weight"].float()
        if kernel.ndim == 4 and kernel.shape[1] == 3:
            kernel = kernel.sum(1, keepdim=True)
            notes.append("summed the RGB patch kernel patch_embed.proj.weight over its 3 input channels")
        loaded["patch_embed.proj.weight"] = kernel
        trunk = [k for k in own if not k.startswith("head.") and k not in loaded]
        for key in trunk:
            if key not in state:
                raise TaggerError(f"ImageNet weights lack {key}; expected a timm/DeiT distilled ViT state_dict")
            loaded[key] = state[key]
        for key, value in loaded.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise TaggerError(
                    f"ImageNet weights: {key} is {tuple(value.shape)} but {self.arch or 'this model'} needs "
                    f"{tuple(own[key].shape)}; use a DeiT of the same width and depth (DeiT-B for PaSST-S)"
                )
        self.load_state_dict(loaded, strict=False)
        skipped = sorted({k.split(".")[0] for k in state if k.startswith("head")})
        notes.append(f"kept the random head ({self.num_classes} classes); unused from the file: {', '.join(skipped)}")
        return notes


def _check_settings(fstride: int, tstride: int, input_tdim: int, patchout: tuple[int, int, int], embed_dim: int,
                    depth: int, num_heads: int) -> None:
    for name, stride in (("fstride", fstride), ("tstride", tstride)):
        if not 1 <= stride <= PATCH:
            raise TaggerError(f"{name} must be 1..{PATCH} (patch overlap), got {stride}")
    if patch_count(INPUT_FDIM, fstride) != INPUT_FDIM // fstride:
        raise TaggerError(
            f"fstride {fstride} makes {patch_count(INPUT_FDIM, fstride)} frequency patches but the official "
            f"embedding grid has {INPUT_FDIM // fstride}; use 10, 12, 14 or 16"
        )
    if input_tdim < PATCH:
        raise TaggerError(f"input_tdim must be >= {PATCH} frames, got {input_tdim}")
    if min(patchout) < 0:
        raise TaggerError(f"s_patchout_t, s_patchout_f and u_patchout must be >= 0, got {patchout}")
    if depth < 1 or num_heads < 1 or embed_dim % num_heads:
        raise TaggerError(f"need depth >= 1 and embed_dim divisible by num_heads, got {depth}, {embed_dim}, "
                          f"{num_heads}")


def _rng_device(gen: torch.Generator | None) -> torch.device:
    return gen.device if gen is not None else torch.device("cpu")


def _keep(count: int, drop: int, gen: torch.Generator | None) -> Tensor:
    """Sorted indices of `count - drop` (at least 1) random items out of `count`."""
    order = torch.randperm(count, generator=gen, device=_rng_device(gen))
    return order[: max(count - drop, 1)].sort().values


def _index(values: Sequence[int] | Tensor | None, size: int, what: str) -> Tensor | None:
    if values is None:
        return None
    index = torch.as_tensor(values, dtype=torch.long).flatten().cpu()
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= size:
        raise TaggerError(f"{what} must be non-empty indices in 0..{size - 1}")
    return index


def _unwrap_imagenet(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """timm / facebookresearch DeiT files: a state_dict, or one under "model" / "state_dict"."""
    state: Any = state_dict
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or "pos_embed" not in state or "patch_embed.proj.weight" not in state:
        raise TaggerError(
            "ImageNet weights: expected a DeiT state_dict with pos_embed, cls_token, dist_token, "
            "patch_embed.proj.weight, blocks.* (e.g. timm deit_base_distilled_patch16_384)"
        )
    if "dist_token" not in state:
        raise TaggerError(
            "ImageNet weights have no dist_token: PaSST starts from a distilled DeiT (cls + dist tokens), "
            "e.g. deit_base_distilled_patch16_384"
        )
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


# --------------------------------------------------------------------------------------------- registry


def _register(name: str, stride: int, input_tdim: int) -> None:
    seconds = round(input_tdim / 100)

    @register_model(
        name,
        family="passt",
        frontend="passt-mel",
        sample_rate=32000,
        frame_level=False,
        description=f"PaSST-S DeiT-B/16, patch stride {stride}, time embedding for {seconds} s ({_RELEASES[name]})",
    )
    def build(
        num_classes: int = 527,
        s_patchout_t: int = 40,
        s_patchout_f: int = 4,
        u_patchout: int = 0,
        input_tdim: int = input_tdim,
        fstride: int = stride,
        tstride: int = stride,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
    ) -> PaSST:
        return PaSST(num_classes, fstride, tstride, input_tdim, s_patchout_t, s_patchout_f, u_patchout, embed_dim,
                     depth, num_heads)


for _name, (_stride, _tdim) in VARIANTS.items():
    _register(_name, _stride, _tdim)


# --------------------------------------------------------------------------------------------- importing

_STRIDE_OF_FREQ_GRID = {patch_count(INPUT_FDIM, s): s for s in (16, 14, 12, 10)}  # 8, 9, 10, 12 rows


def _unwrap(raw: Any) -> tuple[dict[str, Tensor], list[str]]:
    """The PaSST net's own keys: unwraps {"state_dict": ...} (Lightning) and picks the net's prefix.

    Lightning checkpoints of the training framework hold `net.*`, from SWA on also `net_swa.*` (the averaged
    copy), and the front-end's `mel.*` buffers. The official repo ships no loader for them; its `-swa`
    releases are the averaged weights, so `net_swa.*` is preferred when present.
    """
    state, _ = find_state_dict(raw, "a PaSST state_dict")
    prefixes = sorted({k[: -len("time_new_pos_embed")] for k in state
                       if isinstance(k, str) and k.endswith("time_new_pos_embed")})
    if not prefixes:
        if "pos_embed" in state and "patch_embed.proj.weight" in state:
            raise TaggerError(
                "this is an ImageNet ViT/DeiT, not a PaSST audio tagger; use create_model(..., "
                "init='imagenet:PATH') to start training from it"
            )
        sample = ", ".join(list(map(str, state))[:3]) or "nothing"
        raise TaggerError(
            "not a PaSST state_dict: expected keys time_new_pos_embed, freq_new_pos_embed, new_pos_embed, "
            f"patch_embed.proj.weight, blocks.*, head.* (found {sample} ...)"
        )
    notes = []
    if "net_swa." in prefixes:
        prefix = "net_swa."
        notes.append("Lightning checkpoint with SWA: used the averaged net_swa.* weights (as the -swa releases); "
                     "net.* was ignored")
    elif len(prefixes) == 1:
        prefix = prefixes[0]
    else:
        raise TaggerError(f"the file holds several PaSST nets (prefixes {', '.join(map(repr, prefixes))}); "
                          "save the one you want as a plain state_dict")
    net = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, Tensor)}
    others = {k.split(".")[0] for k in state if not k.startswith(prefix)} - ({"net"} if prefix == "net_swa." else set())
    if prefix:
        notes.append(f"stripped the key prefix {prefix!r}")
    if others:
        notes.append(f"dropped {', '.join(sorted(o + '.*' for o in others))}: not part of the network (passt-mel "
                     "rebuilds the front-end)")
    return net, notes


def _shapes(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Architecture numbers read from the tensors."""
    needed = ("cls_token", "dist_token", *_PE_KEYS, "patch_embed.proj.weight", "head.1.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise TaggerError(f"PaSST state_dict without {missing[0]}; expected the official layout "
                          "(cls_token, dist_token, *_pos_embed, patch_embed.proj, blocks.N, norm, head.0/1)")
    kernel = state["patch_embed.proj.weight"]
    if tuple(kernel.shape[1:]) != (1, PATCH, PATCH):
        raise TaggerError(f"patch_embed.proj.weight has shape {tuple(kernel.shape)}; PaSST takes 1-channel "
                          f"{PATCH}x{PATCH} patches of the mel spectrogram")
    depth = len({m[1] for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    return {"embed": kernel.shape[0], "freq": state["freq_new_pos_embed"].shape[2],
            "time": state["time_new_pos_embed"].shape[3], "depth": depth,
            "num_classes": state["head.1.weight"].shape[0]}


def _arch_for(shape: dict[str, Any], arch: str | None) -> tuple[str, dict[str, Any], list[str]]:
    """Registered name + extra kwargs whose embedding grid is the file's."""
    freq, time = shape["freq"], shape["time"]
    if arch is not None:
        if arch not in VARIANTS:
            raise TaggerError(f"--arch {arch} is not a PaSST model; use one of {', '.join(VARIANTS)}")
        stride = VARIANTS[arch][0]
        if patch_count(INPUT_FDIM, stride) != freq:
            raise TaggerError(f"--arch {arch} (stride {stride}) does not fit this file: its {freq} frequency "
                              f"patches need stride {_STRIDE_OF_FREQ_GRID.get(freq, '?')}")
        name = arch
    else:
        if freq not in _STRIDE_OF_FREQ_GRID:
            raise TaggerError(f"freq_new_pos_embed has {freq} frequency patches; 128 mels give 12, 10, 9 or 8 "
                              "(strides 10, 12, 14, 16)")
        stride = _STRIDE_OF_FREQ_GRID[freq]
        fits = [n for n, (s, tdim) in VARIANTS.items() if s == stride and tdim // s == time]
        name = fits[0] if fits else f"passt-s-p16-s{stride}"
    notes = [f"patch stride {stride} (frequency grid {freq}; the time stride is taken equal, as in all releases)"]
    kwargs: dict[str, Any] = {}
    if VARIANTS[name][1] // stride != time:
        kwargs["input_tdim"] = time * stride
        notes.append(f"time embedding of {time} patches matches no registered variant: built {name} with "
                     f"input_tdim={time * stride}; check that the file expects passt-mel's 320-sample hop "
                     "(the stfthop100/160 releases do not)")
    elif name.endswith("-20s"):
        notes.append("the stfthop160 release has the same shapes but expects a 160-sample hop; this import "
                     "assumes the 20 s model (passt-mel, hop 320)")
    return name, kwargs, notes


@register_importer("passt")
def import_passt(raw: Any, arch: str | None) -> ImportedWeights:
    """An official PaSST file in tagger naming: a release state_dict (passt-s-f128-p16-s10-ap.476-swa.pt),
    a Lightning checkpoint of the training framework (net. / net_swa. / mel.), or a hear21passt wrapper.

    Names are the official ones; the stride, time-embedding length, depth and class count come from shapes.
    """
    state, notes = _unwrap(raw)
    shape = _shapes(state)
    name, kwargs, arch_notes = _arch_for(shape, arch)
    kwargs = {"num_classes": shape["num_classes"], **kwargs}
    if shape["depth"] != 12:
        kwargs["depth"] = shape["depth"]
        arch_notes.append(f"depth {shape['depth']} (PaSST-L has 7)")
    if shape["embed"] != 768:
        kwargs["embed_dim"], kwargs["num_heads"] = shape["embed"], max(shape["embed"] // 64, 1)
        arch_notes.append(f"embedding width {shape['embed']}: {kwargs['num_heads']} heads assumed (64 per head)")
    dropped = [k for k in state if k.startswith("head_dist.")]
    if dropped:
        notes.append("dropped head_dist.* (the official forward never uses it; it is not built)")
    state = {k: v for k, v in state.items() if not k.startswith("head_dist.")}
    notes = [f"{name} with {shape['num_classes']} classes", *arch_notes, *notes]
    return ImportedWeights(arch=name, model_kwargs=kwargs, state_dict=state, notes=notes)
