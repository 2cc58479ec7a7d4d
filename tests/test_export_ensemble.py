"""`tagger export` of a prediction ensemble: one graph taking the waveform, or a one-line error where it cannot."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import lively

from tagger.checkpoint import load_model, read_torch_file, save_checkpoint
from tagger.ensemble.store import save_ensemble
from tagger.errors import TaggerError
from tagger.export import TOLERANCE, export_model, parity_waveform, read_metadata
from tagger.labels import LabelSet
from tagger.models import create_model

LABELS = LabelSet.from_list(["a", "b", "c"], ["Alpha", "Beta", "Gamma"])
SECONDS = 0.5


def make_ensemble(folder, members: list[tuple[str, dict, LabelSet]], weights_matter: bool = True):
    payloads, sources = [], []
    for index, (arch, kwargs, labels) in enumerate(members):
        path = folder / f"member{index}.pt"
        model = create_model(arch, num_classes=3, **kwargs)
        save_checkpoint(path, lively(model, seed=index) if weights_matter else model, labels)
        payloads.append(read_torch_file(path))
        sources.append(path.name)
    weights = [1 / len(members)] * len(members)
    return save_ensemble(folder / "ensemble.pt", payloads, sources, "mean-prob", weights, LABELS, "multilabel")


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """mn01 (passt-mel) and cnn6 (panns-logmel) at 32 kHz, the second with its classes in another order."""
    folder = tmp_path_factory.mktemp("ensemble")
    shuffled = LabelSet.from_list(["c", "a", "b"], ["Gamma", "Alpha", "Beta"])
    return make_ensemble(folder, [("efficientat-mn01", {}, LABELS), ("panns-cnn6", {}, shuffled)])


def eager(path, wave: torch.Tensor):
    model, _ = load_model(path)
    with torch.no_grad():
        return model(wave)


def test_ensemble_columns_are_exercised(ensemble):
    model, _ = load_model(ensemble)
    assert model.columns[0] is None and model.columns[1].tolist() == [1, 2, 0]


def test_onnx_ensemble_matches_pytorch(ensemble, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "ensemble.onnx"
    report = export_model(ensemble, "onnx", out, seconds=SECONDS)
    assert report.files == [out] and report.frontend_in_graph and report.max_abs_diff <= TOLERANCE
    assert report.frontend == "ensemble of 2 (efficientat-mn01, panns-cnn6)"
    assert report.row()["frontend"] == "ensemble of 2 (efficientat-mn01, panns-cnn6): inside"
    assert report.outputs == ["logits", "probabilities", "embedding"] and report.sample_rate == 32000

    wave = parity_waveform(32000, 24000, batch=3, seed=11)  # a batch and length the export never saw
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"waveform": wave.numpy()}), strict=True))
    expected = eager(ensemble, wave)
    np.testing.assert_allclose(got["logits"], expected.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["probabilities"], torch.sigmoid(expected.logits).numpy(), atol=1e-4, rtol=0)
    assert got["embedding"].shape == tuple(expected.embedding.shape)  # both members' embeddings, concatenated

    meta = read_metadata(out)
    assert meta["arch"] == "ensemble" and meta["combine"] == "mean-prob" and meta["weights"] == [0.5, 0.5]
    assert meta["model_kwargs"]["members"] == ["efficientat-mn01", "panns-cnn6"]
    assert [m["arch"] for m in meta["members"]] == ["efficientat-mn01", "panns-cnn6"]
    assert [m["frontend"]["name"] for m in meta["members"]] == ["passt-mel", "panns-logmel"]
    assert [m["source"] for m in meta["members"]] == ["member0.pt", "member1.pt"]
    assert [label["id"] for label in meta["labels"]] == ["a", "b", "c"] and meta["sample_rate"] == 32000


def test_torchscript_ensemble_matches_pytorch(ensemble, tmp_path):
    out = tmp_path / "ensemble.pt"
    report = export_model(ensemble, "torchscript", out, seconds=SECONDS)
    assert report.max_abs_diff <= TOLERANCE and report.frontend.startswith("ensemble of 2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript
        loaded = torch.jit.load(str(out))
    wave = parity_waveform(32000, 20000, batch=2, seed=12)
    expected = eager(ensemble, wave)
    with torch.no_grad():
        logits, probabilities, embedding = loaded(wave)
    torch.testing.assert_close(logits, expected.logits, atol=1e-4, rtol=0)
    assert embedding.shape == expected.embedding.shape
    meta = read_metadata(out)
    assert meta["arch"] == "ensemble" and len(meta["members"]) == 2 and meta["combine"] == "mean-prob"


@pytest.mark.parametrize(
    ("fmt", "options", "expected"),
    [
        ("safetensors", {}, "safetensors holds one model's weights"),
        ("onnx", {"separate_frontend": True}, "--separate-frontend does not apply to an ensemble"),
    ],
)
def test_what_an_ensemble_cannot_be_is_one_line(ensemble, tmp_path, fmt, options, expected):
    with pytest.raises(TaggerError, match=expected) as caught:
        export_model(ensemble, fmt, tmp_path / f"m.{fmt}", seconds=SECONDS, **options)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_multirate_ensemble_is_one_line(tmp_path):
    path = make_ensemble(tmp_path, [("panns-cnn6", {}, LABELS), ("ast-tiny224", {"input_tdim": 100}, LABELS)],
                         weights_matter=False)
    with pytest.raises(TaggerError, match="sample rates 32000 and 16000 Hz") as caught:
        export_model(path, "onnx", tmp_path / "m.onnx")
    assert "\n" not in str(caught.value) and "export the members separately" in str(caught.value)
    assert not (tmp_path / "m.onnx").exists()
