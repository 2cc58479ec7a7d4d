"""EfficientAT MobileNetV3 (mn01-mn40): shapes, sizes, official key names, importer, ImageNet init, parity."""

from __future__ import annotations

import collections

import pytest
import torch
from conftest import parity_fixture, shared_path

from tagger.errors import TaggerError
from tagger.models import create_model, importer, list_models
from tagger.models.efficientat import WIDTHS
from tagger.models.mobilenetv3 import make_divisible

NAMES = [f"efficientat-{n}" for n in WIDTHS]
# Trainable parameters at 527 classes. The official table (README / REFERENCE 6.2) gives mn04 0.984 M (README
# 0.983), mn05 1.431 M, mn10 4.877 M, mn20 17.909 M, mn30 39.086 M, mn40 68.427 M; mn01/mn02 are not listed.
PARAMS = {
    "mn01": 123_783, "mn02": 324_695, "mn04": 983_599, "mn05": 1_431_239,
    "mn10": 4_876_831, "mn20": 17_909_287, "mn30": 39_086_367, "mn40": 68_427_303,
}
TABLE_M = {"mn04": 0.984, "mn05": 1.431, "mn10": 4.877, "mn20": 17.909, "mn30": 39.086, "mn40": 68.427}


def _official_state(model: torch.nn.Module) -> collections.OrderedDict:
    return collections.OrderedDict((k, v.clone()) for k, v in model.state_dict().items())


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics so that a wrong mapping shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
    return model.eval()


# --------------------------------------------------------------------------------------------- registry, sizes


def test_registered_names():
    entries = {e.name: e for e in list_models() if e.family == "efficientat"}
    assert sorted(entries) == sorted(NAMES)
    for entry in entries.values():
        assert (entry.frontend, entry.sample_rate, entry.frame_level) == ("passt-mel", 32000, False)


@pytest.mark.parametrize("name", list(WIDTHS))
def test_parameter_counts(name):
    with torch.device("meta"):
        model = create_model(f"efficientat-{name}")
    count = sum(p.numel() for p in model.parameters())
    assert count == PARAMS[name]
    if name in TABLE_M:
        assert round(count / 1e6, 3) == TABLE_M[name]


def test_make_divisible_matches_the_official_widths():
    assert [make_divisible(16 * w) for w in WIDTHS.values()] == [8, 8, 8, 8, 16, 32, 48, 64]
    assert [make_divisible(1280 * w) for w in WIDTHS.values()] == [128, 256, 512, 640, 1280, 2560, 3840, 5120]


def test_official_key_layout_mn10():
    """312 keys (REFERENCE 6.4): features 308, classifier 4, 32 of the 36 Linear keys are SE layers."""
    state = create_model("efficientat-mn10").state_dict()
    assert len(state) == 312
    assert sum(k.startswith("features.") for k in state) == 308
    assert [k for k in state if k.startswith("classifier.")] == [
        "classifier.2.weight", "classifier.2.bias", "classifier.5.weight", "classifier.5.bias"]
    assert sum(".conc_se_layers.0.fc" in k for k in state) == 32
    assert state["features.0.0.weight"].shape == (16, 1, 3, 3)
    assert state["features.4.block.2.conc_se_layers.0.fc1.weight"].shape == (24, 72)
    assert state["features.16.0.weight"].shape == (960, 160, 1, 1)
    assert state["classifier.2.weight"].shape == (1280, 960)
    model = create_model("efficientat-mn10")
    bns = [m for m in model.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 46 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)


# --------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    "head, kwargs", [("mlp", {}), ("fully_convolutional", {"head_type": "fully_convolutional"}),
                     ("multihead_attention_pooling", {"head_type": "multihead_attention_pooling"})]
)
def test_output_shapes_all_heads(head, kwargs):
    model = _randomise(create_model("efficientat-mn04", num_classes=11, **kwargs))
    assert model.derived_logits is False and model.num_classes == 11
    wave = torch.randn(2, 32000) * 0.1
    with torch.inference_mode():
        out = model(wave)
        alone = model(wave[1:])
    assert out.logits.shape == (2, 11) and out.embedding.shape == (2, 384) and out.frame_logits is None
    assert alone.logits.shape == (1, 11) and alone.embedding.shape == (1, 384)  # no official squeeze
    torch.testing.assert_close(alone.logits, out.logits[1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone.embedding, out.embedding[1:], rtol=1e-4, atol=1e-5)


def test_training_step_runs():
    model = create_model("efficientat-mn01", num_classes=3).train()
    out = model(torch.randn(2, 16000) * 0.1)
    torch.nn.functional.binary_cross_entropy_with_logits(out.logits, torch.ones(2, 3)).backward()
    assert model.features[0][0].weight.grad is not None and model.classifier[5].weight.grad is not None


def test_bad_input_and_settings():
    model = create_model("efficientat-mn01")
    with pytest.raises(TaggerError, match="expected mel features"):
        model.forward_features(torch.zeros(1, 1, 128, 100))
    with pytest.raises(TaggerError, match="head_type"):
        create_model("efficientat-mn01", head_type="transformer")
    with pytest.raises(TaggerError, match="strides"):
        create_model("efficientat-mn01", strides=(2, 2, 3, 2))


# --------------------------------------------------------------------------------------------- importer


def test_importer_infers_width_and_classes_through_wrappers():
    source = _randomise(create_model("efficientat-mn02", num_classes=7))
    state = _official_state(source)
    wrapped = {"model": collections.OrderedDict(("module." + k, v) for k, v in state.items()), "epoch": 3}
    weights = importer("efficientat")(wrapped, None)
    assert weights.arch == "efficientat-mn02" and weights.model_kwargs == {"num_classes": 7}
    assert any("module." in note for note in weights.notes)
    model = weights.build_model("test")
    spec = torch.randn(1, 128, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model.forward_features(spec).logits, source.forward_features(spec).logits)
    assert importer("efficientat")(state, "efficientat-mn02").arch == "efficientat-mn02"
    assert importer("efficientat")(state, "mn02").arch == "efficientat-mn02"


@pytest.mark.parametrize(
    "head, extra", [("fully_convolutional", {}), ("multihead_attention_pooling", {"attention_heads": 2})]
)
def test_importer_detects_other_heads(head, extra):
    source = create_model("efficientat-mn01", num_classes=5, head_type=head, **extra)
    weights = importer("efficientat")(source.state_dict(), None)
    assert weights.model_kwargs == {"num_classes": 5, "head_type": head, **extra}
    weights.build_model("test")


def test_importer_refuses_other_files():
    convert = importer("efficientat")
    state = create_model("efficientat-mn01").state_dict()
    panns_like = {"model": {"conv_block1.conv1.weight": torch.zeros(64, 1, 3, 3), "fc1.weight": torch.zeros(5, 8)}}
    with pytest.raises(TaggerError, match="features.0.0.weight"):
        convert(panns_like, None)
    with pytest.raises(TaggerError, match="dict of tensors"):
        convert([1, 2, 3], None)
    with pytest.raises(TaggerError, match="efficientat-mn01"):
        convert(state, "efficientat-mn10")
    rgb = dict(state, **{"features.0.0.weight": torch.zeros(8, 3, 3, 3)})
    with pytest.raises(TaggerError, match="ImageNet"):
        convert(rgb, None)
    odd_width = dict(state, **{"features.16.0.weight": torch.zeros(576, 96, 1, 1)})
    with pytest.raises(TaggerError, match="no released width"):
        convert(odd_width, None)
    headless = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    with pytest.raises(TaggerError, match="head"):
        convert(headless, None)


# --------------------------------------------------------------------------------------------- ImageNet init


def test_imagenet_init_from_efficientat_layout(tmp_path):
    """An mnXX_im.pt-style file: official names, RGB stem, 1000 classes; all but the class layer is loaded."""
    donor = _randomise(create_model("efficientat-mn04", num_classes=1000), seed=1)
    state = _official_state(donor)
    rgb = torch.randn(8, 3, 3, 3)
    state["features.0.0.weight"] = rgb
    path = tmp_path / "mn04_im.pt"
    torch.save(state, path)
    torch.manual_seed(0)
    model = create_model("efficientat-mn04", init=f"imagenet:{path}")
    own = model.state_dict()
    torch.testing.assert_close(own["features.0.0.weight"], rgb.sum(1, keepdim=True))
    for key in ("features.7.block.1.1.running_var", "features.14.block.2.conc_se_layers.0.fc2.weight",
                "classifier.2.weight"):
        torch.testing.assert_close(own[key], state[key])
    assert own["classifier.5.weight"].shape == (527, 512)
    notes = model.init_from_imagenet({"state_dict": state})
    assert any("summed" in n for n in notes) and any("final layer" in n for n in notes)


def test_imagenet_init_from_torchvision_layout():
    torchvision = pytest.importorskip("torchvision")
    state = _randomise(torchvision.models.mobilenet_v3_large(), seed=2).state_dict()
    model = create_model("efficientat-mn10", num_classes=4)
    notes = model.init_from_imagenet(state)
    own = model.state_dict()
    torch.testing.assert_close(own["features.4.block.2.conc_se_layers.0.fc1.weight"],
                               state["features.4.block.2.fc1.weight"].flatten(1))
    torch.testing.assert_close(own["classifier.2.weight"], state["classifier.0.weight"])
    torch.testing.assert_close(own["features.0.0.weight"], state["features.0.0.weight"].sum(1, keepdim=True))
    assert any("torchvision" in n for n in notes)


def test_imagenet_init_refuses_another_width():
    state = create_model("efficientat-mn10").state_dict()
    with pytest.raises(TaggerError, match="same width"):
        create_model("efficientat-mn04").init_from_imagenet(state)


# --------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("fixture, arch", [("efficientat_mn10", "efficientat-mn10"),
                                           ("efficientat_mn04", "efficientat-mn04")])
def test_parity_with_official(fixture, arch):
    fx = parity_fixture(fixture)
    assert [k for k, *_ in fx["spec"]] == list(create_model(arch).state_dict())
    weights = importer("efficientat")(fx["state_dict"], None)
    assert weights.arch == arch
    model = weights.build_model(fixture)
    expected = fx["outputs"]
    with torch.inference_mode():
        mel = model.frontend(fx["input"])
        on_mel = model.forward_features(expected["mel"])
        single = model.forward_features(expected["mel"][1:])
        full = model(fx["input"])
    # Measured: mel 2.4e-7; network on the official mel 0 (bit-exact); full waveform path 5.7e-7 (logits).
    torch.testing.assert_close(mel, expected["mel"], rtol=0, atol=2e-4)  # across CPUs: see test_frontends.py
    # The full path starts from this machine's mel; 5e-5 is the parity README's MobileNet sensitivity to rounding.
    for out, atol in ((on_mel, 1e-5), (full, 5e-5)):
        torch.testing.assert_close(out.logits, expected["logits"], rtol=1e-4, atol=atol)
        torch.testing.assert_close(out.embedding, expected["embedding"], rtol=1e-4, atol=atol)
    torch.testing.assert_close(single.logits, expected["logits"][1:], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- real checkpoint


@pytest.fixture(scope="module")
def mn04_as():
    folder = shared_path("data", "pretrained", "efficientat_mn04_as")
    from tagger.labels import LabelSet

    raw = torch.load(folder / "mn04_as_mAP_432.pt", map_location="cpu", weights_only=True)
    weights = importer("efficientat")(raw, None)
    model = weights.build_model("mn04_as_mAP_432.pt")
    return raw, model, LabelSet.from_csv(folder / "class_labels_indices.csv")


def _top(model, name: str, k: int) -> list[int]:
    from tagger.audio import load

    wave = torch.from_numpy(load(shared_path("data", "samples", f"{name}.wav"), 32000))[None]
    with torch.inference_mode():
        return model(wave).logits[0].topk(k).indices.tolist()


def test_real_checkpoint_sizes(mn04_as):
    raw, model, _ = mn04_as
    assert model.arch == "efficientat-mn04" and model.num_classes == 527
    assert sum(p.numel() for p in model.parameters()) == 983_599  # README: 0.983 M
    assert sum(v.numel() for v in raw.values()) == 993_485  # + BatchNorm running stats and counters


def test_real_checkpoint_tags_samples(mn04_as):
    _, model, labels = mn04_as
    assert labels.index("Speech") == 0
    assert _top(model, "speech", 1) == [0]
    assert {labels.name_of(i) for i in _top(model, "typing", 3)} & {"Typing", "Computer keyboard"}
    assert "Music" in {labels.name_of(i) for i in _top(model, "music", 3)}
