"""PANNs 2-D models and the PANNs importer: registry, sizes, official keys, parity with the official outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import parity_fixture

from tagger.errors import TaggerError
from tagger.frontends import LogMel
from tagger.models import create_model, importer, list_models, model_entry
from tagger.models.panns import framewise

# Trainable parameters in millions, REFERENCE §5.2 (None: not in the table).
OFFICIAL_PARAMS_M = {
    "panns-cnn6": 4.837, "panns-cnn10": 5.219, "panns-cnn14": 80.754, "panns-cnn14-16k": 80.754,
    "panns-cnn14-8k": 80.754, "panns-resnet22": 63.675, "panns-resnet38": 73.783, "panns-resnet54": 104.318,
    "panns-mobilenetv1": 4.796, "panns-mobilenetv2": 4.075, "panns-wavegram-cnn14": 80.992,
    "panns-wavegram-logmel-cnn14": 81.065, "panns-cnn14-decisionlevel-max": 80.754,
    "panns-cnn14-decisionlevel-avg": 80.754, "panns-cnn14-decisionlevel-att": 81.834,
}
# Official modules that forward never uses and that we do not build: (parameters, state_dict keys).
UNUSED = {"panns-wavegram-cnn14": (128 + 37696, 5 + 12), "panns-cnn14-decisionlevel-att": (2 * 527, 5)}
# Official state_dict key counts (parity README), STFT kernels and melW included.
OFFICIAL_KEYS = {
    "panns-cnn14": 84, "panns-cnn10": 60, "panns-cnn6": 36, "panns-resnet22": 150, "panns-resnet38": 246,
    "panns-mobilenetv1": 174, "panns-mobilenetv2": 324, "panns-wavegram-cnn14": 135,
    "panns-wavegram-logmel-cnn14": 138, "panns-cnn14-16k": 84, "panns-cnn14-decisionlevel-max": 84,
    "panns-cnn14-decisionlevel-att": 91,
}
EMBED_DIM = {"panns-cnn6": 512, "panns-cnn10": 512, "panns-mobilenetv1": 1024, "panns-mobilenetv2": 1024}
WAVEFORM = ("panns-wavegram-cnn14", "panns-wavegram-logmel-cnn14")
FIXTURES = {
    "panns_cnn14": "panns-cnn14", "panns_cnn10": "panns-cnn10", "panns_cnn6": "panns-cnn6",
    "panns_resnet22": "panns-resnet22", "panns_resnet38": "panns-resnet38",
    "panns_mobilenetv1": "panns-mobilenetv1", "panns_mobilenetv2": "panns-mobilenetv2",
    "panns_wavegram_cnn14": "panns-wavegram-cnn14", "panns_wavegram_logmel_cnn14": "panns-wavegram-logmel-cnn14",
    "panns_cnn14_16k": "panns-cnn14-16k", "panns_cnn14_decisionlevelmax": "panns-cnn14-decisionlevel-max",
    "panns_cnn14_decisionlevelatt": "panns-cnn14-decisionlevel-att",
}
TOL = 1e-4  # network outputs on the recorded log-mel (measured: 0, 6e-8 for probabilities via log-odds)
# Full waveform path: our FFT front-end differs from torchlibrosa's Conv1d DFT by <= 4.5e-4 dB, which moves
# probabilities by <= 3.4e-5 and logits / embeddings by <= 1.9e-4 (MobileNets; <= 1.3e-5 for the others).
FULL_PROB_TOL, FULL_TOL = 1e-4, 5e-4
NAMES = sorted(OFFICIAL_PARAMS_M)
# The importer is generic over the family: the 1-D waveform models (tagger/models/panns_1d.py) too.
FAMILY = sorted(entry.name for entry in list_models() if entry.family == "panns")
SHARED_CNN14_LAYOUT = ("panns-cnn14-decisionlevel-max", "panns-cnn14-decisionlevel-avg")


def _meta_model(name: str, num_classes: int = 527):
    """The full-size model without allocating or initialising weights (melW, made by librosa, moved too)."""
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes).to("meta").eval()


def _official_like(name: str) -> dict:
    """An official-layout state_dict for our model: meta tensors, real front-end tensors, unused keys added."""
    model = _meta_model(name)
    state = dict(model.state_dict())
    logmel = next((m for m in model.modules() if isinstance(m, LogMel)), None)
    if logmel is not None:
        prefix = "frontend" if logmel is model.frontend else "logmel_extractor"
        real = LogMel(logmel.config)
        state.pop(f"{prefix}.melW")
        conv_real, conv_imag = real.dft_kernels()
        state = {"spectrogram_extractor.stft.conv_real.weight": conv_real,
                 "spectrogram_extractor.stft.conv_imag.weight": conv_imag,
                 "logmel_extractor.melW": real.melW.clone(), **state}
    if name == "panns-wavegram-cnn14":
        state.update({f"bn0.{k}": torch.zeros(64) for k in ("weight", "bias", "running_mean", "running_var")})
        state["conv_block1.conv1.weight"] = torch.zeros(64, 1, 3, 3)
    if name == "panns-cnn14-decisionlevel-att":
        state["att_block.bn_att.weight"] = torch.ones(527)
    return state


# --------------------------------------------------------------------------------------------- registry


def test_registry_entries():
    for name in NAMES:
        entry = model_entry(name)
        assert entry.family == "panns"
        assert entry.frontend == ("waveform" if name in WAVEFORM else "panns-logmel")
        assert entry.frame_level == ("decisionlevel" in name)
    assert model_entry("panns-cnn14-16k").sample_rate == 16000
    assert model_entry("panns-cnn14-8k").sample_rate == 8000
    assert model_entry("panns-cnn14").sample_rate == 32000


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_official_table(name):
    model = _meta_model(name)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    unused_params, _ = UNUSED.get(name, (0, 0))
    assert round((count + unused_params) / 1e6, 3) == OFFICIAL_PARAMS_M[name]


@pytest.mark.parametrize("name", sorted(OFFICIAL_KEYS))
def test_official_key_count(name):
    """Ours = official keys - the two STFT kernels (LogMel models) - the unused modules' keys."""
    model = _meta_model(name)
    has_logmel = any(isinstance(m, LogMel) for m in model.modules())
    expected = OFFICIAL_KEYS[name] - (2 if has_logmel else 0) - UNUSED.get(name, (0, 0))[1]
    assert len(model.state_dict()) == expected


def test_cnn14_keys_are_the_official_names():
    blocks = {f"conv_block{i}.{m}.{p}" for i in range(1, 7) for m in ("conv1", "conv2") for p in ("weight",)}
    blocks |= {f"conv_block{i}.{b}.{p}" for i in range(1, 7) for b in ("bn1", "bn2")
               for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    official = blocks | {f"bn0.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    official |= {"fc1.weight", "fc1.bias", "fc_audioset.weight", "fc_audioset.bias", "frontend.melW"}
    assert set(_meta_model("panns-cnn14").state_dict()) == official


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name):
    model = _meta_model(name, num_classes=10)
    frames = 1001
    x = torch.empty(2, 320000 if name in WAVEFORM else 64, *(() if name in WAVEFORM else (frames,)), device="meta")
    out = model.forward_features(x)
    assert tuple(out.logits.shape) == (2, 10)
    assert tuple(out.embedding.shape) == (2, EMBED_DIM.get(name, 2048))
    assert model.num_classes == 10
    if "decisionlevel" in name:
        assert tuple(out.frame_logits.shape) == (2, frames, 10)
        assert model.derived_logits == (not name.endswith("max"))
    else:
        assert out.frame_logits is None and not model.derived_logits


def test_small_model_runs_on_audio_and_dropout_only_in_training():
    torch.manual_seed(0)
    model = create_model("panns-cnn6", num_classes=5)
    wave = torch.randn(2, 16000) * 0.1
    model.train()
    assert not torch.equal(model(wave).logits, model(wave).logits)  # dropout is active
    model.eval()
    with torch.inference_mode():
        first, second = model(wave), model(wave)
    assert torch.equal(first.logits, second.logits)
    assert first.logits.shape == (2, 5) and first.embedding.shape == (2, 512)


@pytest.mark.parametrize("samples", [32000 * 3 + 480, 10240 + 9, 320000])
def test_wavegram_logmel_accepts_lengths_where_branches_differ(samples):
    """At 96480 samples the log-mel branch has 151 steps and the wavegram 150: both are cropped to 150."""
    model = _meta_model("panns-wavegram-logmel-cnn14", num_classes=3)
    out = model.forward_features(torch.empty(1, samples, device="meta"))
    assert tuple(out.logits.shape) == (1, 3)


def test_too_short_or_misshaped_input_is_refused():
    model = _meta_model("panns-cnn14")
    with pytest.raises(TaggerError, match="too short"):
        model.forward_features(torch.empty(1, 64, 20, device="meta"))
    with pytest.raises(TaggerError, match=r"\(batch, 64, frames\)"):
        model.forward_features(torch.empty(1, 128, 100, device="meta"))
    with pytest.raises(TaggerError, match="too short"):
        _meta_model("panns-wavegram-cnn14").forward_features(torch.empty(1, 5000, device="meta"))


def test_framewise_equals_official_interpolate_and_pad():
    segments = torch.randn(2, 31, 5)
    upsampled = segments[:, :, None, :].repeat(1, 1, 32, 1).reshape(2, 31 * 32, 5)
    official = torch.cat((upsampled, upsampled[:, -1:, :].repeat(1, 1001 - 992, 1)), dim=1)
    assert torch.equal(framewise(segments, 1001), official)


# --------------------------------------------------------------------------------------------- importer


@pytest.mark.parametrize("name", FAMILY)
def test_importer_infers_every_architecture(name):
    imported = importer("panns")({"iteration": 1, "model": _official_like(name)}, None)
    assert imported.arch == ("panns-cnn14" if name in SHARED_CNN14_LAYOUT else name)
    assert imported.model_kwargs == {"num_classes": 527}
    assert set(imported.state_dict) == set(_meta_model(name).state_dict())
    if name in UNUSED:
        assert any("never uses" in note for note in imported.notes)


def test_importer_handles_the_shared_cnn14_layout_and_module_prefix():
    state = {f"module.{k}": v for k, v in _official_like("panns-cnn14").items()}
    inferred = importer("panns")(state, None)
    assert inferred.arch == "panns-cnn14"
    notes = " ".join(inferred.notes)
    assert "module." in notes and "panns-cnn14-decisionlevel-max" in notes
    chosen = importer("panns")(state, "panns-cnn14-decisionlevel-max")
    assert chosen.arch == "panns-cnn14-decisionlevel-max"


def test_importer_reads_class_count_from_classifier():
    model = _meta_model("panns-cnn10", num_classes=50)
    state = _official_like("panns-cnn10")
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("fc_audioset")})
    assert importer("panns")(state, None).model_kwargs == {"num_classes": 50}


def test_importer_refusals_name_the_problem():
    imp = importer("panns")
    state = _official_like("panns-cnn10")
    with pytest.raises(TaggerError, match="fc_audioset.weight"):
        imp({"v.cls_token": torch.zeros(1, 1, 768)}, None)
    with pytest.raises(TaggerError, match="not a PANNs checkpoint"):
        imp({"model": {"a": 1}}, None)
    broken = {k: v for k, v in state.items() if k != "conv_block3.bn1.running_var"}
    with pytest.raises(TaggerError, match=r"panns-cnn10: missing key conv_block3\.bn1\.running_var"):
        imp(broken, None)
    with pytest.raises(TaggerError, match=r"shape mismatch at conv_block1\.conv1\.weight"):
        imp(state, "panns-cnn6")
    with pytest.raises(TaggerError, match="missing key spectrogram_extractor"):
        imp({k: v for k, v in state.items() if not k.startswith("spectrogram")}, "panns-cnn10")
    with pytest.raises(TaggerError, match="logmel_extractor.melW differs"):
        imp({**state, "logmel_extractor.melW": state["logmel_extractor.melW"] * 1.01}, None)
    with pytest.raises(TaggerError, match="'psla' model"):
        imp(state, next(e.name for e in list_models() if e.family == "psla"))


# --------------------------------------------------------------------------------------------- parity


@pytest.fixture(scope="module", params=sorted(FIXTURES))
def parity(request):
    """(fixture, imported model, our outputs by check, the official outputs they compare with).

    One network pass covers the recorded log-mel of both clips and our front-end's log-mel of clip 1 (the
    clip whose silence reaches the -100 dB floor): the full waveform path on one clip keeps the file fast.
    """
    fixture = parity_fixture(request.param)
    arch = FIXTURES[request.param] if "decisionlevel" in request.param else None
    imported = importer("panns")({"model": fixture["state_dict"], "iteration": 0}, arch)
    assert imported.arch == FIXTURES[request.param]
    model = imported.build_model(request.param)
    official = fixture["outputs"]
    outputs, expected = {}, {"features": official}
    with torch.inference_mode():
        if imported.arch in WAVEFORM:
            outputs["full"], expected["full"] = model(fixture["input"]), official
        else:
            logmel = official["logmel"][:, 0].transpose(1, 2)  # (B, 1, T, 64) -> (B, 64, T)
            outputs["frontend"] = model.frontend(fixture["input"])
            out = model.forward_features(torch.cat((logmel, outputs["frontend"][1:])))
            outputs["features"], outputs["full"] = _rows(out, slice(0, 2)), _rows(out, slice(2, 3))
            expected["full"] = {k: v[1:] for k, v in official.items()}
    return fixture, outputs, expected


def _rows(out, rows: slice):
    frames = None if out.frame_logits is None else out.frame_logits[rows]
    return type(out)(logits=out.logits[rows], frame_logits=frames, embedding=out.embedding[rows])


def _differences(out, official: dict) -> dict:
    """Max abs difference per official output that our TaggerOutput reproduces."""
    diffs = {"clipwise_output": (torch.sigmoid(out.logits) - official["clipwise_output"]).abs().max()}
    if "logits" in official:
        diffs["logits"] = (out.logits - official["logits"]).abs().max()
    if "embedding" in official:
        diffs["embedding"] = (out.embedding - official["embedding"]).abs().max()
    if "framewise_output" in official:
        diffs["framewise_output"] = (torch.sigmoid(out.frame_logits) - official["framewise_output"]).abs().max()
    if "segmentwise_logits" in official:
        segments = official["segmentwise_logits"]
        segments = segments if segments.shape[1] == 31 else segments.transpose(1, 2)  # Att is (B, C, S)
        diffs["segmentwise_logits"] = (out.frame_logits[:, : 31 * 32 : 32] - segments).abs().max()
    return {k: float(v) for k, v in diffs.items()}


def test_parity_frontend(parity):
    fixture, outputs, _ = parity
    if "frontend" not in outputs:
        pytest.skip("waveform model: compared through the full forward only")
    official = fixture["outputs"]["logmel"][:, 0].transpose(1, 2)
    assert outputs["frontend"].shape == official.shape
    assert float((outputs["frontend"] - official).abs().max()) <= 1e-3


def test_parity_network_on_recorded_logmel(parity):
    _, outputs, expected = parity
    if "features" not in outputs:
        pytest.skip("waveform model: compared through the full forward only")
    diffs = _differences(outputs["features"], expected["features"])
    assert max(diffs.values()) <= TOL, diffs


def test_parity_full_waveform_forward(parity):
    _, outputs, expected = parity
    diffs = _differences(outputs["full"], expected["full"])
    probabilities = {k: v for k, v in diffs.items() if k in ("clipwise_output", "framewise_output")}
    assert max(probabilities.values()) <= FULL_PROB_TOL, diffs
    assert max(diffs.values()) <= FULL_TOL, diffs
