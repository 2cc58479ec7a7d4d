"""docs/api.md runs as written: every python block, in order, in a folder with the files the page names."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from conftest import spread_model, tone, write_wav

from tagger.checkpoint import save_checkpoint
from tagger.data.synth import synthesize
from tagger.labels import LabelSet

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_example_of_the_api_page_runs(tmp_path, monkeypatch, capsys):
    model = spread_model("efficientat-mn01", 4, seed=0).eval()
    save_checkpoint(tmp_path / "model.pt", model, LabelSet(["Speech", "Music", "Dog", "Siren"]))
    write_wav(tmp_path / "speech.wav", tone(3.0, 32000, 300.0), 32000)
    (tmp_path / "clips").mkdir()
    for k, freq in enumerate((440.0, 880.0)):
        write_wav(tmp_path / "clips" / f"c{k}.wav", tone(1.5, 16000, freq, seed=k), 16000)
    synthesize(tmp_path / "data", clips=16, seconds=1.5, sample_rate=32000)
    monkeypatch.chdir(tmp_path)
    code = blocks(PAGE.read_text(encoding="utf-8"))
    assert len(code) >= 4
    namespace: dict = {}
    for number, block in enumerate(code, 1):
        exec(compile(block, f"{PAGE.name} block {number}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "Tagger('model.pt': efficientat-mn01, 4 classes, 32000 Hz" in out
    assert (tmp_path / "runs" / "mn01" / "best.pt").is_file()
    assert isinstance(namespace["matrix"], np.ndarray) and namespace["matrix"].ndim == 2
