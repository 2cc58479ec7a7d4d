"""tagger.export and `tagger export`: ONNX / TorchScript / safetensors files that match the PyTorch model."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import lively
from typer.testing import CliRunner

from tagger.checkpoint import load_checkpoint, save_checkpoint
from tagger.cli import app
from tagger.errors import TaggerError
from tagger.export import TOLERANCE, export_model, load_safetensors, parity_waveform, read_metadata
from tagger.labels import LabelSet
from tagger.models import create_model

runner = CliRunner()
LABELS = LabelSet.from_list(["a", "b", "c"], ["Alpha", "Beta", "Gamma"])

# Tiny configurations of every family and front-end (see tests/models/), and the export length for each.
TINY = {
    "panns-cnn6": ({}, 1.0),  # panns-logmel
    "panns-leenet11": ({}, 1.0),  # waveform
    "efficientat-mn01": ({}, 1.0),  # passt-mel
    "ast-tiny224": ({"input_tdim": 100}, None),  # kaldi-fbank, padded / cropped to 100 frames
    # frame output; tiled as imported official checkpoints are: exported at 6 s (one copy), the graph must still
    # tile the 1.5 s check clip (6 copies)
    "htsat-tiny": ({"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [2, 2, 4, 4], "short_input": "tile"}, 6.0),
    "passt-s-p16-s10": ({"embed_dim": 64, "depth": 1, "num_heads": 2}, 2.0),
    "ced-tiny": ({"embed_dim": 32, "depth": 1, "num_heads": 2}, 2.0),  # ced-mel
}


def make_checkpoint(folder, arch: str, task: str = "multilabel"):
    path = folder / f"{arch}.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = lively(create_model(arch, num_classes=3, **TINY[arch][0]))
        save_checkpoint(path, model, LABELS, task=task)
    return path


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoints")


def eager(path, wave: torch.Tensor):
    model, meta = load_checkpoint(path)
    with torch.no_grad():
        out = model(wave)
    return out, meta


def run_onnx(path, wave: torch.Tensor) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"waveform": wave.numpy()}), strict=True))


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------ ONNX


@pytest.fixture(scope="module")
def cnn6_onnx(ckpt_dir, tmp_path_factory):
    """One ONNX export (log-mel STFT inside the graph) shared by the tests below."""
    ckpt = make_checkpoint(ckpt_dir, "panns-cnn6")
    out = tmp_path_factory.mktemp("onnx") / "cnn6.onnx"
    return ckpt, out, export_model(ckpt, "onnx", out, seconds=1.0)


def test_onnx_report_and_files(cnn6_onnx):
    _, out, report = cnn6_onnx
    assert out.is_file() and report.files == [out] and report.size_bytes == out.stat().st_size
    assert report.frontend == "panns-logmel" and report.frontend_in_graph
    assert report.input_shape == ["batch", "samples"]
    assert report.outputs == ["logits", "probabilities", "embedding"]
    assert report.max_abs_diff is not None and report.max_abs_diff <= TOLERANCE
    assert leftovers(out.parent) == ["cnn6.onnx"]  # no temporary or external-data files


def test_onnx_matches_eager_at_other_batch_and_length(cnn6_onnx):
    ckpt, out, _ = cnn6_onnx
    wave = parity_waveform(32000, 52000, batch=3, seed=7)  # export was batch 2, 32000 samples
    got = run_onnx(out, wave)
    expected, _ = eager(ckpt, wave)
    assert got["logits"].shape == (3, 3)
    np.testing.assert_allclose(got["logits"], expected.logits.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(got["probabilities"], torch.sigmoid(expected.logits).numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(got["embedding"], expected.embedding.numpy(), atol=1e-3, rtol=1e-4)


def test_onnx_metadata(cnn6_onnx):
    import onnx

    _, out, report = cnn6_onnx
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["tagger.labels"]) == [{"id": "a", "name": "Alpha"}, {"id": "b", "name": "Beta"},
                                                   {"id": "c", "name": "Gamma"}]
    assert props["tagger.task"] == "multilabel" and props["tagger.sample_rate"] == "32000"
    meta = read_metadata(out)
    assert meta["arch"] == "panns-cnn6" and meta["frontend"]["name"] == "panns-logmel"
    assert meta["frontend_in_graph"] is True and meta["outputs"] == report.outputs
    assert meta["input"]["shape"] == ["batch", "samples"] and meta["input"]["min_samples"] == report.min_samples


def test_multiclass_probabilities_are_softmax(ckpt_dir, tmp_path):
    model, _ = load_checkpoint(make_checkpoint(ckpt_dir, "panns-leenet11"))
    ckpt = save_checkpoint(tmp_path / "mc.pt", model, LABELS, task="multiclass")
    report = export_model(ckpt, "onnx", tmp_path / "mc.onnx", seconds=0.5, opset=20)
    assert report.opset == 20 and read_metadata(report.path)["opset"] == 20
    wave = parity_waveform(32000, 16000, batch=2)
    got = run_onnx(report.path, wave)
    np.testing.assert_allclose(got["probabilities"].sum(-1), 1.0, atol=1e-5)
    expected, _ = eager(ckpt, wave)
    np.testing.assert_allclose(got["probabilities"], expected.logits.softmax(-1).numpy(), atol=TOLERANCE, rtol=0)
    assert read_metadata(report.path)["task"] == "multiclass"


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TINY))
def test_onnx_every_frontend_inside_the_graph(ckpt_dir, tmp_path, arch):
    ckpt = make_checkpoint(ckpt_dir, arch)
    report = export_model(ckpt, "onnx", tmp_path / "m.onnx", seconds=TINY[arch][1])
    assert report.frontend_in_graph and report.max_abs_diff <= TOLERANCE
    assert report.input_shape[0] == "batch"
    model, _ = load_checkpoint(ckpt)
    samples = int(report.seconds * model.sample_rate)
    if report.input_shape[1] == "samples":  # a dynamic length: check one the export never saw
        samples = max(report.min_samples, int(samples * 0.8))
    wave = parity_waveform(model.sample_rate, samples, batch=3, seed=5)
    got = run_onnx(report.path, wave)
    expected, _ = eager(ckpt, wave)
    np.testing.assert_allclose(got["logits"], expected.logits.numpy(), atol=TOLERANCE, rtol=0)
    if expected.frame_logits is not None:
        assert report.outputs[-1] == "frame_logits"
        np.testing.assert_allclose(got["frame_logits"], expected.frame_logits.numpy(), atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_onnx_separate_frontend(ckpt_dir, tmp_path):
    import onnxruntime as ort

    ckpt = make_checkpoint(ckpt_dir, "efficientat-mn01")
    out = tmp_path / "mn01.onnx"
    report = export_model(ckpt, "onnx", out, seconds=1.0, separate_frontend=True)
    front = tmp_path / "mn01.frontend.onnx"
    assert report.files == [out, front] and not report.frontend_in_graph
    assert report.max_abs_diff <= TOLERANCE
    assert read_metadata(out)["frontend_file"] == "mn01.frontend.onnx"
    wave = parity_waveform(32000, 40000, batch=3, seed=3)
    (features,) = ort.InferenceSession(str(front)).run(None, {"waveform": wave.numpy()})
    logits = ort.InferenceSession(str(out)).run(["logits"], {"features": features})[0]
    expected, _ = eager(ckpt, wave)
    np.testing.assert_allclose(logits, expected.logits.numpy(), atol=TOLERANCE, rtol=0)


def test_exportable_replaces_every_frontend_module(ckpt_dir):
    from tagger.export import exportable
    from tagger.frontends import LogMel

    model, _ = load_checkpoint(make_checkpoint(ckpt_dir, "panns-cnn6"))
    model.branch = torch.nn.Sequential(LogMel())  # a front-end inside the network, as Wavegram-Logmel-Cnn14 has
    copy = exportable(model)
    assert type(copy.frontend).__name__ == "_LogMelGraph" and type(copy.branch[0]).__name__ == "_LogMelGraph"
    assert isinstance(model.frontend, LogMel) and isinstance(model.branch[0], LogMel)  # the original is intact
    wave = parity_waveform(32000, 40000, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(copy.frontend(wave), model.frontend(wave), atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(copy(wave).logits, model(wave).logits, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_onnx_falls_back_to_fewer_dynamic_axes(ckpt_dir, tmp_path, monkeypatch):
    """A graph right at the export shape but wrong at another is re-exported less dynamic, then fixed."""
    import tagger.export.onnx as onnx_export

    calls = []
    real = onnx_export._check_onnx

    def pretend_other_shapes_fail(*args):
        diffs = real(*args)
        calls.append(len(diffs))
        return [diffs[0]] + [float("inf")] * (len(diffs) - 1)

    monkeypatch.setattr(onnx_export, "_check_onnx", pretend_other_shapes_fail)
    report = export_model(make_checkpoint(ckpt_dir, "panns-leenet11"), "onnx", tmp_path / "m.onnx", seconds=0.5)
    # (batch, samples) dynamic: the export shape, batch 3 and two other lengths; then the batch only; then fixed
    assert calls == [4, 2, 1]
    assert report.input_shape == [2, 16000] and report.min_samples == report.max_samples == 16000
    assert len(report.notes) == 2 and read_metadata(report.path)["input"]["shape"] == [2, 16000]
    assert leftovers(tmp_path) == ["m.onnx"]


# ------------------------------------------------------------------------------------------------ TorchScript


def test_torchscript_round_trip(ckpt_dir, tmp_path):
    ckpt = make_checkpoint(ckpt_dir, "ast-tiny224")
    out = tmp_path / "ast.pt"
    report = export_model(ckpt, "torchscript", out)
    assert report.max_abs_diff <= TOLERANCE and report.frontend_in_graph and report.frontend == "kaldi-fbank"
    assert report.seconds == pytest.approx(1.015)  # the natural length: 100 frames, 25 ms windows every 10 ms
    extra = {"tagger.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript
        loaded = torch.jit.load(str(out), _extra_files=extra)
    stored = json.loads(extra["tagger.json"])
    assert json.loads(stored["tagger.labels"])[2] == {"id": "c", "name": "Gamma"}
    assert read_metadata(out)["sample_rate"] == 16000
    wave = parity_waveform(16000, 20000, batch=3, seed=4)
    expected, _ = eager(ckpt, wave)
    logits, probabilities, embedding = loaded(wave)
    torch.testing.assert_close(logits, expected.logits, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(probabilities, torch.sigmoid(expected.logits), atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(embedding, expected.embedding, atol=1e-4, rtol=1e-4)


def test_no_check_writes_without_running(ckpt_dir, tmp_path, monkeypatch):
    import tagger.export.torchscript as torchscript_export

    monkeypatch.setattr(torchscript_export, "TOLERANCE", -1.0)  # would fail any check that ran
    report = export_model(make_checkpoint(ckpt_dir, "panns-leenet11"), "torchscript", tmp_path / "m.pt",
                          seconds=0.5, check=False)
    assert report.max_abs_diff is None and report.row()["max_abs_diff"] == "not checked"
    assert (tmp_path / "m.pt").is_file()


# ------------------------------------------------------------------------------------------------ safetensors


def test_safetensors_round_trip(ckpt_dir, tmp_path):
    from safetensors import safe_open

    ckpt = make_checkpoint(ckpt_dir, "htsat-tiny")
    out = tmp_path / "htsat.safetensors"
    report = export_model(ckpt, "safetensors", out, seconds=2.0)
    assert report.max_abs_diff == 0.0 and report.outputs[-1] == "frame_logits"
    with safe_open(str(out), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["tagger.arch"] == "htsat-tiny" and json.loads(meta["tagger.model_kwargs"])["embed_dim"] == 16
    original, original_meta = load_checkpoint(ckpt)
    model, loaded_meta = load_safetensors(out)
    assert loaded_meta["labels"].ids == ("a", "b", "c") and loaded_meta["labels"].names[0] == "Alpha"
    assert loaded_meta["task"] == original_meta["task"] and loaded_meta["arch"] == "htsat-tiny"
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    wave = parity_waveform(32000, 40000, batch=2, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(model(wave).frame_logits, original(wave).frame_logits, atol=0, rtol=0)


def test_traced_htsat_tiles_every_length(ckpt_dir, tmp_path):
    """Traced at 6 s, where HTS-AT makes one copy, the graph still tiles a 1 s clip 10 times (the copy count is
    traced as a function of the length, and the export checks a quarter of its length to make sure)."""
    ckpt = make_checkpoint(ckpt_dir, "htsat-tiny")
    report = export_model(ckpt, "torchscript", tmp_path / "htsat.pt", seconds=6.0)
    assert report.input_shape == ["batch", "samples"] and report.max_abs_diff <= TOLERANCE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(report.path))
    wave = parity_waveform(32000, 32000, batch=1, seed=5)
    expected, _ = eager(ckpt, wave)
    with torch.no_grad():
        got = loaded(wave)
    torch.testing.assert_close(got[0], expected.logits, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(got[3], expected.frame_logits, rtol=0, atol=TOLERANCE)


def test_export_takes_the_clip_length_settings(ckpt_dir, tmp_path):
    """--short-input is applied and recorded; HTS-AT's official crops (a loop over lengths) fall back to windows."""
    model, _ = load_checkpoint(make_checkpoint(ckpt_dir, "htsat-tiny"))
    model.configure_inputs(long_input="crops")
    ckpt = save_checkpoint(tmp_path / "crops.pt", model, LABELS)
    out = tmp_path / "stretch.safetensors"
    result = runner.invoke(app, ["export", "--model", str(ckpt), "--format", "safetensors", "--out", str(out),
                                 "--seconds", "2", "--short-input", "stretch"])
    assert result.exit_code == 0, result.output
    assert "long_input=crops is not exported" in result.output
    loaded, _ = load_safetensors(out)
    assert (loaded.short_input, loaded.long_input) == ("stretch", "windows")
    wave = parity_waveform(32000, 64000, batch=1)
    with torch.no_grad():
        exported, tiled = loaded(wave).logits, model(wave).logits
        model.configure_inputs(short_input="stretch")
        torch.testing.assert_close(exported, model(wave).logits)
    assert not torch.allclose(exported, tiled)
    other = make_checkpoint(ckpt_dir, "panns-cnn6")
    result = runner.invoke(app, ["export", "--model", str(other), "--format", "safetensors",
                                 "--out", str(tmp_path / "cnn6.safetensors"), "--short-input", "tile"])
    assert result.exit_code == 2 and "--short-input does not apply to panns-cnn6" in result.output


def test_load_safetensors_refuses_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(TaggerError, match="without tagger metadata"):
        load_safetensors(tmp_path / "plain.safetensors")
    with pytest.raises(TaggerError, match="no tagger metadata"):
        read_metadata(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not at all")
    with pytest.raises(TaggerError, match="not a readable safetensors"):
        load_safetensors(tmp_path / "junk.safetensors")
    (tmp_path / "junk.onnx").write_bytes(b"not at all")
    with pytest.raises(TaggerError, match="not a readable ONNX, TorchScript or safetensors file"):
        read_metadata(tmp_path / "junk.onnx")


# ------------------------------------------------------------------------------------------------ failures


def test_failed_check_leaves_the_old_file_and_no_temporaries(ckpt_dir, tmp_path, monkeypatch):
    import tagger.export.torchscript as torchscript_export

    ckpt = make_checkpoint(ckpt_dir, "panns-leenet11")
    out = tmp_path / "model.pt"
    out.write_text("the previous export")
    monkeypatch.setattr(torchscript_export, "TOLERANCE", -1.0)  # any difference, even 0, now fails the check
    with pytest.raises(TaggerError, match="differs from PyTorch by"):
        export_model(ckpt, "torchscript", out, seconds=0.5)
    assert out.read_text() == "the previous export"
    assert leftovers(tmp_path) == ["model.pt"]


def test_missing_onnxruntime_is_one_actionable_error(ckpt_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(TaggerError, match=r"pip install 'tagger\[export\]'"):
        export_model(make_checkpoint(ckpt_dir, "panns-leenet11"), "onnx", tmp_path / "m.onnx")
    assert leftovers(tmp_path) == []


def test_bad_settings_are_user_errors(ckpt_dir, tmp_path):
    ckpt = make_checkpoint(ckpt_dir, "passt-s-p16-s10")
    for opset in (13, 17, 99):  # torch.onnx writes 18 and later; 99 is past every onnx release
        with pytest.raises(TaggerError, match=f"--opset {opset} is not supported"):
            export_model(ckpt, "onnx", tmp_path / "m.onnx", opset=opset)
    with pytest.raises(TaggerError, match="outside what passt-s-p16-s10 accepts"):
        export_model(ckpt, "torchscript", tmp_path / "m.pt", seconds=60)
    with pytest.raises(TaggerError, match="--seconds"):
        export_model(ckpt, "torchscript", tmp_path / "m.pt", seconds=-1)
    with pytest.raises(TaggerError, match="is a folder"):
        export_model(ckpt, "onnx", tmp_path)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_export_json(ckpt_dir, tmp_path):
    ckpt = make_checkpoint(ckpt_dir, "panns-leenet11")
    out = tmp_path / "sub" / "leenet.onnx"
    result = runner.invoke(app, ["export", "--model", str(ckpt), "--format", "onnx", "--out", str(out),
                                 "--seconds", "0.5", "--result-format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["path"] == str(out) and row["format"] == "onnx" and row["frontend"] == "waveform: inside"
    assert 0 <= row["max_abs_diff"] <= TOLERANCE and row["size_MB"] > 0
    assert out.is_file() and read_metadata(out)["labels"][0]["id"] == "a"


def test_cli_export_table(ckpt_dir, tmp_path):
    ckpt = make_checkpoint(ckpt_dir, "panns-leenet11")
    result = runner.invoke(app, ["export", "--model", str(ckpt), "--format", "safetensors",
                                 "--out", str(tmp_path / "w.safetensors")])
    assert result.exit_code == 0, result.output
    assert "max_abs_diff" in result.stdout and "safetensors" in result.stdout


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "checkpoint not found"),
        ("format", "--format 'tflite' is not one of onnx, torchscript, safetensors"),
        ("parent-is-a-file", "is a file, not a folder"),
        ("result-format", "--result-format 'yaml'"),
    ],
)
def test_cli_bad_input_is_one_error_line(ckpt_dir, tmp_path, case, expected):
    ckpt = make_checkpoint(ckpt_dir, "panns-leenet11")
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "out.onnx"
    args = {"missing": ["--model", str(tmp_path / "nowhere.pt")],
            "format": ["--model", str(ckpt), "--format", "tflite"],
            "parent-is-a-file": ["--model", str(ckpt)],
            "result-format": ["--model", str(ckpt), "--result-format", "yaml"]}[case]
    if case == "parent-is-a-file":
        out = tmp_path / "file.txt" / "out.onnx"
    result = runner.invoke(app, ["export", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.output
    assert leftovers(tmp_path) == ["file.txt"]


def test_cli_unwritable_folder(ckpt_dir, tmp_path):
    import os

    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running with permission to write anywhere (root)")
        ckpt = make_checkpoint(ckpt_dir, "panns-leenet11")
        result = runner.invoke(app, ["export", "--model", str(ckpt), "--out", str(folder / "m.onnx")])
        assert result.exit_code == 2 and "no permission to write" in result.output
    finally:
        folder.chmod(0o700)
