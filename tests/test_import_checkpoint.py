"""`tagger import-checkpoint` and `tagger models` from the CLI, with one-line errors for bad files."""

from __future__ import annotations

import collections
import json
import os

import pytest
import torch
from typer.testing import CliRunner

from tagger.checkpoint import load_checkpoint
from tagger.cli import app
from tagger.models import create_model

runner = CliRunner()


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """An EfficientAT-layout file (raw state_dict, official key names) with random weights."""
    torch.manual_seed(0)
    model = create_model("efficientat-mn01", num_classes=5).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("frontend.")}
    path = tmp_path_factory.mktemp("official") / "mn01_test.pt"
    torch.save(state, path)
    return path, model


def test_import_then_load_gives_the_same_outputs(official_file, tmp_path):
    path, reference = official_file
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/m/x{i},Class {i}\n" for i in range(5)))
    out = tmp_path / "model.pt"
    result = runner.invoke(app, ["import-checkpoint", "efficientat", str(path), "--out", str(out),
                                 "--labels", str(labels), "--format", "json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert row["arch"] == "efficientat-mn01" and row["classes"] == 5
    model, meta = load_checkpoint(out)
    assert meta["labels"].names[2] == "Class 2" and meta["task"] == "multilabel"
    assert meta["frontend"]["name"] == "passt-mel"
    wave = torch.randn(2, 32000) * 0.1
    with torch.inference_mode():
        torch.testing.assert_close(model(wave).logits, reference(wave).logits, rtol=0, atol=0)


def test_existing_output_needs_force(official_file, tmp_path):
    path, _ = official_file
    out = tmp_path / "model.pt"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["import-checkpoint", "efficientat", str(path), "--out", str(out)])
    assert result.exit_code == 2 and "--force" in result.output
    assert out.read_bytes() == b"keep me"
    result = runner.invoke(app, ["import-checkpoint", "efficientat", str(path), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output


class _NeedsCode:
    """Pickled objects need code to load: weights_only refuses them."""

    def __init__(self):
        self.weights = torch.zeros(2)


def _bad_files(tmp_path, official_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(4096))
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": _NeedsCode()}, pickled)
    state = torch.load(official_path, weights_only=True)
    wrong_shape = collections.OrderedDict(state)
    first = next(k for k in wrong_shape if k.endswith("weight") and wrong_shape[k].ndim == 4)
    wrong_shape[first] = torch.zeros(*wrong_shape[first].shape[:-1], wrong_shape[first].shape[-1] + 1)
    mismatched = tmp_path / "mismatched.pt"
    torch.save(wrong_shape, mismatched)
    return {"corrupt": (corrupt, "not a readable"), "pickled": (pickled, "needs Python code"),
            "mismatched": (mismatched, first)}


@pytest.mark.parametrize("case", ["corrupt", "pickled", "mismatched"])
def test_bad_files_give_one_line(official_file, tmp_path, case):
    path, expected = _bad_files(tmp_path, official_file[0])[case]
    result = runner.invoke(app, ["import-checkpoint", "efficientat", str(path), "--out", str(tmp_path / "o.pt")])
    assert result.exit_code == 2, result.output
    assert expected in result.output and path.name in result.output
    assert not (tmp_path / "o.pt").exists()


def test_unknown_family(official_file, tmp_path):
    result = runner.invoke(app, ["import-checkpoint", "panns-ish", str(official_file[0]), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "efficientat" in result.output


def test_file_of_another_family_is_refused(official_file, tmp_path):
    result = runner.invoke(app, ["import-checkpoint", "panns", str(official_file[0]), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_models_lists_registered_models():
    result = runner.invoke(app, ["models", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["efficientat-mn10"]["params_M"] == pytest.approx(4.877, abs=1e-3)
    assert rows["efficientat-mn10"]["sample_rate"] == 32000 and rows["efficientat-mn10"]["frontend"] == "passt-mel"
    result = runner.invoke(app, ["models", "--family", "nope"])
    assert result.exit_code == 2
