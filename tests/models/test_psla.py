"""PSLA family: registry, parameter counts, EfficientNet trunk, pooling heads, importer, ImageNet init, parity."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import parity_fixture

from tagger.catalog import count_parameters
from tagger.errors import TaggerError
from tagger.models import create_model, importer, list_models, model_entry
from tagger.models.efficientnet import VARIANTS, EfficientNet, drop_connect, static_same_padding, trunk_signature
from tagger.models.heads import AttentionPooling, MeanPooling, MultiHeadAttentionPooling

HEADS = ("mean", "att1", "att4")
NAMES = [f"psla-effnet-b{b}-{h}" for b in range(8) for h in HEADS]

# REFERENCE.md §4.2, measured on the official code: every figure except B0's uses the 4-head model.
OFFICIAL_M = {
    "psla-effnet-b0-mean": 4.68, "psla-effnet-b0-att1": 5.36, "psla-effnet-b0-att4": 9.41,
    "psla-effnet-b1-att4": 11.91, "psla-effnet-b3-att4": 17.18, "psla-effnet-b4-att4": 25.11,
    "psla-effnet-b5-att4": 36.98, "psla-effnet-b6-att4": 50.45, "psla-effnet-b7-att4": 74.58,
}
FIXTURES = [("psla_effnet_b2_head4", "psla-effnet-b2-att4"), ("psla_effnet_b2_head1", "psla-effnet-b2-att1"),
            ("psla_effnet_b2_meanpool", "psla-effnet-b2-mean")]


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------ registry and sizes


def test_all_24_names_registered():
    entries = {e.name: e for e in list_models() if e.family == "psla"}
    assert sorted(entries) == sorted(NAMES)
    for entry in entries.values():
        assert (entry.frontend, entry.sample_rate, entry.frame_level) == ("kaldi-fbank", 16000, False)


def test_parameter_counts_match_the_official_table():
    counts = {name: count_parameters(model_entry(name)) for name in NAMES}  # meta device
    assert abs(counts["psla-effnet-b2-att4"] / 1e6 - 13.641) <= 0.001
    for name, official in OFFICIAL_M.items():
        assert abs(counts[name] / 1e6 - official) <= 0.005, name
    with torch.device("meta"):
        model = model_entry("psla-effnet-b2-att4").builder(num_classes=527)
    assert model.effnet._conv_stem.weight.is_meta


def test_trunk_widths_and_depths():
    signatures = {b: trunk_signature(b) for b in VARIANTS}
    assert [s[1] for s in signatures.values()] == [1280, 1280, 1408, 1536, 1792, 2048, 2304, 2560]  # middim
    assert [s[0] for s in signatures.values()] == [16, 23, 23, 26, 32, 39, 45, 55]
    assert len(signatures) == len(set(signatures.values()))  # the importer can tell every variant apart


def test_b2_keys_match_the_official_layout():
    model = create_model("psla-effnet-b2-att4")
    state = model.state_dict()
    assert len(state) == 523 and all(k.startswith(("effnet.", "attention.")) for k in state)
    assert "effnet._blocks.0._expand_conv.weight" not in state  # expand ratio 1: no expansion conv
    assert state["effnet._blocks.2._expand_conv.weight"].shape == (96, 16, 1, 1)
    assert state["effnet._blocks.22._bn2.running_var"].shape == (352,)
    assert state["effnet._conv_head.weight"].shape == (1408, 352, 1, 1)
    assert state["attention.att.3.weight"].shape == (527, 1408, 1, 1)
    assert torch.equal(state["attention.head_weight"], torch.full((4,), 0.25))
    assert len(create_model("psla-effnet-b2-att1").state_dict()) == 510
    assert len(create_model("psla-effnet-b2-mean").state_dict()) == 508
    bn = model.effnet._blocks[5]._bn1
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)


def test_static_padding_is_efficientnet_pytorch_070():
    # 0.7.0 puts ceil(total / 2) on both sides: stride-2 3x3 at 260 px needs 1 in total, padded (1, 1).
    assert static_same_padding(260, 3, 2) == 1
    assert static_same_padding(65, 5, 2) == 2
    assert static_same_padding(130, 3, 1) == 1
    assert static_same_padding(9, 1, 1) == 0


def test_forward_contract_and_frontend():
    model = create_model("psla-effnet-b0-att4", num_classes=7, target_length=None).eval()
    assert model.family == "psla" and model.derived_logits and model.num_classes == 7
    config = model.frontend.config
    assert (config.mean, config.std, config.std_scale) == (-4.6476, 4.5699, 1.0)
    assert create_model("psla-effnet-b0-mean").frontend.config.target_length == 1056
    wave = torch.randn(2, 16000) * 0.1
    with torch.inference_mode():
        out = model(wave)
        pooled = model.pool(model.frontend(wave))
    assert out.logits.shape == (2, 7) and out.embedding.shape == (2, 1280) and out.frame_logits is None
    assert pooled.frame.shape == (2, 7, 4) and pooled.attention.shape == (2, 4, 7, 4)
    torch.testing.assert_close(torch.sigmoid(out.logits), pooled.clip, rtol=0, atol=1e-6)
    with pytest.raises(TaggerError):
        create_model("psla-effnet-b0-mean", head_num=4)
    with pytest.raises(TaggerError):
        create_model("psla-effnet-b0-mean", imagenet_stem="average")


def test_trunk_downsamples_32x():
    trunk = EfficientNet(0).eval()
    with torch.inference_mode():
        assert trunk(torch.randn(1, 1, 128, 1056)).shape == (1, 1280, 4, 33)


def test_drop_connect_in_training_only():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 1, 1)
    dropped = drop_connect(x, 0.25, training=True)
    kept = dropped[:, 0, 0, 0]
    assert torch.isin(kept, torch.tensor([0.0, 1 / 0.75])).all() and abs((kept == 0).float().mean() - 0.25) < 0.03
    assert torch.equal(dropped[:, 0], dropped[:, 1])  # one draw per sample
    assert drop_connect(x, 0.25, training=False) is x
    trunk = EfficientNet(0)
    rates = [block.drop_rate for block in trunk._blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.2 * 15 / 16)
    model = create_model("psla-effnet-b0-mean", num_classes=3, target_length=None)
    spec = torch.randn(2, 128, 64)
    with torch.no_grad():
        torch.manual_seed(1)
        first = model.train().forward_features(spec).logits
        torch.manual_seed(2)
        assert not torch.allclose(first, model.forward_features(spec).logits)
    model.eval()
    torch.testing.assert_close(model.forward_features(spec).logits, model.forward_features(spec).logits)


# ------------------------------------------------------------------------------------------ pooling heads


def test_heads_accept_3d_and_4d_features():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9)
    for head in (MeanPooling(16, 5), AttentionPooling(16, 5), MultiHeadAttentionPooling(16, 5)):
        a, b = head(x), head(x.unsqueeze(-1))
        torch.testing.assert_close(a.clip, b.clip, rtol=0, atol=0)
        assert a.clip.shape == (2, 5) and a.frame.shape == (2, 5, 9)
    with pytest.raises(TaggerError):
        MeanPooling(16, 5)(torch.randn(2, 16, 9, 2))


def test_head_semantics():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 7)
    mean = MeanPooling(16, 5)
    torch.testing.assert_close(mean(x).clip, torch.sigmoid(mean.cla(x.unsqueeze(-1)))[..., 0].mean(-1))
    single = AttentionPooling(16, 5)
    pooled = single(x)
    torch.testing.assert_close(pooled.attention.sum(-1), torch.ones(3, 5))
    multi = MultiHeadAttentionPooling(16, 5, num_heads=4)
    assert sorted(k for k in multi.state_dict() if k.endswith(".0.weight")) == ["att.0.weight", "cla.0.weight"]
    for i in range(4):  # four copies of one head at weight 1/4 each pool exactly like that head
        multi.att[i].load_state_dict(single.att.state_dict())
        multi.cla[i].load_state_dict(single.cla.state_dict())
    torch.testing.assert_close(multi(x).clip, pooled.clip)
    assert sorted(single.state_dict()) == ["att.bias", "att.weight", "cla.bias", "cla.weight"]


# ------------------------------------------------------------------------------------------ importer


def _official_file(arch: str, num_classes: int, with_fc: bool = True) -> tuple[dict, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=num_classes).eval()
    raw = {f"module.{k}": v for k, v in model.state_dict().items()}
    if with_fc:
        width = model.effnet.out_channels
        raw["module.effnet._fc.weight"], raw["module.effnet._fc.bias"] = torch.zeros(1000, width), torch.zeros(1000)
    return raw, model


@pytest.mark.parametrize(("arch", "classes"), [("psla-effnet-b0-att1", 10), ("psla-effnet-b1-mean", 3)])
def test_importer_infers_variant_head_and_classes(arch, classes):
    raw, reference = _official_file(arch, classes)
    weights = importer("psla")(raw, None)
    assert weights.arch == arch and weights.model_kwargs == {"num_classes": classes}
    assert any("_fc" in note for note in weights.notes)
    model = weights.build_model("test")
    spec = torch.randn(1, 128, 96)
    with torch.inference_mode():
        torch.testing.assert_close(model.forward_features(spec).logits, reference.forward_features(spec).logits)
    assert importer("psla")({"state_dict": raw}, arch).arch == arch


def test_import_checkpoint_end_to_end(tmp_path):
    from tagger.checkpoint import load_checkpoint
    from tagger.weights.importing import import_checkpoint

    raw, reference = _official_file("psla-effnet-b0-att4", 5)
    path = tmp_path / "as_mdl_test.pth"
    torch.save(raw, path)
    result = import_checkpoint("psla", path, tmp_path / "model.pt")
    assert (result.arch, result.num_classes) == ("psla-effnet-b0-att4", 5)
    model, meta = load_checkpoint(result.out)
    assert meta["frontend"]["name"] == "kaldi-fbank" and meta["frontend"]["target_length"] == 1056
    wave = torch.randn(1, 16000) * 0.1
    with torch.inference_mode():
        torch.testing.assert_close(model(wave).logits, reference(wave).logits, rtol=0, atol=0)


def test_importer_refuses_other_files():
    convert = importer("psla")
    with pytest.raises(TaggerError, match="module.effnet._conv_stem.weight"):
        convert({"model": {"conv_block1.conv1.weight": torch.zeros(64, 1, 3, 3)}}, None)
    with pytest.raises(TaggerError, match="imagenet"):
        convert(EfficientNet(0, in_channels=3).state_dict(), None)
    with pytest.raises(TaggerError):
        convert([1, 2], None)
    raw, _ = _official_file("psla-effnet-b0-mean", 4, with_fc=False)
    with pytest.raises(TaggerError, match="psla-effnet-b0-mean"):
        convert(raw, "psla-effnet-b0-att4")


# ------------------------------------------------------------------------------------------ ImageNet init


def _lukemelas_imagenet(variant: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(variant + 10)
    trunk = EfficientNet(variant, in_channels=3)
    for p in trunk.parameters():
        torch.nn.init.normal_(p, std=0.1)
    state = trunk.state_dict()
    width = trunk.out_channels
    state["_fc.weight"], state["_fc.bias"] = torch.randn(1000, width), torch.randn(1000)
    return state


def test_imagenet_init_keeps_a_random_stem_by_default(tmp_path):
    state = _lukemelas_imagenet(0)
    path = tmp_path / "efficientnet-b0.pth"
    torch.save(state, path)
    torch.manual_seed(5)
    plain = create_model("psla-effnet-b0-att1", num_classes=4)
    torch.manual_seed(5)
    model = create_model("psla-effnet-b0-att1", num_classes=4, init=f"imagenet:{path}")
    assert torch.equal(model.effnet._conv_stem.weight, plain.effnet._conv_stem.weight)
    assert torch.equal(model.attention.cla.weight, plain.attention.cla.weight)
    ours = model.effnet.state_dict()
    for key in ("_bn0.weight", "_blocks.3._depthwise_conv.weight", "_conv_head.weight", "_bn1.running_var"):
        assert torch.equal(ours[key], state[key]), key
    summed = create_model("psla-effnet-b0-mean", imagenet_stem="sum")
    notes = summed.init_from_imagenet(state)
    assert torch.equal(summed.effnet._conv_stem.weight, state["_conv_stem.weight"].sum(1, keepdim=True))
    assert any("summed" in n for n in notes) and any("_fc" in n for n in notes)


def test_imagenet_init_refuses_wrong_files():
    model = create_model("psla-effnet-b0-mean")
    with pytest.raises(TaggerError, match="B0"):
        model.init_from_imagenet(_lukemelas_imagenet(1))
    with pytest.raises(TaggerError, match="ImageNet EfficientNet"):
        model.init_from_imagenet({"fc.weight": torch.zeros(2, 2)})


def test_imagenet_init_from_timm_naming():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("efficientnet_b0", pretrained=False).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # same numerics as the efficientnet_pytorch trunk
            module.eps = 1e-3
            torch.nn.init.uniform_(module.running_mean, -0.1, 0.1)
            torch.nn.init.uniform_(module.running_var, 0.5, 1.5)
    model = create_model("psla-effnet-b0-mean", imagenet_stem="sum").eval()
    notes = model.init_from_imagenet(reference.state_dict())
    assert any("timm" in n for n in notes)
    x = torch.randn(1, 1, 64, 96)
    with torch.inference_mode():  # a grey image through the RGB stem equals the summed kernel on one channel
        torch.testing.assert_close(model.effnet(x), reference.forward_features(x.expand(1, 3, 64, 96)))


# ------------------------------------------------------------------------------------------ parity


def _padding_in_fixture(description: str) -> int:
    match = re.search(r"static_padding=\((\d+), (\d+), (\d+), (\d+)\)", description)
    if match is None:
        return 0
    sides = {int(v) for v in match.groups()}
    assert len(sides) == 1, description  # 0.7.0 pads symmetrically
    return sides.pop()


@pytest.mark.parametrize(("name", "arch"), FIXTURES)
def test_parity_with_official_fixture(name, arch):
    fx = parity_fixture(name)
    weights = importer("psla")({f"module.{k}": v for k, v in fx["state_dict"].items()}, None)
    assert weights.arch == arch
    model = weights.build_model(name)
    assert list(model.state_dict()) == [key for key, *_ in fx["spec"]]
    for prefix, description in fx["modules"].items():
        if "Conv2d" in description and prefix.startswith("effnet."):
            conv = model.get_submodule(prefix)
            assert conv.padding == (_padding_in_fixture(description),) * 2, prefix

    seen = {}
    model.attention.register_forward_pre_hook(lambda module, args: seen.update(features=args[0]))
    expected = fx["outputs"]
    with torch.inference_mode():
        out = model.forward_features(fx["input"].transpose(1, 2))
        # measured bit-exact (0) on the development machine; the bound allows other BLAS/conv kernels, whose
        # rounding moves these features (values up to 5.5) by about the official batch effect, 7.5e-5
        torch.testing.assert_close(seen["features"], expected["features"], rtol=1e-4, atol=1e-4)
        assert (torch.sigmoid(out.logits) - expected["clipwise_output"]).abs().max() <= 1e-4  # measured 6e-8
        assert out.embedding.shape == (2, 1408)

        # The psla-audioset front-end removes each clip's mean first, as the official loader does.
        spec = model.frontend(fx["source_waveform"])
        assert (spec - fx["input"].transpose(1, 2)).abs().max() <= 1e-3  # across CPUs: see test_frontends.py
        full = model.forward_features(spec)  # == model(wave)
        assert (torch.sigmoid(full.logits) - expected["clipwise_output"]).abs().max() <= 1e-4
