"""PANNs 1-D waveform models: registry, sizes, official key names, parity with the official outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import parity_fixture

from tagger.checkpoint import load_state
from tagger.errors import TaggerError
from tagger.models import create_model, importer, list_models, model_entry
from tagger.models.panns_1d import DaiNet19, LeeNet, Res1dNet

NAMES = ("panns-leenet11", "panns-leenet24", "panns-dainet19", "panns-res1dnet31", "panns-res1dnet51")

# REFERENCE §5.2 table (millions of parameters, official models with 527 classes)
OFFICIAL_PARAMS_M = {
    "panns-leenet11": 0.748,
    "panns-leenet24": 10.004,
    "panns-dainet19": 4.386,
    "panns-res1dnet31": 80.464,
    "panns-res1dnet51": 106.538,
}
EMBED_DIM = {
    "panns-leenet11": 512,
    "panns-leenet24": 1024,
    "panns-dainet19": 512,
    "panns-res1dnet31": 2048,
    "panns-res1dnet51": 2048,
}
FIXTURES = {
    "panns_leenet24": "panns-leenet24",
    "panns_dainet19": "panns-dainet19",
    "panns_res1dnet31": "panns-res1dnet31",
}
TOL = 1e-4
# Official modules that forward never calls (DaiNet19's conv_block1 shortcut): not built here, dropped on import.
UNUSED_PREFIXES = {"panns-dainet19": ("conv_block1.downsample.", "conv_block1.bn_downsample.")}
UNUSED_PARAMS = {"panns-dainet19": 64 * 64 + 2 * 64}


def _official_keys_we_build(name: str, spec) -> dict:
    unused = UNUSED_PREFIXES.get(name, ())
    return {key: tuple(shape) for key, shape, *_ in spec if not key.startswith(unused)}


def _meta_model(name: str, num_classes: int = 527):
    """The full-size model without allocating or initialising its weights."""
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes).eval()


@pytest.fixture(scope="module", params=sorted(FIXTURES))
def loaded(request):
    """(fixture, our model with the fixture's official state_dict loaded as is, in eval mode)."""
    fixture = parity_fixture(request.param)
    model = create_model(FIXTURES[request.param]).eval()
    unused = UNUSED_PREFIXES.get(FIXTURES[request.param], ())
    load_state(model, {k: v for k, v in fixture["state_dict"].items() if not k.startswith(unused)}, "fixture")
    return fixture, model


def test_registry_entries():
    registered = {entry.name for entry in list_models()}
    assert set(NAMES) <= registered
    for name in NAMES:
        entry = model_entry(name)
        settings = (entry.family, entry.frontend, entry.sample_rate, entry.frame_level)
        assert settings == ("panns", "waveform", 32000, False)
        model = _meta_model(name)
        assert model.family == "panns" and model.derived_logits is False
        assert model.frontend.name == "waveform" and model.sample_rate == 32000
        assert not any(key.startswith("frontend.") for key in model.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_match_official_table(name):
    model = _meta_model(name)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert round((count + UNUSED_PARAMS.get(name, 0)) / 1e6, 3) == OFFICIAL_PARAMS_M[name]


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_on_meta(name):
    model = _meta_model(name, num_classes=10)
    out = model(torch.empty(2, 32000 * 10, device="meta"))
    assert out.logits.shape == (2, 10) and out.frame_logits is None
    assert out.embedding.shape == (2, EMBED_DIM[name]) and model.num_classes == 10


def test_leenet11_keys_follow_the_official_layout():
    """No fixture: LeeNet11 is conv_block1..9 of (conv1, bn1) with the channels of the official code."""
    state = _meta_model("panns-leenet11").state_dict()
    channels = [64, 64, 64, 128, 128, 128, 128, 128, 256]
    expected = {
        "fc1.weight": (512, 256),
        "fc1.bias": (512,),
        "fc_audioset.weight": (527, 512),
        "fc_audioset.bias": (527,),
    }
    cin = 1
    for index, cout in enumerate(channels, start=1):
        expected[f"conv_block{index}.conv1.weight"] = (cout, cin, 3)
        for part in ("weight", "bias", "running_mean", "running_var"):
            expected[f"conv_block{index}.bn1.{part}"] = (cout,)
        expected[f"conv_block{index}.bn1.num_batches_tracked"] = ()
        cin = cout
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_res1dnet51_keys_follow_the_official_layout():
    """No fixture: Res1dNet51 has blocks [2,3,4,6,4,3,2]; stages 2..7 open with an AvgPool + 1x1 conv + BN."""
    state = _meta_model("panns-res1dnet51").state_dict()
    depths = [2, 3, 4, 6, 4, 3, 2]
    widths = [64, 128, 256, 512, 1024, 1024, 2048]
    for stage, (depth, width) in enumerate(zip(depths, widths, strict=True), start=1):
        prefix = f"resnet.layer{stage}"
        assert f"{prefix}.{depth - 1}.conv2.weight" in state and f"{prefix}.{depth}.conv1.weight" not in state
        assert state[f"{prefix}.0.bn2.weight"].shape == (width,)
        assert (f"{prefix}.0.downsample.1.weight" in state) == (stage > 1)
        assert (f"{prefix}.0.downsample.2.running_var" in state) == (stage > 1)
    assert len(state) == 1 + 5 + 24 * 12 + 6 * 6 + 4


def test_official_key_names_and_shapes(loaded):
    fixture, model = loaded
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == _official_keys_we_build(model.arch, fixture["spec"])


def test_parity_with_official_outputs(loaded):
    """The fixture records the official forward on the waveform; our front-end is the identity."""
    fixture, model = loaded
    wave = fixture["input"]
    with torch.inference_mode():
        out = model(wave)
        direct = model.forward_features(wave)
    expected = fixture["outputs"]
    torch.testing.assert_close(out.logits, expected["logits"], rtol=TOL, atol=TOL)
    torch.testing.assert_close(torch.sigmoid(out.logits), expected["clipwise_output"], rtol=TOL, atol=TOL)
    torch.testing.assert_close(out.embedding, expected["embedding"], rtol=TOL, atol=TOL)
    torch.testing.assert_close(direct.logits, out.logits, rtol=0, atol=0)


def test_import_through_panns_importer(loaded):
    """The generic PANNs importer must recognise these key sets and map them to our names unchanged."""
    fixture, _ = loaded
    convert = importer("panns")
    official = fixture["state_dict"]
    wrapped = {"iteration": 0, "model": {f"module.{k}": v for k, v in official.items()}}
    for raw in (official, wrapped):
        imported = convert(raw, None)
        assert imported.arch == FIXTURES[fixture["name"]]
        assert imported.model_kwargs.get("num_classes") == 527
        model = imported.build_model("imported")
        assert all(torch.equal(imported.state_dict[k], official[k]) for k in model.state_dict())


def test_short_clips_fail_with_a_clear_message():
    with torch.device("meta"):
        dainet, res1d = create_model("panns-dainet19").eval(), create_model("panns-res1dnet31").eval()
    for model, shortest in ((dainet, DaiNet19.min_samples), (res1d, Res1dNet.min_samples)):
        assert model(torch.empty(1, shortest, device="meta")).logits.shape == (1, 527)
        with pytest.raises(RuntimeError):  # the bound is tight: one sample less leaves no time step
            model.trunk(torch.empty(1, 1, shortest - 1, device="meta"))
        with pytest.raises(TaggerError, match="too short"):
            model(torch.empty(1, shortest - 1, device="meta"))
    assert LeeNet.min_samples == 1


def test_leenet11_real_forward_and_training_step():
    """A real (small) forward and backward: dropout is on in training, the output is finite and differentiable."""
    torch.manual_seed(0)
    model = create_model("panns-leenet11", num_classes=5)
    wave = torch.randn(2, 16000) * 0.1
    out = model(wave)
    assert out.logits.shape == (2, 5) and out.embedding.shape == (2, 512)
    out.logits.sum().backward()
    assert model.conv_block1.conv1.weight.grad is not None
    model.eval()
    with torch.inference_mode():
        first, second = model(wave), model(wave)
    torch.testing.assert_close(first.logits, second.logits, rtol=0, atol=0)


def test_official_initialisation():
    """Xavier convs/linears with zero bias; BN weight 1 except the last BN of each residual branch (0)."""
    dainet = create_model("panns-dainet19")
    assert torch.all(dainet.conv_block2.bn4.weight == 0) and torch.all(dainet.conv_block2.bn3.weight == 1)
    assert torch.all(dainet.fc1.bias == 0)
    bound = (6 / (64 * 3 + 64 * 3)) ** 0.5  # xavier-uniform limit for a 64 -> 64, k3 conv
    assert dainet.conv_block1.conv1.weight.abs().max() <= bound
    leenet = create_model("panns-leenet24")
    assert torch.all(leenet.conv_block3.bn2.weight == 1)


def test_rejects_bad_input_shape():
    model = _meta_model("panns-leenet11")
    with pytest.raises(TaggerError, match="waveform"):
        model.forward_features(torch.empty(2, 1, 100, device="meta"))
