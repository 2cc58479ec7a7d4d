"""Shared test helpers: synthetic audio on disk, lively random models and the optional ../shared material."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True, scope="session")
def _private_tagger_home(tmp_path_factory):
    """Tests never read or write the user's cache ($TAGGER_HOME): a model pulled there would change defaults."""
    import os

    old = os.environ.get("TAGGER_HOME")
    os.environ["TAGGER_HOME"] = str(tmp_path_factory.mktemp("tagger-home"))
    yield
    if old is None:
        os.environ.pop("TAGGER_HOME", None)
    else:
        os.environ["TAGGER_HOME"] = old


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a clean skip when a user's clone has none."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (no ../shared beside this clone)")
    return path


def tone(seconds: float, sample_rate: int, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A sine with a little noise, float32: real-looking audio that every front-end can digest."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sample_rate, subtype=subtype)
    return path


def parity_fixture(name: str) -> dict:
    """A fixture recorded by the official code (../shared/parity/<name>.pt) with its weights regenerated.

    Skips when ../shared is absent, or when this torch draws other random weights than the recording did.
    Keys of the returned dict: state_dict (official naming), input, outputs, outputs_doc, official, ...
    """
    import sys

    folder = shared_path("parity")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import weights

    fixture = weights.load_fixture(str(folder / f"{name}.pt"))
    bad = weights.check_digests(fixture["state_dict"], fixture["digests"])
    if bad:
        pytest.skip(f"this torch regenerates other weights for {name} ({len(bad)} keys differ)")
    return fixture


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory) -> dict[str, Path]:
    """24 one-second 32 kHz clips (18 train, 6 valid) with 1-3 labels each, written once per session."""
    from tagger.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), clips=24, seconds=1.0, sample_rate=32000, seed=3)


def lively(model, seed: int = 0):
    """Random weights that give logits of order 1: fresh models have zero-initialised layers and BatchNorms
    that never saw data, whose near-constant outputs would make any export look exact."""
    import torch

    from tagger.export import parity_waveform

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # a plain average over the calibration batch
        model.train()
        model(parity_waveform(model.sample_rate, model.sample_rate, batch=4, seed=seed))
    return model.eval()


def spread_model(arch: str, num_classes: int, seed: int, **kwargs):
    """A random model whose classifier is spread out, so clips get distinct scores (an untrained EfficientAT's
    logits are otherwise ~1e-6 apart)."""
    import torch

    from tagger.models import create_model

    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes, **kwargs)
    if arch.startswith("efficientat"):
        with torch.no_grad():
            for parameter in model.classifier.parameters():
                if parameter.ndim == 2:
                    parameter.normal_(0, 50.0)
    return model


def burst_clip(path: Path, bursts, seconds: float = 5.0, freq: float = 700.0, rate: int = 16000) -> Path:
    """A clip that is silent (faint noise) except for tone bursts at the given (start, end) seconds."""
    rng = np.random.default_rng(1)
    wave = 1e-4 * rng.standard_normal(int(seconds * rate)).astype(np.float32)
    full = tone(seconds, rate, freq)
    for start, end in bursts:
        wave[int(start * rate): int(end * rate)] = full[int(start * rate): int(end * rate)]
    return write_wav(path, wave, rate)


def fake_esc50(root: Path, folds=(1, 2, 4)) -> Path:
    """An ESC-50-shaped set (esc50.csv + audio/) of dog and rooster bursts and rain, for scene tests."""
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in folds:
        for category, freq, bursts in (("dog", 600.0, [(1.0, 1.4)]), ("rooster", 900.0, [(0.5, 2.0)])):
            name = f"{fold}-{int(freq)}-A-0.wav"
            burst_clip(root / "audio" / name, bursts, freq=freq)
            rows.append(f"{name},{fold},0,{category},False,{int(freq)},A")
        write_wav(root / "audio" / f"{fold}-1-A-10.wav", tone(5.0, 16000, 150.0, seed=fold), 16000)
        rows.append(f"{fold}-1-A-10.wav,{fold},10,rain,True,1,A")
    (root / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root / "esc50.csv"


def fake_scenes(root: Path, rate: int = 32000) -> Path:
    """`tagger synthesize --scenes-from` over `fake_esc50`: 8 training and 2 test scenes of 4 s with strong labels
    (dog, rooster on rain) under root/scenes; returns root."""
    from typer.testing import CliRunner

    from tagger.cli import app

    esc50 = str(fake_esc50(root / "esc"))
    result = CliRunner().invoke(app, ["synthesize", str(root / "scenes"), "--scenes-from", esc50, "--clips", "8",
                                      "--seconds", "4", "--sample-rate", str(rate)])
    assert result.exit_code == 0, result.output
    return root


def tiny_htsat(num_classes: int = 2):
    """A frame-level model small enough for a test: HTS-AT with 16-wide embeddings."""
    from tagger.models import create_model

    return create_model("htsat-tiny", num_classes=num_classes, embed_dim=16, depths=[2, 2, 2, 2],
                        num_heads=[2, 2, 4, 4])
