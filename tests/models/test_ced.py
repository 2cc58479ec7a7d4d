"""CED: registry and sizes, the ced-mel front-end, clip lengths (chunks), and the importer of the zenodo and
model-card layouts (state_dicts built here in the official key layout; no official code at test time)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import lively
from typer.testing import CliRunner

from tagger.checkpoint import load_checkpoint
from tagger.errors import TaggerError
from tagger.frontends import CedMel, build_frontend, frontend_to_dict, htk_mel_filters
from tagger.models import FAMILY_DEFAULTS, create_model, importer, list_models
from tagger.models.ced import SIZES, TARGET_LENGTH
from tagger.models.policy import input_policy

# Trainable parameters at 527 classes, equal to the official AudioTransformer's (its front-end has none); the
# README rounds them to 5.5 M, 9.6 M, 22 M and 86 M.
PARAMS = {"ced-tiny": 5_503_183, "ced-mini": 9_696_655, "ced-small": 21_622_543, "ced-base": 85_711_759}
TINY = {"embed_dim": 64, "num_heads": 1, "depth": 2}  # 64 per head, as the importer assumes for unknown widths
RATE = 16000


def _tiny(num_classes: int = 5, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("ced-base", num_classes=num_classes, **{**TINY, **kwargs})
    with torch.no_grad():  # a spread-out head, so probabilities are not all near 0.5
        model.outputlayer[1].weight.mul_(20.0)
    return lively(model, seed=seed)


def _wave(seconds: float, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    samples = int(round(seconds * RATE))
    t = torch.arange(samples) / RATE
    tone = 0.3 * torch.sin(2 * math.pi * 440.0 * t) * (1 + torch.sin(2 * math.pi * 0.2 * t))
    return tone + 0.02 * torch.randn(batch, samples, generator=gen)


def _zenodo_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s weights as RicherMans/CED saves them: init_bn.1.*, plus the torchaudio front-end's buffers."""
    state = {"front_end.0.spectrogram.window": torch.hann_window(512),
             "front_end.0.mel_scale.fb": htk_mel_filters(64, 512, RATE, 0.0, 8000.0)}
    for key, value in model.state_dict().items():
        if key != "frontend.melW":
            state["init_bn.1." + key[len("init_bn."):] if key.startswith("init_bn.") else key] = value.clone()
    return state


def _model_card_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The same weights as the Hugging Face model cards (mispeech/ced-*) name them: no front-end, init_bn, and
    everything but outputlayer under encoder."""
    state = {}
    for key, value in model.state_dict().items():
        if key != "frontend.melW":
            state[key if key.startswith("outputlayer.") else "encoder." + key] = value.clone()
    return state


def _probabilities(model: torch.nn.Module, wave: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.sigmoid(model(wave).logits)


# --------------------------------------------------------------------------------------------- registry, sizes


def test_registered_names_and_default():
    entries = {e.name: e for e in list_models() if e.family == "ced"}
    assert sorted(entries) == sorted(SIZES)
    for entry in entries.values():
        assert (entry.frontend, entry.sample_rate, entry.frame_level) == ("ced-mel", RATE, False)
    assert FAMILY_DEFAULTS["ced"] == "ced-mini"


@pytest.mark.parametrize("name", list(SIZES))
def test_parameter_counts_and_embeddings(name):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    embed = SIZES[name][0]
    assert tuple(model.time_pos_embed.shape) == (1, embed, 1, 63)  # 1012 // 16 time patches
    assert tuple(model.freq_pos_embed.shape) == (1, embed, 4, 1)  # 64 // 16 frequency patches
    assert model.blocks[0].attn.num_heads == embed // 64 and len(model.blocks) == 12


def test_input_policy_and_settings():
    model = _tiny()
    assert model.min_input_frames == 16 and model.max_input_frames is None and model.input_settings == {}
    policy = input_policy(model)
    assert policy.min_samples == 15 * 160 and policy.max_samples is None  # 16 frames, 0.15 s


# --------------------------------------------------------------------------------------------- front-end


def test_htk_filters_equal_torchaudio():
    functional = pytest.importorskip("torchaudio.functional")
    official = functional.melscale_fbanks(257, 0.0, 8000.0, 64, RATE, norm=None, mel_scale="htk")
    assert torch.equal(htk_mel_filters(64, 512, RATE, 0.0, 8000.0), official)


def test_frontend_shape_and_decibels():
    frontend = CedMel()
    spec = frontend(_wave(3.0))
    assert spec.shape == (1, 64, 301) and frontend.num_frames(3 * RATE) == 301
    assert spec.dtype == torch.float32 and frontend.sample_rate == RATE
    assert -100.0 <= float(spec.min()) and float(spec.max()) < 60.0  # 10·log10 of powers of a ±0.6 clip
    rebuilt = build_frontend(frontend_to_dict(frontend))
    assert isinstance(rebuilt, CedMel) and rebuilt.config == frontend.config
    assert frontend_to_dict(frontend)["top_db"] == 120.0


def test_frontend_equals_torchaudio_for_one_clip():
    transforms = pytest.importorskip("torchaudio.transforms")
    official = torch.nn.Sequential(
        transforms.MelSpectrogram(sample_rate=RATE, n_fft=512, win_length=512, hop_length=160, f_min=0, f_max=8000,
                                  n_mels=64, center=True),
        transforms.AmplitudeToDB(top_db=120),
    )
    wave = _wave(2.0, seed=1)
    torch.testing.assert_close(CedMel()(wave), official(wave), rtol=0, atol=5e-4)  # dB; FFT rounding only


def test_top_db_floors_each_clip_at_its_own_maximum():
    wave = _wave(2.0).repeat(2, 1)
    wave[:, RATE // 2: RATE] = 0.0  # digital silence: 10·log10(1e-10) = -100 dB without the floor
    wave[1] *= 0.5  # the same clip 6 dB quieter, still loud enough for the floor to bind
    spec = CedMel()(wave)
    peaks = spec.amax(dim=(1, 2))
    torch.testing.assert_close(spec.amin(dim=(1, 2)), peaks - 120.0)
    assert float(peaks[0] - peaks[1]) == pytest.approx(20 * math.log10(2), abs=1e-3)
    alone = torch.cat([CedMel()(w[None]) for w in wave])  # torchaudio would floor both at the batch's maximum
    torch.testing.assert_close(spec, alone, rtol=0, atol=1e-4)
    no_floor = CedMel(top_db=None)(wave)
    assert float(no_floor.min()) == pytest.approx(-100.0)


# --------------------------------------------------------------------------------------------- clip lengths


def test_short_input_runs_as_it_is_with_the_time_embedding_sliced():
    model = _tiny()
    tokens = []
    model.blocks[0].register_forward_pre_hook(lambda _m, args: tokens.append(tuple(args[0].shape)))
    with torch.inference_mode():
        out = model(_wave(3.0, batch=2))
    assert tokens == [(2, 4 * (301 // 16), 64)]
    assert out.logits.shape == (2, 5) and out.embedding.shape == (2, 64) and out.frame_logits is None
    assert model.chunks(301) == 1 and model.chunks(TARGET_LENGTH) == 1 and model.chunks(TARGET_LENGTH + 1) == 2


def test_long_input_is_the_mean_of_its_chunks_probabilities():
    """25 s = 2501 frames: chunks 0-1011, 1012-2023 and 2024-2500 padded with zeros after init_bn, each run on its
    own; the clip's probabilities are the chunks' mean (as RicherMans/CED averages them)."""
    model = _tiny(seed=1)
    wave = _wave(25.0, seed=2)
    with torch.inference_mode():
        spec = model.frontend(wave)
        assert spec.shape[-1] == 2501 and model.chunks(2501) == 3
        bn = model.init_bn  # the features whose normalised value is 0, per mel bin
        zero = (bn.running_mean - bn.bias * torch.sqrt(bn.running_var + bn.eps) / bn.weight)[None, :, None]
        last = torch.cat([spec[..., 2024:], zero.expand(1, 64, 3 * TARGET_LENGTH - 2501)], -1)
        parts = [model.forward_features(spec[..., :1012]), model.forward_features(spec[..., 1012:2024]),
                 model.forward_features(last)]
        whole = model(wave)
    mean = torch.stack([torch.sigmoid(p.logits) for p in parts]).mean(0)
    torch.testing.assert_close(torch.sigmoid(whole.logits), mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(whole.embedding, torch.stack([p.embedding for p in parts]).mean(0), rtol=0, atol=1e-4)
    spread = torch.stack([torch.sigmoid(p.logits) for p in parts])
    assert float((spread[0] - spread[2]).abs().max()) > 1e-3  # the chunks do differ, so the mean means something


def test_chunked_batch_equals_clip_by_clip():
    model = _tiny(seed=2)
    wave = _wave(21.0, batch=2, seed=3)
    batch = _probabilities(model, wave)
    alone = torch.cat([_probabilities(model, w[None]) for w in wave])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-5)


def test_an_input_of_exactly_two_chunks_uses_both():
    """The official code drops the last chunk when it is exactly full (2024 frames); tagger keeps it."""
    model = _tiny(seed=3)
    spec = model.frontend(_wave(2023 * 160 / RATE, seed=4))
    assert spec.shape[-1] == 2024
    with torch.inference_mode():
        whole = torch.sigmoid(model.forward_features(spec).logits)
        halves = [torch.sigmoid(model.forward_features(spec[..., i:i + 1012]).logits) for i in (0, 1012)]
    torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2, rtol=0, atol=1e-5)


def test_bad_inputs_are_refused_in_one_line():
    model = _tiny()
    with pytest.raises(TaggerError, match="at least 16"):
        model.forward_features(torch.zeros(1, 64, 15))
    with pytest.raises(TaggerError, match=r"\(batch, 64, frames\)"):
        model.forward_features(torch.zeros(1, 128, 100))
    with pytest.raises(TaggerError, match="divisible"):
        create_model("ced-tiny", num_heads=5)


def test_training_step_updates_every_parameter():
    model = _tiny().train()
    out = model(_wave(1.0, batch=2))
    out.logits.sum().backward()
    stale = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert stale == []


# --------------------------------------------------------------------------------------------- importer


def test_zenodo_layout_maps_strictly_and_gives_the_same_outputs():
    reference = _tiny(seed=4)
    weights = importer("ced")({"model": _zenodo_state(reference), "epoch": 3}, None)
    assert weights.arch == "ced-base" and weights.model_kwargs == {"num_classes": 5, **TINY}
    assert any("'model'" in note for note in weights.notes)
    assert any("mel_scale.fb" in note for note in weights.notes)
    model = weights.build_model(source="zenodo.pt")  # strict: every key maps, none is left over
    assert set(model.state_dict()) == set(reference.state_dict())
    wave = _wave(12.0, seed=5)
    torch.testing.assert_close(_probabilities(model, wave), _probabilities(reference, wave), rtol=0, atol=0)


def test_model_card_layout_gives_the_same_outputs():
    reference = _tiny(seed=5)
    weights = importer("ced")(_model_card_state(reference), None)
    assert any("Hugging Face" in note for note in weights.notes)
    assert any("no front-end tensors" in note for note in weights.notes)
    model = weights.build_model(source="model.safetensors")
    wave = _wave(3.0, seed=6)
    torch.testing.assert_close(_probabilities(model, wave), _probabilities(reference, wave), rtol=0, atol=0)


def test_model_card_safetensors_file(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    reference = _tiny(seed=6)
    path = tmp_path / "model.safetensors"
    safetensors.save_file(_model_card_state(reference), str(path))
    model = importer("ced")(safetensors.load_file(str(path)), None).build_model(source=str(path))
    wave = _wave(2.0)
    torch.testing.assert_close(_probabilities(model, wave), _probabilities(reference, wave), rtol=0, atol=0)
    # the CLI reads the file as it is
    from tagger.checkpoint import load_checkpoint
    from tagger.weights.importing import import_checkpoint

    import_checkpoint("ced", path, tmp_path / "ced.pt")
    imported, _ = load_checkpoint(tmp_path / "ced.pt")
    torch.testing.assert_close(_probabilities(imported, wave), _probabilities(reference, wave), rtol=0, atol=0)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TaggerError, match="not a readable safetensors file"):
        import_checkpoint("ced", tmp_path / "broken.safetensors", tmp_path / "x.pt")


def test_released_size_is_read_from_the_shapes():
    torch.manual_seed(0)
    reference = create_model("ced-tiny").eval()
    state = _zenodo_state(reference)
    weights = importer("ced")(state, None)
    assert weights.arch == "ced-tiny" and weights.model_kwargs == {"num_classes": 527}
    weights.build_model(source="audiotransformer_tiny_mAP_4814.pt")
    assert importer("ced")(state, "ced-tiny").arch == "ced-tiny"
    with pytest.raises(TaggerError, match="192 wide"):
        importer("ced")(state, "ced-mini")
    with pytest.raises(TaggerError, match="not a CED model"):
        importer("ced")(state, "passt-s-p16-s10")


def test_other_chunk_lengths_and_depths_are_read_from_the_shapes():
    reference = _tiny(depth=3, target_length=512)
    weights = importer("ced")(_zenodo_state(reference), None)
    assert weights.model_kwargs == {"num_classes": 5, **TINY, "depth": 3, "target_length": 512}
    model = weights.build_model(source="mine.pt")
    assert model.target_length == 512
    wave = _wave(11.0)  # 1101 frames: three chunks of 512
    torch.testing.assert_close(_probabilities(model, wave), _probabilities(reference, wave), rtol=0, atol=0)


def test_importer_refusals():
    reference = _tiny()
    convert = importer("ced")
    with pytest.raises(TaggerError, match="not a CED state_dict"):
        convert({"conv.weight": torch.zeros(1)}, None)
    state = _zenodo_state(reference)
    with pytest.raises(TaggerError, match="token pooling"):
        convert({**state, "cls_token": torch.zeros(1, 1, 64)}, None)
    with pytest.raises(TaggerError, match="no classification head"):
        convert({k: v for k, v in state.items() if not k.startswith("outputlayer.")}, None)
    other = dict(state)
    other["front_end.0.mel_scale.fb"] = htk_mel_filters(64, 512, RATE, 50.0, 8000.0)
    with pytest.raises(TaggerError, match="other front-end settings"):
        convert(other, None)
    other["front_end.0.mel_scale.fb"] = htk_mel_filters(128, 1024, RATE, 0.0, 8000.0)
    with pytest.raises(TaggerError, match="other front-end settings"):
        convert(other, None)


def test_import_checkpoint_command(tmp_path):
    from tagger.cli import app

    reference = _tiny(seed=7)
    path = tmp_path / "audiotransformer_test.pt"
    torch.save({"model": _zenodo_state(reference)}, path)
    out = tmp_path / "ced.pt"
    result = CliRunner().invoke(app, ["import-checkpoint", "ced", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(out)
    assert model.arch == "ced-base" and meta["frontend"]["name"] == "ced-mel"
    wave = _wave(4.0, seed=8)
    torch.testing.assert_close(_probabilities(model, wave), _probabilities(reference, wave), rtol=0, atol=0)
