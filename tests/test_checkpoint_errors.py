"""Files that are not tagger checkpoints give one line that says what the file is and what to use instead."""

from __future__ import annotations

import warnings

import pytest
import torch
from typer.testing import CliRunner

from tagger.checkpoint import read_torch_file
from tagger.cli import app
from tagger.errors import TaggerError

runner = CliRunner()


def test_a_run_resume_file_points_to_resume_and_the_run_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "tagger-resume", "version": 1, "model": {}, "state": {}}, run / "resume.pt")
    result = runner.invoke(app, ["evaluate", "--model", str(run / "resume.pt"), str(tmp_path / "data.csv")])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "training state" in line and f"tagger train --resume {run}" in line and "best.pt" in line


def test_a_torchscript_file_is_named_as_such_without_torch_warnings(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), path)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(TaggerError, match="a TorchScript file"):
        warnings.simplefilter("always")
        read_torch_file(path)
    assert not caught, [str(w.message) for w in caught]
