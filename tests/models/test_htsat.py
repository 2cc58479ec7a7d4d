"""HTS-AT: sizes, official key layout and buffers, SDPA attention, outputs and frames, importer, ImageNet init,
tracing and parity with the official code (fixture htsat_audioset)."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import parity_fixture
from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention

from tagger.errors import TaggerError
from tagger.inference.runtime import input_policy
from tagger.models import create_model, importer, list_models
from tagger.models.htsat import SdpaWindowAttention, _geometry_buffers
from tagger.models.inference import FastInference

TINY = {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [2, 2, 4, 4]}
# Trainable parameters at 527 classes without the unused official `head` Linear(527, 527) (278,256 parameters).
PARAMS = 29_963_431
HEAD = 527 * 527 + 527
FROZEN_FRONTEND = 2 * 513 * 1024 + 513 * 64  # torchlibrosa STFT kernels + melW, parameters in the official model


def _tiny(num_classes: int = 5, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("htsat-tiny", num_classes=num_classes, **TINY)
    with torch.no_grad():  # non-trivial bn0 statistics and position biases, so a wrong mapping shows
        model.bn0.running_mean.normal_(-30.0, 3.0)
        model.bn0.running_var.uniform_(200.0, 400.0)
        for name, param in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                param.normal_(0.0, 0.5)
    return model.eval()


def _official_layout(model: torch.nn.Module, prefix: str = "sed_model.") -> dict[str, torch.Tensor]:
    """Our weights as the official code saves them: torchlibrosa tensors, buffers and the unused head."""
    real, imag = model.frontend.dft_kernels()
    state = {
        "spectrogram_extractor.stft.conv_real.weight": real,
        "spectrogram_extractor.stft.conv_imag.weight": imag,
        "logmel_extractor.melW": model.frontend.melW.clone(),
    }
    state.update({k: v.clone() for k, v in model.state_dict().items() if k != "frontend.melW"})
    state.update(_geometry_buffers(model))
    k = model.num_classes
    state.update({"head.weight": torch.randn(k, k), "head.bias": torch.zeros(k)})
    return {prefix + key: value for key, value in state.items()}


# --------------------------------------------------------------------------------------------- registry, sizes


def test_registered_name():
    entries = [e for e in list_models() if e.family == "htsat"]
    assert [e.name for e in entries] == ["htsat-tiny"]
    entry = entries[0]
    assert (entry.frontend, entry.sample_rate, entry.frame_level) == ("panns-logmel", 32000, True)


def test_parameter_count():
    """REFERENCE 3.2: 30.24 M trainable (with the unused head), 31.33 M with the frozen front-end tensors."""
    with torch.device("meta"):
        model = create_model("htsat-tiny")
    count = sum(p.numel() for p in model.parameters())
    assert count == PARAMS
    assert round((count + HEAD) / 1e6, 2) == 30.24
    assert round((count + HEAD + FROZEN_FRONTEND) / 1e6, 2) == 31.33


def test_official_key_layout_and_geometry():
    with torch.device("meta"):
        model = create_model("htsat-tiny")
    state = model.state_dict()
    assert not any(k.startswith("head.") for k in state)
    assert state["patch_embed.proj.weight"].shape == (96, 1, 4, 4)
    assert state["layers.0.downsample.reduction.weight"].shape == (192, 384)
    assert state["layers.2.downsample.norm.weight"].shape == (1536,)
    assert "layers.3.downsample.reduction.weight" not in state
    assert state["layers.3.blocks.1.attn.relative_position_bias_table"].shape == (225, 32)
    assert state["tscam_conv.weight"].shape == (527, 768, 2, 3)
    assert sum(k.startswith("layers.2.blocks.") and k.endswith("qkv.weight") for k in state) == 6
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, SwinTransformerBlock)}
    assert len(blocks) == 12
    for name, block in blocks.items():
        stage, index = int(name.split(".")[1]), int(name.split(".")[3])
        shifted = index % 2 == 1 and stage < 3  # stage 4 is one 8x8 window: no shift
        assert block.window_size == (8, 8) and block.shift_size == ((4, 4) if shifted else (0, 0))
        assert isinstance(block.attn, SdpaWindowAttention)
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_shift_masks_match_the_official_construction():
    with torch.device("meta"):
        model = create_model("htsat-tiny")
    buffers = _geometry_buffers(model)
    masks = {k: v for k, v in buffers.items() if k.endswith("attn_mask")}
    assert sorted(masks) == [f"layers.{i}.blocks.{j}.attn_mask" for i, j in ((0, 1), (1, 1), (2, 1), (2, 3), (2, 5))]
    assert masks["layers.0.blocks.1.attn_mask"].shape == (64, 64, 64)
    assert set(masks["layers.1.blocks.1.attn_mask"].unique().tolist()) == {-100.0, 0.0}
    assert (masks["layers.0.blocks.1.attn_mask"][0] == 0).all()  # the top-left window is not cut by the shift
    assert len(buffers) == 12 + 5


@pytest.mark.parametrize("shifted", [False, True])
def test_sdpa_attention_equals_explicit_softmax(shifted):
    """Folding windows into the head axis gives timm's explicit q·kᵀ + bias (+ mask) softmax attention."""
    torch.manual_seed(0)
    ours = SdpaWindowAttention(32, num_heads=4, window_size=(4, 4))
    reference = WindowAttention(32, num_heads=4, window_size=(4, 4))
    reference.fused_attn = False
    with torch.no_grad():
        ours.relative_position_bias_table.normal_(0, 1)
    reference.load_state_dict(ours.state_dict())
    windows = 6
    mask = (torch.rand(windows, 16, 16) > 0.7).float() * -100.0 if shifted else None
    x = torch.randn(3 * windows, 16, 32)
    torch.testing.assert_close(ours(x, mask), reference(x, mask), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- outputs


def test_outputs_frames_and_official_view():
    model = _tiny(num_classes=5)
    spec = torch.randn(2, 64, 1001) * 10 - 30
    with torch.inference_mode():
        out = model.forward_features(spec)
        official = model.official_outputs(spec)
        alone = model.forward_features(spec[1:])
    assert model.derived_logits is False and model.num_classes == 5
    assert out.logits.shape == (2, 5) and out.frame_logits.shape == (2, 1001, 5) and out.embedding.shape == (2, 128)
    assert official["framewise_output"].shape == (2, 1024, 5)
    torch.testing.assert_close(out.logits.sigmoid(), official["clipwise_output"])
    torch.testing.assert_close(out.embedding, official["latent_output"])
    # Frame t of the input sits at round(t * 1023 / 1000) on the official 1024-frame axis.
    position = torch.round(torch.arange(1001) * 1023 / 1000).long()
    torch.testing.assert_close(out.frame_logits.sigmoid(), official["framewise_output"][:, position])
    # The clip logit is the mean of the 32 token steps, each repeated 32 times on the 1024-frame axis.
    steps = torch.logit(official["framewise_output"][:, ::32].double())
    torch.testing.assert_close(steps.mean(1), out.logits.double(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alone.logits, out.logits[1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone.frame_logits, out.frame_logits[1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("frames", [1024, 300, 2])
def test_other_lengths(frames):
    model = _tiny(num_classes=3)
    with torch.inference_mode():
        out = model.forward_features(torch.randn(1, 64, frames))
    assert out.frame_logits.shape == (1, frames, 3)
    index = model.frame_index(frames, 32)
    assert index[0] == 0 and index[-1] == 31 and (index.diff() >= 0).all()
    if frames == 1024:  # no stretching: 32 frames per step
        assert index.tolist() == [t // 32 for t in range(1024)]


def test_waveform_path_and_bad_input():
    model = _tiny(num_classes=3)
    with torch.inference_mode():
        out = model(torch.randn(1, 32000 * 3) * 0.1)
    assert out.frame_logits.shape == (1, 301, 3)
    with pytest.raises(TaggerError, match="longer than 1024"):
        model.forward_features(torch.zeros(1, 64, 1025))
    with pytest.raises(TaggerError, match=r"\(batch, 64, frames\)"):
        model.forward_features(torch.zeros(1, 128, 100))
    with pytest.raises(TaggerError, match="num_heads"):
        create_model("htsat-tiny", embed_dim=18, num_heads=[4, 8, 16, 32])
    with pytest.raises(TaggerError, match="window_size"):
        create_model("htsat-tiny", window_size=6)
    with pytest.raises(TaggerError, match="one entry per stage"):
        create_model("htsat-tiny", depths=[2, 2, 6])


def test_training_step_reaches_every_parameter():
    """DDP needs a gradient for every parameter: nothing unused (the official head) is built."""
    model = _tiny(num_classes=3).train()
    out = model(torch.randn(2, 16000) * 0.1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, torch.ones(2, 3))
    (loss + out.frame_logits.mean() + out.embedding.mean()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_trace_and_fast_inference():
    model = _tiny(num_classes=4)
    wave = torch.randn(2, 32000 * 2) * 0.1
    with torch.no_grad():
        eager = model(wave)
    fast = FastInference(model)  # torch.jit.trace of forward_features, then freeze
    with torch.inference_mode():
        out = fast(wave)
    assert len(fast._graphs) == 1
    torch.testing.assert_close(out.logits, eager.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.frame_logits, eager.frame_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.embedding, eager.embedding, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- clip lengths
# Facts from the official model/htsat.py @2e29471. forward(x, infer_mode=True), the inference path, repeats the bn0
# output floor(1024 / T) times along time, then reshape_wav2img stretches what is still short of 1024 frames
# (bicubic, align_corners=True). forward(x) in eval mode takes an input over 1024 frames as crops of (T-1)//2 frames
# starting every (T-1)//4 below T - crop - 1, each stretched to 1024, and averages their clipwise and framewise
# probabilities.


def _pair(num_classes: int = 3, **settings) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights twice: one with `settings`, one with the builder defaults (stretch, windows)."""
    configured = _tiny(num_classes)
    configured.configure_inputs(**settings)
    return configured, _tiny(num_classes)


@pytest.mark.parametrize("frames, copies", [(2, 512), (101, 10), (300, 3), (341, 3), (512, 2), (513, 1), (1024, 1)])
def test_tile_repeats_the_log_mel_as_infer_mode(frames, copies):
    tile, stretch = _pair(short_input="tile")
    assert tile.copies(frames) == copies and stretch.copies(frames) == 1
    spec = torch.randn(1, 64, frames) * 10 - 30
    with torch.inference_mode():
        ours = tile.official_outputs(spec)
        by_hand = stretch.official_outputs(spec.repeat(1, 1, copies))  # the official repeat, then the stretch
        plain = stretch.official_outputs(spec)
    for key in ours:
        torch.testing.assert_close(ours[key], by_hand[key])
    assert (copies > 1) == (not torch.allclose(ours["clipwise_output"], plain["clipwise_output"]))


def test_tiled_frames_fold_back_onto_the_clip():
    """Frame t of a tiled clip: the mean logit of its copies at their places on the 1024-frame axis."""
    tile, _ = _pair(num_classes=4, short_input="tile")
    spec = torch.randn(2, 64, 300) * 10 - 30
    with torch.inference_mode():
        out = tile.forward_features(spec)
        official = tile.official_outputs(spec)
    # 3 copies = 900 frames, stretched to 1024: tiled frame j lands on round(j * 1023 / 899) (no ties at 900).
    position = torch.round(torch.arange(900) * 1023 / 899).long()
    expected = torch.logit(official["framewise_output"][:, position].double()).reshape(2, 3, 300, 4).mean(1)
    assert out.frame_logits.shape == (2, 300, 4)
    torch.testing.assert_close(out.frame_logits.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits.sigmoid(), official["clipwise_output"])
    torch.testing.assert_close(out.embedding, official["latent_output"])


def test_crops_follow_the_official_long_evaluation():
    crops, windows = _pair(long_input="crops")
    assert crops.crops(1501) == ([0, 375], 750) and crops.crops(2050) == ([0, 512, 1024], 1024)
    spec = torch.randn(1, 64, 1501) * 10 - 30
    with torch.inference_mode():
        out = crops.forward_features(spec)
        official = crops.official_outputs(spec)
        # The two official crops, and the tail crop (751..1501) that only the frame output uses.
        each = [windows.forward_features(spec[..., s:s + 750]) for s in (0, 375, 751)]
    mean_prob = (each[0].logits.sigmoid() + each[1].logits.sigmoid()) / 2
    torch.testing.assert_close(out.logits.sigmoid(), mean_prob)
    torch.testing.assert_close(official["clipwise_output"], mean_prob)
    torch.testing.assert_close(out.embedding, (each[0].embedding + each[1].embedding) / 2)
    assert official["framewise_output"].shape == (1, 1024, 3) and "latent_output" not in official
    frames = out.frame_logits
    assert frames.shape == (1, 1501, 3)
    torch.testing.assert_close(frames[:, :375], each[0].frame_logits[:, :375])  # crop 0 alone
    torch.testing.assert_close(frames[:, 750], each[1].frame_logits[:, 375])  # crop 1 alone
    torch.testing.assert_close(frames[:, 1125:], each[2].frame_logits[:, 374:])  # only the tail crop
    shared = (each[0].frame_logits[:, 375:750].sigmoid() + each[1].frame_logits[:, :375].sigmoid()) / 2
    torch.testing.assert_close(frames[:, 375:750].sigmoid(), shared)


def test_length_limits_follow_the_setting():
    crops, windows = _pair(long_input="crops")
    assert windows.max_input_frames == 1024 and crops.max_input_frames == 2050
    assert input_policy(windows).max_samples == 1023 * 320 + 319  # 1 + S // 320 frames
    assert input_policy(crops).max_samples == 2049 * 320 + 319
    with pytest.raises(TaggerError, match="--long-input crops"):
        windows.forward_features(torch.zeros(1, 64, 1025))
    with pytest.raises(TaggerError, match="longer than 2050"):
        crops.forward_features(torch.zeros(1, 64, 2051))


def test_configure_inputs_checks_and_records_the_choice():
    model = create_model("htsat-tiny", num_classes=2, **TINY)
    assert (model.short_input, model.long_input) == ("stretch", "windows")
    model.configure_inputs(short_input="tile", long_input=None)
    assert model.short_input == "tile" and model.model_kwargs["short_input"] == "tile"
    assert "long_input" not in model.model_kwargs
    with pytest.raises(TaggerError, match="--short-input 'pad' is not one of stretch, tile"):
        model.configure_inputs(short_input="pad")
    with pytest.raises(TaggerError, match="--long-input"):
        create_model("htsat-tiny", num_classes=2, long_input="chunks", **TINY)
    with torch.device("meta"):
        other = create_model("panns-cnn6", num_classes=2)
    with pytest.raises(TaggerError, match="--short-input does not apply to panns-cnn6"):
        other.configure_inputs(short_input="tile")


# --------------------------------------------------------------------------------------------- importer


@pytest.mark.parametrize("wrap", ["lightning", "raw"])
def test_importer_round_trip_infers_the_geometry(wrap):
    source = _tiny(num_classes=6, seed=3)
    official = _official_layout(source, "sed_model." if wrap == "lightning" else "")
    raw = {"state_dict": official, "epoch": 7} if wrap == "lightning" else official
    weights = importer("htsat")(raw, None)
    assert weights.arch == "htsat-tiny"
    assert weights.model_kwargs == {"num_classes": 6, **TINY, "short_input": "tile"}  # the official inference
    assert "head.weight" not in weights.state_dict and "frontend.melW" in weights.state_dict
    notes = " ".join(weights.notes)
    assert "head.*" in notes and "11 attn_mask" in notes and "torchlibrosa" in notes
    model = weights.build_model("test")
    spec = torch.randn(1, 64, 500)  # tiled twice
    source.configure_inputs(short_input="tile")
    with torch.inference_mode():
        torch.testing.assert_close(model.forward_features(spec).logits, source.forward_features(spec).logits)
    assert importer("htsat")(raw, "htsat-tiny").arch == "htsat-tiny"


def test_importer_refuses_other_files():
    convert = importer("htsat")
    official = _official_layout(_tiny(num_classes=3))
    with pytest.raises(TaggerError, match="not an HTS-AT checkpoint"):
        convert({"model": {"conv_block1.conv1.weight": torch.zeros(64, 1, 3, 3)}}, None)
    with pytest.raises(TaggerError, match="dict of tensors"):
        convert([1, 2], None)
    with pytest.raises(TaggerError, match="--arch"):
        convert(official, "panns-cnn14")
    bad_mask = dict(official)
    bad_mask["sed_model.layers.0.blocks.1.attn_mask"] = torch.zeros(64, 64, 64)
    with pytest.raises(TaggerError, match="attn_mask differs"):
        convert(bad_mask, None)
    bad_mel = dict(official)
    bad_mel["sed_model.logmel_extractor.melW"] = official["sed_model.logmel_extractor.melW"] * 2
    with pytest.raises(TaggerError, match="melW"):
        convert(bad_mel, None)
    rgb = dict(official)
    rgb["sed_model.patch_embed.proj.weight"] = torch.zeros(16, 3, 4, 4)
    with pytest.raises(TaggerError, match="ImageNet"):
        convert(rgb, None)


# --------------------------------------------------------------------------------------------- ImageNet init


def _timm_swin(window: int, img: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    swin = timm.models.swin_transformer.SwinTransformer(
        img_size=img, patch_size=4, window_size=window, num_classes=10, **TINY
    )
    return swin.state_dict()


def test_imagenet_init_from_timm_layout(tmp_path):
    state = _timm_swin(8, 256)
    path = tmp_path / "swin.pth"
    torch.save(state, path)
    model = create_model("htsat-tiny", num_classes=3, init=f"imagenet:{path}", **TINY)
    own = model.state_dict()
    torch.testing.assert_close(own["patch_embed.proj.weight"], state["patch_embed.proj.weight"].mean(1, keepdim=True))
    torch.testing.assert_close(own["layers.0.downsample.reduction.weight"],
                               state["layers.1.downsample.reduction.weight"])
    torch.testing.assert_close(own["layers.2.blocks.1.attn.relative_position_bias_table"],
                               state["layers.2.blocks.1.attn.relative_position_bias_table"])
    torch.testing.assert_close(own["norm.weight"], state["norm.weight"])


def test_imagenet_init_from_microsoft_layout_and_other_window():
    timm_state = _timm_swin(7, 224)
    microsoft = {"model": {}}
    for key, value in timm_state.items():  # merging at the end of a stage, head.fc -> head, with buffers
        key = key.replace("head.fc.", "head.")
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.", f"layers.{stage - 1}.", 1)
        microsoft["model"][key] = value
    microsoft["model"]["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    model = create_model("htsat-tiny", num_classes=3, **TINY)
    notes = model.init_from_imagenet(microsoft)
    own = model.state_dict()
    assert own["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (225, 2)
    torch.testing.assert_close(own["layers.1.downsample.norm.weight"], timm_state["layers.2.downsample.norm.weight"])
    assert any("window 8" in n for n in notes) and any("averaged" in n for n in notes)
    assert not any("timm Swin layout" in n for n in notes)
    with pytest.raises(TaggerError, match="same width"):
        create_model("htsat-tiny", num_classes=3, embed_dim=32, depths=[2, 2, 2, 2],
                     num_heads=[2, 2, 4, 4]).init_from_imagenet(microsoft)


# --------------------------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def official():
    """The htsat_audioset fixture and our model loaded through the importer from a Lightning layout."""
    fx = parity_fixture("htsat_audioset")
    lightning = {"state_dict": {"sed_model." + k: v for k, v in fx["state_dict"].items()}}
    weights = importer("htsat")(lightning, None)
    model = weights.build_model("htsat_audioset")
    return fx, weights, model


def test_parity_keys(official):
    fx, weights, model = official
    spec = [k for k, *_ in fx["spec"]]
    dropped = {k for k in spec if k.startswith(("spectrogram_extractor.", "logmel_extractor.", "head."))
               or k.endswith(("attn_mask", "relative_position_index"))}
    assert len(dropped) == 2 + 1 + 2 + 12 + 5
    kept = [k for k in spec if k not in dropped]
    ours = list(model.state_dict())
    assert ours[0] == "frontend.melW" and sorted(ours[1:]) == sorted(kept)  # timm's PatchMerging lists norm first
    assert weights.model_kwargs == {"num_classes": 527, "short_input": "tile"}


def test_parity_with_official(official):
    """(a) front-end, (b) network on the official log-mel through forward_features, (c) the waveform path."""
    fx, _, model = official
    expected = fx["outputs"]
    official_logmel = expected["logmel"][:, 0].transpose(1, 2)  # (B, 64, 1001)
    with torch.inference_mode():
        logmel = model.frontend(fx["input"])
        ours = model.forward_features(official_logmel)
        full = model.official_outputs(logmel)
    # Measured: logmel 3.1e-4 dB; on the official log-mel clipwise 1.8e-7, framewise 6.3e-7, latent 7.2e-7;
    # full waveform path clipwise 2.4e-7, framewise 9.5e-7, latent 1.0e-6.
    torch.testing.assert_close(logmel, official_logmel, rtol=0, atol=1e-3)
    torch.testing.assert_close(ours.logits.sigmoid(), expected["clipwise_output"], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.embedding, expected["latent_output"], rtol=1e-4, atol=1e-5)
    # The input frames land on every one of the 32 token steps, so this covers the whole 1024-step framewise.
    position = torch.round(torch.arange(1001) * 1023 / 1000).long()
    assert position.div(32, rounding_mode="floor").unique().numel() == 32
    torch.testing.assert_close(ours.frame_logits.sigmoid(), expected["framewise_output"][:, position],
                               rtol=1e-4, atol=1e-5)
    for key in ("clipwise_output", "framewise_output", "latent_output"):
        torch.testing.assert_close(full[key], expected[key], rtol=1e-4, atol=1e-4)
