"""benchmarks/bench_gpu.py: its --smoke run (the GPU code paths at tiny sizes on the CPU) and its no-CUDA exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_cleanly():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0
    assert done.stdout.count("\n") == 1 and "no CUDA device" in done.stdout and "--smoke" in done.stdout


@pytest.mark.slow  # three processes that import torch and build a Trainer, plus a `tagger train` run: ~40 s
def test_smoke_run_measures_the_step_and_the_end_to_end_run(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True,
                          text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["batch"] == 2 and result["precision"] == "bf16"
    (row,) = result["families"]
    assert row["family"] == "efficientat" and row["arch"] == "efficientat-mn01"
    for side in ("tagger", "nchw"):
        assert row[side]["clips_per_s"] > 0 and row[side]["micro_batches"] == 1
    assert row["nchw"]["channels_last"] == "off"
    e2e = result["end_to_end"]
    assert e2e["arch"] == "efficientat-mn01" and len(e2e["epoch_clips_per_s"]) == 2 and e2e["clips_per_s"] > 0
    assert e2e["e2e_over_step"] == pytest.approx(e2e["clips_per_s"] / row["tagger"]["clips_per_s"])
    assert "efficientat-mn01" in done.stdout and "end to end" in done.stdout
