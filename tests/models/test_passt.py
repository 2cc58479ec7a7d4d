"""PaSST: registry, sizes, official key layout, patchout, time-embedding rules, importer, ImageNet init, parity."""

from __future__ import annotations

import collections

import pytest
import torch
from conftest import parity_fixture

from tagger.errors import TaggerError
from tagger.models import create_model, importer, list_models
from tagger.models.inference import FastInference
from tagger.models.passt import VARIANTS

# Trainable parameters at 527 classes as built here (no head_dist), and as the official model counts them
# (+ head_dist, Linear 768 -> 527 = 405,263). REFERENCE 2.2: stride 10 86.154 M, stride 16 86.122 M, PaSST-L
# (depth 7) 50.714 M; the parity fixture's state_dict has 86,153,758 values.
HEAD_DIST = 768 * 527 + 527
PARAMS = {
    "passt-s-p16-s10": 85_748_495, "passt-s-p16-s12": 85_734_671, "passt-s-p16-s14": 85_724_687,
    "passt-s-p16-s16": 85_717_007, "passt-s-p16-s10-20s": 85_826_063, "passt-s-p16-s10-30s": 85_902_863,
}
GRIDS = {
    "passt-s-p16-s10": (12, 99), "passt-s-p16-s12": (10, 83), "passt-s-p16-s14": (9, 71),
    "passt-s-p16-s16": (8, 62), "passt-s-p16-s10-20s": (12, 200), "passt-s-p16-s10-30s": (12, 300),
}
TINY = {"embed_dim": 64, "depth": 1, "num_heads": 2}


def _tiny(name: str = "passt-s-p16-s16", num_classes: int = 5, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=num_classes, **{**TINY, **kwargs})


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 128, frames, generator=torch.Generator().manual_seed(seed))


def _block_input(model: torch.nn.Module) -> list[tuple[int, ...]]:
    """Records the shape of the token sequence that enters the first block."""
    shapes: list[tuple[int, ...]] = []
    model.blocks[0].register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    return shapes


# --------------------------------------------------------------------------------------------- registry, sizes


def test_registered_names():
    entries = {e.name: e for e in list_models() if e.family == "passt"}
    assert sorted(entries) == sorted(VARIANTS)
    for entry in entries.values():
        assert (entry.frontend, entry.sample_rate, entry.frame_level) == ("passt-mel", 32000, False)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_counts_and_grids(name):
    model = _meta(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == PARAMS[name]
    assert model.grid == GRIDS[name]
    if name == "passt-s-p16-s10":
        assert round((count + HEAD_DIST) / 1e6, 3) == 86.154
    if name == "passt-s-p16-s16":
        assert round((count + HEAD_DIST) / 1e6, 3) == 86.122


def test_passt_l_depth_7_count():
    count = sum(p.numel() for p in _meta("passt-s-p16-s10", depth=7).parameters())
    assert round((count + HEAD_DIST) / 1e6, 3) == 50.714


def test_official_key_layout():
    state = _meta("passt-s-p16-s10").state_dict()
    keys = list(state)
    assert keys[:7] == ["cls_token", "dist_token", "new_pos_embed", "freq_new_pos_embed", "time_new_pos_embed",
                        "patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert keys[-6:] == ["norm.weight", "norm.bias", "head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"]
    assert len(keys) == 157 and sum(k.startswith("blocks.") for k in keys) == 144  # official 159 less head_dist
    assert state["new_pos_embed"].shape == (1, 2, 768)
    assert state["freq_new_pos_embed"].shape == (1, 768, 12, 1)
    assert state["time_new_pos_embed"].shape == (1, 768, 1, 99)
    assert state["patch_embed.proj.weight"].shape == (768, 1, 16, 16)
    assert _meta("passt-s-p16-s10-30s").state_dict()["time_new_pos_embed"].shape == (1, 768, 1, 300)
    model = _meta("passt-s-p16-s16")
    assert model.patch_embed.proj.stride == (16, 16)
    norms = [m for m in model.blocks.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 24 and all(m.eps == 1e-6 for m in norms) and model.norm.eps == 1e-6
    assert model.head[0].eps == 1e-5  # the head's LayerNorm keeps torch's default, as officially
    assert not hasattr(model, "head_dist")


# --------------------------------------------------------------------------------------------- forward


def test_output_shapes_and_batch_consistency():
    model = _tiny(num_classes=7).eval()
    assert model.derived_logits is False and model.num_classes == 7
    wave = torch.randn(2, 32000 * 3) * 0.1
    with torch.inference_mode():
        out = model(wave)
        alone = model(wave[1:])
    assert out.logits.shape == (2, 7) and out.embedding.shape == (2, 64) and out.frame_logits is None
    torch.testing.assert_close(alone.logits, out.logits[1:], rtol=1e-4, atol=1e-5)


def test_attention_goes_through_sdpa(monkeypatch):
    model = _tiny(depth=2).eval()
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.inference_mode():
        model.forward_features(_mel(1, 100))
    assert len(calls) == 2


def test_structured_and_unstructured_patchout_in_training_only():
    model = _tiny("passt-s-p16-s10", s_patchout_t=40, s_patchout_f=4, u_patchout=10)
    shapes = _block_input(model)
    mel = _mel(2, 1000)
    model.train()
    model.forward_features(mel)
    model.eval()
    with torch.inference_mode():
        model.forward_features(mel)
    assert shapes == [(2, 2 + 59 * 8 - 10, 64), (2, 2 + 12 * 99, 64)]
    plan = model.draw_patchout(12, 99)
    assert len(plan.kept_time) == 59 and len(plan.kept_freq) == 8 and len(plan.kept_tokens) == 462
    assert torch.equal(plan.kept_time, plan.kept_time.sort().values) and plan.time_offset == 0


def test_patchout_keeps_at_least_one_patch():
    """The official slice would keep nothing when a clip has no more patches than patchout drops."""
    model = _tiny("passt-s-p16-s10", s_patchout_t=40, s_patchout_f=20).train()
    shapes = _block_input(model)
    model.forward_features(_mel(1, 200))  # 19 time patches, 12 frequency patches
    assert shapes == [(1, 3, 64)]


def test_generator_makes_training_reproducible():
    model = _tiny("passt-s-p16-s10").train()
    mel = _mel(2, 500)  # shorter than the embedding: the time-PE offset is random too
    runs = []
    for seed in (1, 1, 2):
        model.generator = torch.Generator().manual_seed(seed)
        runs.append(model.forward_features(mel).logits.detach())
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.allclose(runs[0], runs[2])
    model.generator = torch.Generator().manual_seed(1)
    plan = model.draw_patchout(12, 49)
    assert 0 <= plan.time_offset <= 99 - 49
    replayed = model.replay_patchout(mel, plan.kept_time, plan.kept_freq, time_offset=plan.time_offset)
    torch.testing.assert_close(replayed.logits.detach(), runs[0], rtol=0, atol=0)


def test_short_input_uses_the_first_time_embeddings_in_eval():
    model = _tiny("passt-s-p16-s10").eval()
    short = _tiny("passt-s-p16-s10", input_tdim=490).eval()  # 49 time patches
    state = model.state_dict()
    state["time_new_pos_embed"] = state["time_new_pos_embed"][..., :49]
    short.load_state_dict(state)
    mel = _mel(2, 500)
    with torch.inference_mode():
        torch.testing.assert_close(model.forward_features(mel).logits, short.forward_features(mel).logits)
        shifted = model.replay_patchout(mel, time_offset=3).logits
    assert not torch.allclose(shifted, short.forward_features(mel).logits)


def test_every_parameter_gets_a_gradient():
    """DistributedDataParallel needs it: the unused official head_dist is not built."""
    model = _tiny("passt-s-p16-s10", num_classes=3).train()
    out = model(torch.randn(2, 32000 * 2) * 0.1)
    torch.nn.functional.binary_cross_entropy_with_logits(out.logits, torch.ones(2, 3)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_long_input_is_refused_not_cut():
    model = _tiny("passt-s-p16-s10")
    with pytest.raises(TaggerError, match=r"input has 100 time patches.*covers 99 \(10\.05 s\).*--window"):
        model.forward_features(_mel(1, 1010))
    model.forward_features(_mel(1, 1005))  # 99 patches: still fine
    assert _tiny("passt-s-p16-s10-20s").eval().forward_features(_mel(1, 2000)).logits.shape == (1, 5)


def test_bad_input_and_settings():
    model = _tiny()
    with pytest.raises(TaggerError, match="expected mel features"):
        model.forward_features(torch.zeros(1, 1, 128, 100))
    with pytest.raises(TaggerError, match="expected mel features"):
        model.forward_features(torch.zeros(1, 64, 100))
    with pytest.raises(TaggerError, match="at least 16"):
        model.forward_features(torch.zeros(1, 128, 10))
    with pytest.raises(TaggerError, match="fstride"):
        create_model("passt-s-p16-s10", fstride=9, **TINY)
    with pytest.raises(TaggerError, match="patchout"):
        create_model("passt-s-p16-s10", s_patchout_t=-1, **TINY)
    with pytest.raises(TaggerError, match="kept_time"):
        model.replay_patchout(_mel(1, 100), kept_time=[0, 99])


def test_traces_for_fast_inference():
    model = _tiny("passt-s-p16-s10", depth=2).eval()
    wave = torch.randn(2, 32000 * 4) * 0.1
    with torch.no_grad():
        eager = model(wave)
    fast = FastInference(model)
    with torch.inference_mode():
        out = fast(wave)
    torch.testing.assert_close(out.logits, eager.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.embedding, eager.embedding, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- importer


def _release(model: torch.nn.Module) -> collections.OrderedDict:
    """The release file layout: the net's raw state_dict, with the unused head_dist."""
    state = collections.OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    width, classes = state["head.1.weight"].shape[1], state["head.1.weight"].shape[0]
    state["head_dist.weight"], state["head_dist.bias"] = torch.randn(classes, width), torch.randn(classes)
    return state


def test_importer_release_layout_roundtrip():
    source = _tiny("passt-s-p16-s16", num_classes=9, embed_dim=128, depth=2).eval()
    weights = importer("passt")(_release(source), None)
    assert weights.arch == "passt-s-p16-s16"
    assert weights.model_kwargs == {"num_classes": 9, "depth": 2, "embed_dim": 128, "num_heads": 2}
    assert any("head_dist" in n for n in weights.notes)
    model = weights.build_model("test")
    mel = _mel(1, 300)
    with torch.inference_mode():
        torch.testing.assert_close(model.forward_features(mel).logits, source.forward_features(mel).logits)


def test_importer_lightning_checkpoint_prefers_swa():
    net, swa = _tiny("passt-s-p16-s10", seed=1), _tiny("passt-s-p16-s10", seed=2)
    state = {f"net.{k}": v for k, v in _release(net).items()}
    state.update({f"net_swa.{k}": v for k, v in _release(swa).items()})
    state.update({"mel.window": torch.ones(800), "mel.preemphasis_coefficient": torch.ones(1, 1, 2)})
    weights = importer("passt")({"state_dict": state, "epoch": 120, "global_step": 10}, None)
    assert weights.arch == "passt-s-p16-s10"
    torch.testing.assert_close(weights.state_dict["cls_token"], swa.cls_token.detach())
    assert any("net_swa" in n for n in weights.notes) and any("mel.*" in n for n in weights.notes)
    weights.build_model("test")
    only_net = {k: v for k, v in state.items() if not k.startswith("net_swa.")}  # before SWA started
    weights = importer("passt")({"state_dict": only_net}, None)
    torch.testing.assert_close(weights.state_dict["cls_token"], net.cls_token.detach())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_importer_infers_the_variant_from_shapes(name):
    state = _release(_meta(name))
    weights = importer("passt")(state, None)
    assert (weights.arch, weights.model_kwargs) == (name, {"num_classes": 527})
    assert importer("passt")(state, name).arch == name


def test_importer_other_time_grids_and_depths():
    weights = importer("passt")(_release(_meta("passt-s-p16-s10", input_tdim=1500, depth=7, num_classes=20)), None)
    assert weights.arch == "passt-s-p16-s10"
    assert weights.model_kwargs == {"num_classes": 20, "input_tdim": 1500, "depth": 7}
    assert any("input_tdim=1500" in n for n in weights.notes)


def test_importer_refuses_other_files():
    convert = importer("passt")
    state = _release(_tiny())
    with pytest.raises(TaggerError, match="stride 10"):
        convert(state, "passt-s-p16-s10")
    with pytest.raises(TaggerError, match="not a PaSST model"):
        convert(state, "efficientat-mn10")
    with pytest.raises(TaggerError, match="not a PaSST state_dict"):
        convert({"model": {"conv_block1.conv1.weight": torch.zeros(64, 1, 3, 3)}}, None)
    with pytest.raises(TaggerError, match="dict of tensors"):
        convert([1, 2, 3], None)
    deit = {"pos_embed": torch.zeros(1, 198, 64), "patch_embed.proj.weight": torch.zeros(64, 3, 16, 16)}
    with pytest.raises(TaggerError, match="ImageNet"):
        convert(deit, None)
    with pytest.raises(TaggerError, match="1-channel"):
        convert(dict(state, **{"patch_embed.proj.weight": torch.zeros(64, 3, 16, 16)}), None)
    with pytest.raises(TaggerError, match="head.1.weight"):
        convert({k: v for k, v in state.items() if not k.startswith("head.")}, None)
    two_nets = {f"a.{k}": v for k, v in state.items()} | {f"b.{k}": v for k, v in state.items()}
    with pytest.raises(TaggerError, match="several"):
        convert(two_nets, None)


# --------------------------------------------------------------------------------------------- ImageNet init


def _deit(distilled: bool = True) -> dict[str, torch.Tensor]:
    """A timm DeiT-tiny at 384 px (24x24 grid, as DeiT-B-384), 2 blocks, random weights: naming only."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(3)
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    return timm.create_model(name, pretrained=False, img_size=384, depth=2).state_dict()


def test_imagenet_init(tmp_path):
    deit = _deit()
    path = tmp_path / "deit.pth"
    torch.save({"model": deit}, path)  # the facebookresearch file layout
    model = create_model("passt-s-p16-s10", num_classes=4, embed_dim=192, depth=2, num_heads=3,
                         init=f"imagenet:{path}")
    own = model.state_dict()
    grid = deit["pos_embed"][:, 2:].reshape(1, 24, 24, 192).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(12, 99), mode="bicubic", align_corners=False)
    torch.testing.assert_close(own["freq_new_pos_embed"], grid.mean(3, keepdim=True))
    torch.testing.assert_close(own["time_new_pos_embed"], grid.mean(2, keepdim=True))
    torch.testing.assert_close(own["new_pos_embed"], deit["pos_embed"][:, :2])
    torch.testing.assert_close(own["patch_embed.proj.weight"], deit["patch_embed.proj.weight"].sum(1, keepdim=True))
    for key in ("cls_token", "dist_token", "patch_embed.proj.bias", "blocks.1.attn.qkv.weight", "norm.bias"):
        torch.testing.assert_close(own[key], deit[key])
    assert own["head.1.weight"].shape == (4, 192)
    notes = model.init_from_imagenet(deit)
    assert any("bicubic" in n for n in notes) and any("summed" in n for n in notes)
    assert any("head_dist" in n for n in notes)


def test_imagenet_init_refuses_other_models():
    model = create_model("passt-s-p16-s10", embed_dim=192, depth=2, num_heads=3)
    with pytest.raises(TaggerError, match="dist_token"):
        model.init_from_imagenet(_deit(distilled=False))
    with pytest.raises(TaggerError, match="embedding width 96"):
        create_model("passt-s-p16-s10", embed_dim=96, depth=2, num_heads=3).init_from_imagenet(_deit())
    with pytest.raises(TaggerError, match="lack blocks.2"):
        create_model("passt-s-p16-s10", embed_dim=192, depth=3, num_heads=3).init_from_imagenet(_deit())
    with pytest.raises(TaggerError, match="same width and depth"):
        model.init_from_imagenet({**_deit(), "blocks.1.mlp.fc1.weight": torch.zeros(384, 192)})
    with pytest.raises(TaggerError, match="DeiT"):
        model.init_from_imagenet({"conv1.weight": torch.zeros(1)})


# --------------------------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def official():
    """The fixture and one full-size model (86 M parameters) shared by the parity tests."""
    fx = parity_fixture("passt_s_p16_s10_ap476")
    weights = importer("passt")(fx["state_dict"], None)
    model = weights.build_model("passt_s_p16_s10_ap476")
    return fx, weights, model


def test_parity_keys_and_sizes(official):
    fx, weights, model = official
    assert weights.arch == "passt-s-p16-s10" and weights.model_kwargs == {"num_classes": 527}
    assert [k for k, *_ in fx["spec"] if not k.startswith("head_dist.")] == list(model.state_dict())
    assert sum(v.numel() for v in fx["state_dict"].values()) == PARAMS["passt-s-p16-s10"] + HEAD_DIST


def test_parity_eval(official):
    # Measured: mel 2.4e-7; network on the official mel 2.1e-6 (logits) / 1.3e-6 (embedding); the full
    # waveform path 1.9e-6 / 1.6e-6. The waveform path runs on clip 1 only (the one with digital silence) to
    # keep the file fast; the front-end is compared on both clips.
    fx, _, model = official
    expected = fx["outputs"]
    with torch.inference_mode():
        mel = model.frontend(fx["input"])
        on_mel = model.forward_features(expected["mel"])
        full = model(fx["input"][1:])
    torch.testing.assert_close(mel, expected["mel"], rtol=0, atol=2e-4)  # across CPUs: see test_frontends.py
    for out, rows in ((on_mel, slice(None)), (full, slice(1, 2))):
        torch.testing.assert_close(out.logits, expected["logits"][rows], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.embedding, expected["embedding"][rows], rtol=1e-4, atol=1e-5)


def test_parity_training_patchout(official):
    # Measured: logits 1.7e-6, embedding 1.3e-6 with the recorded kept indices.
    fx, _, model = official
    record, expected = fx["train_patchout"], fx["outputs"]
    torch.manual_seed(record["seed"])  # the global RNG draws the official indices in the official order
    plan = model.draw_patchout(record["freq_patches"], record["time_patches"])
    assert plan.kept_time.tolist() == record["kept_time_patches"]
    assert plan.kept_freq.tolist() == record["kept_freq_patches"]
    model.train()
    try:
        with torch.inference_mode():
            out = model.replay_patchout(expected["mel"], record["kept_time_patches"], record["kept_freq_patches"])
    finally:
        model.eval()
    torch.testing.assert_close(out.logits, expected["train_patchout_logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.embedding, expected["train_patchout_embedding"], rtol=1e-4, atol=1e-5)
