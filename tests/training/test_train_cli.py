"""`tagger train` from the command line: errors, recipes, Ctrl-C, SIGKILL + --resume, and DDP under torchrun."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import TINY_ARCH, tiny_overrides
from typer.testing import CliRunner

from tagger.checkpoint import load_checkpoint, read_torch_file
from tagger.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def _args(synth_set, out, *extra: str) -> list[str]:
    sets = [f"--set={item}" for item in tiny_overrides(*extra)]
    return ["train", "--arch", TINY_ARCH, "--train", str(synth_set["train"]), "--valid", str(synth_set["valid"]),
            "--labels", str(synth_set["labels"]), "--out", str(out), *sets]


def _outcomes(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in ("clips_per_s", "elapsed_s")}
                for row in csv.DictReader(handle)]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    """Poll the resume file until it records `step` optimizer steps; returns the step seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended (exit {proc.returncode}) before step {step}: {proc.stderr.read()}")
        try:
            seen = read_torch_file(run_dir / "resume.pt")["state"]["step"]
        except Exception:  # not written yet
            seen = -1
        if seen >= step:
            return seen
        time.sleep(0.01)
    pytest.fail(f"no step {step} within {timeout} s")


def test_train_command_runs_and_reports(synth_set, tmp_path):
    result = runner.invoke(app, [*_args(synth_set, tmp_path / "run", "run.epochs=1"), "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["stopped"] == "finished" and row["steps"] == 4 and 0 <= row["mAP"] <= 1


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--arch", "panns-cnn6"], "missing --train, --valid, --out"),
    (["train", "--resume", "somewhere", "--arch", "x"], "drop --arch"),
    (["train", "--resume", "nowhere"], "not a run folder"),
    (["train", "--recipe", "nope", "--train", "a", "--valid", "b", "--out", "c"], "unknown recipe 'nope'"),
])
def test_train_command_errors_are_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_missing_data_is_named(synth_set, tmp_path):
    args = _args(synth_set, tmp_path / "run")
    args[args.index("--train") + 1] = str(tmp_path / "nope.csv")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "nope.csv does not exist" in result.stderr


def test_recipes_command_lists_the_shipped_recipes():
    result = runner.invoke(app, ["recipes", "--format", "json"])
    assert result.exit_code == 0
    names = {row["recipe"] for row in json.loads(result.stdout)}
    assert {"audioset-ast", "esc50-efficientat", "speechcommands-ast"} <= names


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_130(synth_set, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tagger", *_args(synth_set, out, "run.epochs=50",
                                                                       "run.save_every_steps=1")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _wait_for_step(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"tagger train --resume {out}" in stderr and "Traceback" not in stderr
    state = read_torch_file(out / "resume.pt")["state"]
    assert state["step"] >= 2 and not state["done"]


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(synth_set, tmp_path):
    extra = ("run.epochs=5", "run.save_every_steps=1", "augment.spec_mixup=perm", "augment.wave_mixup=0.5",
             "augment.freqm=8", "schedule.kind=cosine")
    # The reference runs in the same kind of process (same thread count), so the numbers agree to the last bit.
    subprocess.run([sys.executable, "-m", "tagger", *_args(synth_set, tmp_path / "whole", *extra)], check=True,
                   capture_output=True, env=_env())

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tagger", *_args(synth_set, out, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    seen = _wait_for_step(out, 5, proc)  # epoch 2 has steps 5-8
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    state = read_torch_file(out / "resume.pt")["state"]
    # 20 steps in all: the kill lands well before the end even when steps are fast (at 12 it once came too late)
    assert 5 <= seen <= state["step"] < 20, "the kill did not land mid-run"

    subprocess.run([sys.executable, "-m", "tagger", "train", "--resume", str(out)], check=True, capture_output=True,
                   env=_env())
    assert _outcomes(out) == _outcomes(tmp_path / "whole")
    whole = read_torch_file(tmp_path / "whole" / "last.pt")["state_dict"]
    killed = read_torch_file(out / "last.pt")["state_dict"]
    assert all(torch.equal(whole[k], killed[k]) for k in whole)


def test_torchrun_two_cpu_processes_train_with_ddp(synth_set, tmp_path):
    """gloo DDP: one checkpoint and one metrics file from rank 0, and mAP over the whole (gathered) valid set."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tagger", *_args(synth_set, out, "data.sampler=balanced", "data.epoch_length=16")]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("efficientat-mn01 (") == 1, "only rank 0 should log"
    assert "on 2 process(es)" in done.stderr
    rows = _outcomes(out)
    # 16 clips per epoch, global batch 4 = 2 per rank: 4 steps per epoch.
    assert [r["step"] for r in rows] == ["4", "8"]

    model, meta = load_checkpoint(out / "last.pt")
    from tagger.training.data import EvalWaves, encode_targets, read_source

    source = read_source(synth_set["valid"], "validation")
    targets = encode_targets(meta["labels"], source)
    valid = EvalWaves(source, targets, model.sample_rate, 1.0)
    with torch.no_grad():
        logits = torch.cat([model(valid[i]["wave"][None]).logits for i in range(len(valid))])
    # The loss is smooth in the outputs (unlike AP on a barely trained model's near-ties): it shows that every
    # validation clip, from both ranks, was gathered and scored by the final weights.
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(targets)).item()
    assert float(rows[-1]["valid_loss"]) == pytest.approx(expected, rel=1e-5)
