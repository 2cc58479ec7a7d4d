"""tagger.hear, the HEAR 2021 API: shapes and timestamps for a CNN, AST, HTS-AT and an ensemble, windows centred
on their timestamps, batching, bad input, and the official hear-validator where it is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import spread_model, tone

import tagger
from tagger import hear
from tagger.checkpoint import read_torch_file, save_checkpoint
from tagger.ensemble.store import save_ensemble
from tagger.errors import TaggerError
from tagger.inference import runtime
from tagger.inference.runtime import Scorer
from tagger.labels import LabelSet

LABELS = LabelSet(["a", "b", "c"])
FAMILIES = {  # tiny configurations: a 32 kHz CNN, a 16 kHz transformer, a frame-level 32 kHz transformer
    "efficientat-mn01": {},
    "ast-tiny224": {"input_tdim": 100},
    "htsat-tiny": {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [2, 2, 4, 4]},
}


@pytest.fixture(autouse=True)
def _plain_forward(monkeypatch):
    """No fused CPU graphs: tracing one costs seconds, which pays off over a task's audio, not in a test."""
    monkeypatch.setattr(runtime, "_FAST_AFTER", 10**9)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hear")
    paths = {arch: save_checkpoint(folder / f"{arch}.pt", spread_model(arch, 3, seed, **kwargs), LABELS)
             for seed, (arch, kwargs) in enumerate(FAMILIES.items())}
    members = [read_torch_file(paths[arch]) for arch in ("efficientat-mn01", "ast-tiny224")]
    paths["ensemble"] = save_ensemble(folder / "ensemble.pt", members, ["mn01", "ast"], "mean-prob", [0.5, 0.5],
                                      LABELS, "multilabel")
    return paths


def _clips(rate: int, seconds: float, count: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.stack([tone(seconds, rate, 300.0 * (i + 1), seed=i) for i in range(count)]))


@pytest.mark.parametrize("name", [*FAMILIES, "ensemble"])
def test_shapes_timestamps_and_the_scene_embedding_of_tagger_embed(checkpoints, name):
    model = hear.load_model(str(checkpoints[name]), device="cpu", hop_ms=250.0)
    audio = _clips(model.sample_rate, 1.3)
    scene = hear.get_scene_embeddings(audio, model)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)

    size = model.scene_embedding_size
    assert isinstance(size, int) and size == model.timestamp_embedding_size
    assert scene.shape == (2, size) and scene.dtype == torch.float32
    count = audio.shape[1] // round(0.25 * model.sample_rate) + 1  # 0, 250, ..., 1250 ms
    assert embeddings.shape == (2, count, size) and embeddings.dtype == torch.float32
    assert timestamps.shape == (2, count) and timestamps.dtype == torch.float32
    np.testing.assert_allclose(timestamps[0].numpy(), np.arange(count) * 250.0)
    assert torch.equal(timestamps[0], timestamps[1])
    assert torch.isfinite(embeddings).all()
    expected = tagger.load(checkpoints[name], device="cpu").embed(audio.numpy())
    np.testing.assert_allclose(scene.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_defaults_and_the_default_model(checkpoints, monkeypatch):
    monkeypatch.setenv("TAGGER_MODEL", str(checkpoints["efficientat-mn01"]))
    model = hear.load_model("", device="cpu")  # what hear-validator passes without --model
    assert isinstance(model, torch.nn.Module) and not model.training
    assert (model.sample_rate, model.hop_ms, model.window_ms, model.batch_size) == (32000, 50.0, 1000.0, 16)
    assert model.scene_embedding_size == model.timestamp_embedding_size == 96
    assert "efficientat-mn01" in repr(model) and "\n" not in repr(model)
    _, timestamps = hear.get_timestamp_embeddings(_clips(32000, 0.2, 1), model)
    np.testing.assert_allclose(timestamps[0].numpy(), [0.0, 50.0, 100.0, 150.0, 200.0])


def test_each_timestamp_embeds_a_zero_padded_window_centred_on_it(checkpoints):
    path = checkpoints["efficientat-mn01"]
    model = hear.load_model(path, device="cpu", hop_ms=250.0, window_ms=500.0)
    clip = tone(1.1, 32000, 500.0, seed=3)
    embeddings, timestamps = hear.get_timestamp_embeddings(torch.from_numpy(clip)[None], model)
    np.testing.assert_allclose(timestamps[0].numpy(), [0.0, 250.0, 500.0, 750.0, 1000.0])
    padded = np.concatenate([np.zeros(8000, np.float32), clip, np.zeros(8000, np.float32)])
    reference = tagger.load(path, device="cpu")
    for k in (0, 2, 4):  # both edges (half of the window is padding) and the middle
        window = padded[k * 8000: k * 8000 + 16000]
        np.testing.assert_allclose(embeddings[0, k].numpy(), reference.embed(window), rtol=1e-5, atol=1e-5)
    assert not np.allclose(embeddings[0, 0].numpy(), embeddings[0, 2].numpy())


def test_windows_are_batched_and_clips_do_not_mix(checkpoints, monkeypatch):
    model = hear.load_model(checkpoints["efficientat-mn01"], device="cpu", hop_ms=250.0, window_ms=500.0)
    audio = _clips(32000, 1.1, count=3)
    together, _ = hear.get_timestamp_embeddings(audio, model)
    calls = []
    forward = Scorer.__call__
    monkeypatch.setattr(Scorer, "__call__", lambda self, waves, frames=True: calls.append(len(waves)) or
                        forward(self, waves, frames))
    alone, _ = hear.get_timestamp_embeddings(audio[1:2], model)
    assert calls == [5]  # the clip's five windows in one forward pass
    np.testing.assert_allclose(together[1].numpy(), alone[0].numpy(), rtol=1e-5, atol=1e-5)


def test_an_empty_batch_gives_empty_outputs(checkpoints):
    model = hear.load_model(checkpoints["efficientat-mn01"], device="cpu")
    audio = torch.zeros(0, 3200)
    assert hear.get_scene_embeddings(audio, model).shape == (0, 96)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert embeddings.shape == (0, 3, 96) and timestamps.shape == (0, 3)


@pytest.mark.parametrize(("audio", "message"), [
    (torch.zeros(3200), r"shape \(n_sounds, n_samples\), got \(3200,\)"),
    (torch.zeros(1, 2, 3200), r"got \(1, 2, 3200\)"),
    (torch.zeros(2, 3200, dtype=torch.int16), "float samples"),
    (np.zeros((2, 3200), np.float32), "must be a torch.Tensor"),
    (torch.zeros(2, 0), "no samples"),
    (torch.full((1, 3200), float("nan")), "NaN"),
])
def test_bad_audio_is_one_clear_error(checkpoints, audio, message):
    model = hear.load_model(checkpoints["efficientat-mn01"], device="cpu")
    for embed in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(TaggerError, match=message):
            embed(audio, model)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("efficientat-mn01", {"hop_ms": 0}, "hop_ms must be a positive number"),
    ("efficientat-mn01", {"window_ms": float("inf")}, "window_ms must be a positive number"),
    ("efficientat-mn01", {"hop_ms": 0.01}, "shorter than one sample"),
    ("efficientat-mn01", {"hop_ms": 600.0, "window_ms": 500.0}, "windows would skip audio"),
    ("efficientat-mn01", {"window_ms": 5.0, "hop_ms": 5.0}, "shorter than the model's shortest input"),
    ("ast-tiny224", {"window_ms": 2000.0}, "longer than the model's input"),
    ("efficientat-mn01", {"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_bad_options_are_one_clear_error(checkpoints, name, options, message):
    with pytest.raises(TaggerError, match=message):
        hear.load_model(checkpoints[name], device="cpu", **options)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_model_follows_to_device(checkpoints):
    model = hear.load_model(checkpoints["efficientat-mn01"], device="cpu", hop_ms=250.0)
    audio = _clips(32000, 1.1)
    on_cpu, _ = hear.get_timestamp_embeddings(audio, model)
    model.to("cuda")  # as hear-eval-kit does after load_model
    on_gpu, timestamps = hear.get_timestamp_embeddings(audio.cuda(), model)
    assert on_gpu.device.type == timestamps.device.type == "cuda"
    assert hear.get_scene_embeddings(audio.cuda(), model).device.type == "cuda"
    np.testing.assert_allclose(on_gpu.cpu().numpy(), on_cpu.numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.filterwarnings("ignore::UserWarning:hearvalidator")  # 2021.0.6 always warns of a drift it cannot see
@pytest.mark.parametrize("name", ["ast-tiny224", "efficientat-mn01"])
def test_hear_validator_accepts_a_checkpoint(checkpoints, name, capsys):
    """The official checks (hear-validator tagger.hear --model PATH). hearvalidator needs TensorFlow, so it is
    not a dev dependency (docs/hear.md): this runs where someone installed it."""
    validate = pytest.importorskip("hearvalidator.validate")
    rate = tagger.load(checkpoints[name], device="cpu").sample_rate
    if rate not in validate.ValidateModel.ACCEPTABLE_SAMPLE_RATE:
        pytest.skip(f"this hearvalidator accepts {validate.ValidateModel.ACCEPTABLE_SAMPLE_RATE} Hz, not {rate} "
                    "(2021.0.3 and later accept 32000)")
    validate.ValidateModel("tagger.hear", str(checkpoints[name]), device="cpu")()
    out = capsys.readouterr().out
    assert "Checking get_scene_embeddings" in out and "Looks good" not in out  # main() prints that, not the class
