"""HTS-AT (hierarchical token-semantic audio transformer): model, checkpoint importer and ImageNet initialisation.

Submodules carry the official names of RetroCirce/HTS-Audio-Transformer `model/htsat.py` (`bn0`, `patch_embed`,
`layers.{i}.blocks.{j}`, `layers.{i}.downsample`, `norm`, `tscam_conv`), so an official checkpoint loads after
prefix handling. The Swin blocks, patch embedding and patch merging are timm's; the window attention runs
through F.scaled_dot_product_attention. The unused official `head` Linear is not built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, resize_rel_pos_bias_table
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformerBlock,
    WindowAttention,
    get_relative_position_index,
)
from torch import Tensor, nn

from tagger.errors import TaggerError
from tagger.frontends import LogMel
from tagger.models import ImportedWeights, create_model, register_importer, register_model
from tagger.models.base import TaggerModel, TaggerOutput, init_transformer_module, mean_probability_logits
from tagger.models.heads import TokenSemanticHead
from tagger.models.official import find_state_dict

__all__ = ["HTSAT", "SwinStage", "import_htsat"]

SPEC_SIZE = 256  # the square image the log-mel is folded into (official spec_size)
PATCH_SIZE = 4
MEL_BINS = 64
DEFAULTS: dict[str, Any] = {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [4, 8, 16, 32], "window_size": 8}
# How inputs shorter / longer than 1024 frames are taken; the first is the builder's default (the official forward).
SHORT_INPUTS = ("stretch", "tile")
LONG_INPUTS = ("windows", "crops")


class SdpaWindowAttention(WindowAttention):
    """timm's window attention (same parameters and buffers) run through F.scaled_dot_product_attention.

    The relative-position bias, plus the shift mask in shifted blocks, is SDPA's additive attn_mask. The shift
    mask differs per window, so windows are folded into the head axis: one (windows·heads, N, N) mask then
    broadcasts over the batch instead of being copied for every clip.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        windows_batch, tokens, channels = x.shape
        bias = self._get_rel_pos_bias()[0]  # (heads, N, N)
        if mask is not None:  # (windows, N, N) of 0 / -100, as the official buffer
            bias = (mask.unsqueeze(1) + bias).flatten(0, 1)
        groups = bias.shape[0]
        qkv = self.qkv(x).reshape(windows_batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, -1, groups, tokens, qkv.shape[-1]).unbind(0)
        # A 4-D (1, groups, N, N) mask lets PyTorch pick its fused CPU kernel; a 3-D one falls back to the
        # unfused path (about 2x slower in stage 0, measured).
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype).unsqueeze(0), dropout_p=self.attn_drop.p if self.training else 0.0
        )
        x = x.reshape(windows_batch, self.num_heads, tokens, -1).transpose(1, 2).reshape(windows_batch, tokens, -1)
        return self.proj_drop(self.proj(x))


def _swin_block(dim: int, resolution: int, heads: int, window: int, shift: bool, drop_path: float) -> nn.Module:
    """timm's block (norm1, attn, norm2, mlp; window = resolution and no shift when the grid fits one window)
    with its attention swapped for the SDPA one."""
    block = SwinTransformerBlock(
        dim, input_resolution=(resolution, resolution), num_heads=heads, window_size=window,
        shift_size=window // 2 if shift else 0, drop_path=drop_path,
    )
    block.attn = SdpaWindowAttention(dim, num_heads=heads, window_size=block.window_size)
    return block


class SwinStage(nn.Module):
    """One stage in the official layout: its blocks, then the patch merging (`layers.{i}.downsample`).

    timm's own stage merges at its start, which would shift every downsample key by one stage.
    Works on (B, H, W, C) token grids.
    """

    def __init__(
        self, dim: int, resolution: int, depth: int, heads: int, window: int, drop_path: Sequence[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(_swin_block(dim, resolution, heads, window, i % 2 == 1, drop_path[i]) for i in range(depth))
        )
        self.downsample = PatchMerging(dim, 2 * dim) if downsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.blocks(x))


def _check_geometry(embed_dim: int, depths: Sequence[int], heads: Sequence[int], window: int) -> None:
    """Refuse configurations the official model cannot run, before building anything."""
    if len(depths) != len(heads) or not depths:
        raise TaggerError(f"htsat: depths {list(depths)} and num_heads {list(heads)} need one entry per stage")
    if any(d < 1 for d in depths) or embed_dim < 1 or window < 1:
        raise TaggerError(f"htsat: depths {list(depths)}, embed_dim {embed_dim}, window_size {window} must be >= 1")
    grid = SPEC_SIZE // PATCH_SIZE
    for stage, count in enumerate(heads):
        dim, resolution = embed_dim * 2**stage, grid // 2**stage
        if count < 1 or dim % count:
            raise TaggerError(f"htsat: stage {stage} width {dim} is not divisible by num_heads {count}")
        if resolution > window and resolution % window:
            raise TaggerError(f"htsat: window_size {window} does not tile the {resolution}x{resolution} grid of "
                              f"stage {stage}; use a power of two such as 8")
    final = grid // 2 ** (len(depths) - 1)
    if final < SPEC_SIZE // MEL_BINS or final % (SPEC_SIZE // MEL_BINS):
        raise TaggerError(f"htsat: {len(depths)} stages leave a {final}x{final} grid, too small to un-stack "
                          f"{SPEC_SIZE // MEL_BINS} time chunks; use fewer stages (official: 4)")


class HTSAT(TaggerModel):
    """HTS-AT on the PANNs log-mel (B, 64, T): clips of up to 1024 frames (10.24 s at 32 kHz) in one pass.

    Official path: bn0 over mel bins; an input shorter than 1024 frames is tiled (`short_input="tile"`, the
    official `infer_mode=True`: floor(1024 / T) copies along time) or not (`"stretch"`, the official training and
    evaluation forward), then stretched to 1024 frames by bicubic interpolation (align_corners=True); the
    1024 x 64 spectrogram is cut into 4 time chunks of 256 stacked into a 256 x 256 image; Swin-T (patch 4,
    window 8); token-semantic head giving S = 32 time steps of class logits. Longer inputs are refused (tagger
    scores windows) unless `long_input="crops"`: the official evaluation's overlapping crops of (T-1)//2 frames
    every (T-1)//4, each stretched to 1024, their probabilities averaged (up to 2050 frames, as officially).

    logits: mean over the S steps of the step logits (sigmoid(logits) is the official clipwise_output).
    frame_logits: step logits on the clip's own frames (see `frame_index`), copies of a tiled frame averaged.
    embedding: the official latent_output, the mean of the final tokens. `official_outputs` returns the official
    three outputs, the 1024-step framewise output on the network's own time axis included.
    """

    family = "htsat"
    derived_logits = False
    input_settings = {"short_input": SHORT_INPUTS, "long_input": LONG_INPUTS}

    def __init__(
        self,
        num_classes: int = 527,
        embed_dim: int = DEFAULTS["embed_dim"],
        depths: Sequence[int] = tuple(DEFAULTS["depths"]),
        num_heads: Sequence[int] = tuple(DEFAULTS["num_heads"]),
        window_size: int = DEFAULTS["window_size"],
        drop_path_rate: float = 0.1,
        short_input: str = SHORT_INPUTS[0],
        long_input: str = LONG_INPUTS[0],
    ) -> None:
        super().__init__()
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        _check_geometry(embed_dim, depths, num_heads, window_size)
        self.configure_inputs(short_input=short_input, long_input=long_input)
        self.freq_ratio = SPEC_SIZE // MEL_BINS
        self.target_frames = SPEC_SIZE * self.freq_ratio
        self.frontend = LogMel()
        self.bn0 = nn.BatchNorm2d(MEL_BINS)
        self.patch_embed = PatchEmbed(SPEC_SIZE, PATCH_SIZE, 1, embed_dim, norm_layer=nn.LayerNorm, output_fmt="NHWC")
        total = sum(depths)  # stochastic depth rising linearly from 0 to drop_path_rate over all blocks
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        grid, self.layers = SPEC_SIZE // PATCH_SIZE, nn.ModuleList()
        for stage, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            first = sum(depths[:stage])
            self.layers.append(SwinStage(embed_dim * 2**stage, grid // 2**stage, depth, heads, window_size,
                                         rates[first:first + depth], downsample=stage < len(depths) - 1))
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        final = grid // 2 ** (len(depths) - 1)
        self.tscam_conv = TokenSemanticHead(self.num_features, num_classes, final // self.freq_ratio, self.freq_ratio)
        self.apply(init_transformer_module)  # the official _init_weights, children first

    @property
    def num_classes(self) -> int:
        return self.tscam_conv.out_channels

    @property
    def max_input_frames(self) -> int:
        """1024 frames; with long_input="crops", the longest input whose official crops fit 1024 frames."""
        return 2 * self.target_frames + 2 if self.long_input == "crops" else self.target_frames

    def copies(self, frames: int) -> int:
        """How many times a `frames`-long input is tiled along time before it is stretched to 1024 frames.

        Written without max(): a trace then records floor(1024 / T) as a function of the length even when it is 1.
        """
        if self.short_input != "tile" or frames > self.target_frames:
            return 1
        return self.target_frames // frames

    def crops(self, frames: int) -> tuple[list[int], int]:
        """(starts, length) of the official evaluation's crops of an input longer than 1024 frames."""
        length, step = (frames - 1) // 2, (frames - 1) // 4
        return list(range(0, frames - length - 1, step)), length

    # ------------------------------------------------------------------------------------------- network

    def _normalise(self, spec: Tensor) -> Tensor:
        """(B, 64, T) log-mel -> bn0 -> (B, 1, T, 64), the official layout; wrong shapes and lengths refused."""
        name = self.arch or "htsat"
        if spec.ndim != 3 or spec.shape[1] != MEL_BINS:
            raise TaggerError(f"{name}: expected log-mel features (batch, {MEL_BINS}, frames), got {tuple(spec.shape)}")
        frames, longest = spec.shape[-1], self.max_input_frames
        if frames > longest:
            seconds = longest * self.frontend.config.hop_length / self.sample_rate
            crops = "" if self.long_input == "crops" else " or take the official overlapping crops (--long-input crops)"
            raise TaggerError(f"{name}: input of {frames} frames is longer than {longest} ({seconds:.2f} s); cut the "
                              f"audio into windows (tagger predict --window){crops}")
        return self.bn0(spec.unsqueeze(-1)).transpose(1, 3)

    def _image(self, x: Tensor) -> Tensor:
        """(B, 1, T, 64), T <= 1024 -> stretched to 1024 frames -> (B, 1, 256, 256), as the official reshape_wav2img.

        The official code skips the stretch at T = 1024; bicubic interpolation with align_corners=True onto the
        same size is the identity, so it always runs here and an exported graph has no branch on the length."""
        batch, _, _, bins = x.shape
        x = F.interpolate(x, size=(self.target_frames, bins), mode="bicubic", align_corners=True)
        chunk = self.target_frames // self.freq_ratio
        x = x.transpose(2, 3).reshape(batch, 1, bins, self.freq_ratio, chunk)
        return x.transpose(2, 3).reshape(batch, 1, self.freq_ratio * bins, chunk)

    def _network(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(clip logits (B, K), step logits (B, K, S), latent (B, D)) of a (B, 1, T, 64) input, T <= 1024."""
        x = self.patch_embed(self._image(x))
        for layer in self.layers:
            x = layer(x)
        tokens = self.norm(x).permute(0, 3, 1, 2)  # (B, D, H, W)
        return self.tscam_conv(tokens)

    def _short(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """The network on an input of at most 1024 frames, tiled first in tile mode; also the copy count.

        In tile mode the repeat runs even for one copy, so a traced or exported graph keeps the count as a
        function of the length instead of the value it had at the traced length."""
        copies = self.copies(x.shape[2])
        if self.short_input == "tile":
            x = x.repeat(1, 1, copies, 1)
        return *self._network(x), copies

    def _crops(self, x: Tensor, tail: bool) -> tuple[Tensor, Tensor, Tensor, list[int], int]:
        """The network on every official crop (batched), plus with `tail` one more crop ending at the last frame
        when the official ones stop short of it (the official evaluation never sees the last quarter or so).
        Returns clip (B, V, K), steps (B, V, K, S), latent (B, V, D), the starts and the crop length."""
        frames = x.shape[2]
        starts, length = self.crops(frames)
        if tail and starts[-1] + length < frames:
            starts = [*starts, frames - length]
        views = torch.stack([x[:, :, s:s + length] for s in starts], 1).flatten(0, 1)
        clip, steps, latent = (t.unflatten(0, (x.shape[0], len(starts))) for t in self._network(views))
        return clip, steps, latent, starts, length

    # ------------------------------------------------------------------------------------------- outputs

    def frame_index(self, frames: int, steps: int, device: torch.device | None = None) -> Tensor:
        """For each frame of a `frames`-long network input, the token step covering it.

        The input is stretched to 1024 frames: frame t sits at u = round(t * 1023 / (frames - 1)) (the inverse of
        align_corners=True, in integers), and the official framewise output repeats each of the S steps
        1024 / S times along that axis, so frame t takes step u // (1024 / S).
        """
        target = self.target_frames
        t = torch.arange(frames, device=device)
        if frames > 1:
            t = (2 * t * (target - 1) + (frames - 1)) // (2 * (frames - 1))
        return t // (target // steps)

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        x = self._normalise(spec)
        frames = x.shape[2]
        if frames > self.target_frames:
            return self._crops_output(x)
        clip, steps, latent, copies = self._short(x)
        # A tiled input holds `copies` copies of each frame: frame t's logits are the mean over its copies, the
        # same average the clip logit takes over all steps.
        index = self.frame_index(frames * copies, steps.shape[-1], steps.device).reshape(copies, frames)
        frame_logits = steps[..., index].mean(-2)
        return TaggerOutput(logits=clip, frame_logits=frame_logits.transpose(1, 2), embedding=latent)

    def _crops_output(self, x: Tensor) -> TaggerOutput:
        """Long input: clip and embedding from the official crops (probabilities averaged, as officially); frame t
        from every crop covering it, the tail crop included, probabilities averaged the same way."""
        frames = x.shape[2]
        clip, steps, latent, starts, length = self._crops(x, tail=True)
        official = len(self.crops(frames)[0])
        logits = mean_probability_logits(clip[:, :official], dim=1)
        index = self.frame_index(length, steps.shape[-1], steps.device)
        placed = steps.new_zeros(*steps.shape[:3], frames)  # (B, V, K, T): each crop's frames at their times
        cover = torch.full((len(starts), frames), -torch.inf, device=steps.device)
        for view, start in enumerate(starts):
            placed[:, view, :, start:start + length] = steps[:, view][..., index]
            cover[view, start:start + length] = 0.0
        frame_logits = mean_probability_logits(placed, dim=1, log_weights=cover[None, :, None])
        return TaggerOutput(logits=logits, frame_logits=frame_logits.transpose(1, 2),
                            embedding=latent[:, :official].mean(1))

    def official_outputs(self, spec: Tensor) -> dict[str, Tensor]:
        """The official output_dict for this input: `forward(x, infer_mode=True)` in tile mode, `forward(x)` in
        stretch mode and for crops. framewise_output (B, 1024, K) and clipwise_output (B, K), both sigmoid,
        cover the network's own 1024-frame axis (the tiled, stretched or cropped input), not the clip's frames;
        latent_output (B, D) as officially (absent for crops, as officially)."""
        x = self._normalise(spec)
        if x.shape[2] > self.target_frames:
            clip, steps, _, _, _ = self._crops(x, tail=False)
            framewise = torch.sigmoid(steps).mean(1).repeat_interleave(self.target_frames // steps.shape[-1], dim=-1)
            return {"framewise_output": framewise.transpose(1, 2), "clipwise_output": torch.sigmoid(clip).mean(1)}
        clip, steps, latent, _ = self._short(x)
        framewise = torch.sigmoid(steps).repeat_interleave(self.target_frames // steps.shape[-1], dim=-1)
        return {"framewise_output": framewise.transpose(1, 2), "clipwise_output": torch.sigmoid(clip),
                "latent_output": latent}

    def init_from_imagenet(self, state_dict: Mapping[str, Any]) -> list[str]:
        """Load an ImageNet Swin of the same width and depths into patch_embed, layers and norm.

        Accepts the Microsoft layout (`swin_tiny_c24_patch4_window8_256.pth`, {"model": ...}, merging at the end
        of a stage, as HTS-AT) and timm's (merging at the start of the next stage). As the official loader, the
        RGB patch kernel is averaged over its channels and the class head is dropped; bn0 and tscam_conv stay
        random. Relative-position tables of another window size are resized (timm's resize_rel_pos_bias_table).
        """
        state, notes = _imagenet_state(state_dict)
        own = self.state_dict()
        wanted = [k for k in own if k.startswith(("patch_embed.", "layers.", "norm."))]
        loaded = {}
        for key in wanted:
            if key not in state:
                raise TaggerError(f"ImageNet weights lack {key}; expected a Swin with the same depths "
                                  f"({len(self.layers)} stages) in the Microsoft or timm layout")
            value = state[key]
            if key.endswith("relative_position_bias_table") and value.shape != own[key].shape:
                side = int(round((own[key].shape[0] ** 0.5 + 1) / 2))
                value = resize_rel_pos_bias_table(value, new_window_size=(side, side), new_bias_shape=own[key].shape)
                if "resized" not in " ".join(notes):
                    notes.append(f"resized the relative-position bias tables to window {side}")
            if tuple(value.shape) != tuple(own[key].shape):
                raise TaggerError(f"ImageNet weights: {key} is {tuple(value.shape)} but {self.arch or 'this model'} "
                                  f"needs {tuple(own[key].shape)}; use a Swin of the same width (embed_dim)")
            loaded[key] = value
        self.load_state_dict(loaded, strict=False)
        notes.append("bn0 and tscam_conv keep their random initialisation; the ImageNet class head is unused")
        return notes


def _imagenet_state(raw: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str]]:
    """An ImageNet Swin state_dict in the official (Microsoft) layout, 1-channel patch kernel, no buffers."""
    state = raw.get("model", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(state, Mapping) or "patch_embed.proj.weight" not in state:
        raise TaggerError("ImageNet weights: expected a Swin state_dict with patch_embed.proj.weight "
                          "(e.g. swin_tiny_c24_patch4_window8_256.pth or a timm swin_* model)")
    notes = []
    if "layers.0.downsample.reduction.weight" not in state and "layers.1.downsample.reduction.weight" in state:
        state = {re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k): v
                 for k, v in state.items()}
        notes.append("timm Swin layout: moved each stage's patch merging to the end of the previous stage")
    state = {k: v for k, v in state.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    kernel = state["patch_embed.proj.weight"]
    if kernel.ndim == 4 and kernel.shape[1] != 1:
        state["patch_embed.proj.weight"] = kernel.mean(1, keepdim=True)
        notes.append(f"averaged the {kernel.shape[1]}-channel patch_embed.proj.weight over its channels, as "
                     "the official loader")
    return state, notes


@register_model(
    "htsat-tiny", family="htsat", frontend="panns-logmel", sample_rate=32000, frame_level=True,
    description="HTS-AT: Swin-T (window 8) on the folded log-mel + token-semantic head, 29.96 M params, "
                "AudioSet mAP 0.471",
)
def build_htsat_tiny(
    num_classes: int = 527,
    embed_dim: int = DEFAULTS["embed_dim"],
    depths: Sequence[int] = tuple(DEFAULTS["depths"]),
    num_heads: Sequence[int] = tuple(DEFAULTS["num_heads"]),
    window_size: int = DEFAULTS["window_size"],
    short_input: str = SHORT_INPUTS[0],
    long_input: str = LONG_INPUTS[0],
) -> HTSAT:
    return HTSAT(num_classes, embed_dim, depths, num_heads, window_size, short_input=short_input,
                 long_input=long_input)


# --------------------------------------------------------------------------------------------- importer

_MARKER = "patch_embed.proj.weight"
_STFT_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight")
_MEL_KEY = "logmel_extractor.melW"
_BUFFERS = ("attn_mask", "relative_position_index")


def _unwrap(raw: Any) -> tuple[dict[str, Tensor], list[str]]:
    """The official-name state_dict in a Lightning checkpoint ({"state_dict": {"sed_model.…"}}) or a raw one."""
    state, notes = find_state_dict(raw, "an HTS-AT checkpoint")
    marker = next((k for k in state if isinstance(k, str) and k.endswith(_MARKER) and "tscam" not in k), None)
    if marker is None or not any(isinstance(k, str) and k.endswith("tscam_conv.weight") for k in state):
        sample = ", ".join(list(map(str, state))[:3]) or "nothing"
        raise TaggerError(f"not an HTS-AT checkpoint: expected sed_model.{_MARKER} and sed_model.tscam_conv.weight "
                          f"(found {sample} ...)")
    prefix = marker[: -len(_MARKER)]
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, Tensor)}
    if prefix:
        notes.append(f"stripped the key prefix {prefix!r}")
    if len(kept) < len(state):
        notes.append(f"ignored {len(state) - len(kept)} entries outside {prefix or 'the model'}")
    return kept, notes


def _config_of(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Builder kwargs read from the shapes: width, depths, heads, window and class count."""
    kernel = state[_MARKER]
    if kernel.ndim != 4 or kernel.shape[1] != 1:
        raise TaggerError(f"{_MARKER} has shape {tuple(kernel.shape)}: not a 1-channel HTS-AT (an ImageNet Swin? use "
                          "create_model('htsat-tiny', init='imagenet:PATH') to start training from it)")
    depths, heads = [], []
    while f"layers.{len(depths)}.blocks.0.norm1.weight" in state:
        stage = len(depths)
        depths.append(1 + max(int(m[1]) for k in state if (m := re.match(rf"layers\.{stage}\.blocks\.(\d+)\.", k))))
        heads.append(state[f"layers.{stage}.blocks.0.attn.relative_position_bias_table"].shape[1])
    if not depths:
        raise TaggerError("HTS-AT checkpoint without layers.0.blocks.0.*: no Swin stages found")
    rows = state["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    window = int(round((rows**0.5 + 1) / 2))
    config = {"embed_dim": kernel.shape[0], "depths": depths, "num_heads": heads, "window_size": window}
    kwargs = {"num_classes": state["tscam_conv.weight"].shape[0]}
    kwargs.update({k: v for k, v in config.items() if v != DEFAULTS[k]})
    return kwargs


def _geometry_buffers(model: HTSAT) -> dict[str, Tensor]:
    """Every block's shift mask and relative-position index, computed on the CPU (the model may be on meta)."""
    buffers = {}
    for name, block in model.named_modules():
        if isinstance(block, SwinTransformerBlock):
            mask = block.get_attn_mask(device=torch.device("cpu"), dtype=torch.float32)
            if mask is not None:
                buffers[f"{name}.attn_mask"] = mask
            buffers[f"{name}.attn.relative_position_index"] = get_relative_position_index(*block.window_size)
    return buffers


def _check_buffers(official: Mapping[str, Tensor], ours: Mapping[str, Tensor]) -> None:
    """The official persistent attn_mask / relative_position_index must equal what our geometry computes."""
    for key, value in official.items():
        if key not in ours:
            raise TaggerError(f"HTS-AT checkpoint has {key}, which this geometry does not (another window size?)")
        if tuple(value.shape) != tuple(ours[key].shape) or not torch.equal(value.to(ours[key].dtype), ours[key]):
            raise TaggerError(f"HTS-AT checkpoint: {key} differs from the one this geometry computes "
                              "(another window size or spec_size than the official 8 / 256?)")
    missing = [k for k in ours if k not in official]
    if official and missing:
        raise TaggerError(f"HTS-AT checkpoint lacks the buffer {missing[0]}; is it from another geometry?")


@register_importer("htsat")
def import_htsat(raw: Any, arch: str | None) -> ImportedWeights:
    """An official HTS-AT checkpoint (Lightning .ckpt with `sed_model.` keys, or a raw state_dict) in our naming.

    The torchlibrosa STFT kernels and mel filters are checked against LogMel and the mel filters become
    `frontend.melW`; `head.*` (unused by the token-semantic path) is dropped; the attn_mask and
    relative_position_index buffers are checked against ours and dropped (ours are recomputed).
    """
    state, notes = _unwrap(raw)
    if arch is not None and arch not in ("htsat", "htsat-tiny"):
        raise TaggerError(f"--arch {arch} does not fit an HTS-AT checkpoint; use htsat-tiny")
    # Official checkpoints are used as the official inference scripts use them: short clips tiled (infer_mode).
    kwargs = {**_config_of(state), "short_input": "tile"}
    missing = [k for k in (*_STFT_KEYS, _MEL_KEY) if k not in state]
    if missing:
        raise TaggerError(f"HTS-AT checkpoint lacks {missing[0]}; expected the torchlibrosa front-end tensors")
    LogMel().check_official_tensors(state[_STFT_KEYS[0]], state[_STFT_KEYS[1]], state[_MEL_KEY])
    notes.append("checked the torchlibrosa STFT kernels and mel filters against LogMel (32 kHz, 1024/320, 64 mels)")
    mapped = {"frontend.melW": state[_MEL_KEY]}
    with torch.device("meta"):  # only the geometry is needed
        model = create_model("htsat-tiny", **kwargs)
    buffers = {k: v for k, v in state.items() if k.endswith(_BUFFERS)}
    _check_buffers(buffers, _geometry_buffers(model))
    if buffers:
        notes.append(f"checked {len(buffers)} attn_mask / relative_position_index buffers; ours are recomputed")
    head = [k for k in state if k.startswith("head.")]
    if head:
        notes.append("dropped head.* (the official Linear is unused by the token-semantic head)")
    skip = {*_STFT_KEYS, _MEL_KEY, *buffers, *head}
    mapped.update({k: v for k, v in state.items() if k not in skip})
    shape = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    notes.insert(0, f"htsat-tiny with {shape}")
    notes.append("clips shorter than 5.12 s are tiled as the official inference does (infer_mode); "
                 "--short-input stretch gives the official evaluation path")
    return ImportedWeights(arch="htsat-tiny", model_kwargs=kwargs, state_dict=mapped, notes=notes)
