"""Two torchrun "nodes" on one machine (c10d rendezvous, gloo, a tiny model): each rank trains its share of one
global draw, the ranks end with the same weights, only rank 0 writes, and a node killed mid-run is restarted by
torchrun (--max-restarts) and the run ends exactly as an uninterrupted one."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_ARCH, tiny_config, tiny_overrides

from tagger.checkpoint import read_torch_file
from tagger.data.sampling import WeightedSampler

ROOT = Path(__file__).resolve().parents[2]
ENTRY = Path(__file__).with_name("multinode_entry.py")
# 16 clips an epoch, global batch 4 = 2 a rank: 4 optimizer steps an epoch, 8 in all. resume.pt is written at
# steps 3, 4 (epoch end), 6 and 8, so a kill after step 7 lands between saves and step 7 is done twice.
SETTINGS = ("data.sampler=shuffle", "data.epoch_length=16", "run.save_every_steps=3", "run.device=cpu",
            "augment.spec_mixup=perm", "augment.wave_mixup=0.5", "augment.freqm=8", "schedule.kind=cosine")
KILL_STEP = 7


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_nodes(synth_set, out: Path, trace: Path, kill_step: int = 0) -> list[subprocess.Popen]:
    """Launch torchrun twice (node 1 hosts the rendezvous); node 2's worker dies after `kill_step` if given."""
    trace.mkdir()
    port = _free_port()
    sets = [f"--set={item}" for item in tiny_overrides(*SETTINGS)]
    tagger_args = ["train", "--arch", TINY_ARCH, "--train", str(synth_set["train"]), "--valid",
                   str(synth_set["valid"]), "--labels", str(synth_set["labels"]), "--out", str(out),
                   "--format", "json", *sets]
    # Without TORCH_DISABLE_SHARE_RDZV_TCP_STORE, a restarted worker can read the dead one's address from the
    # store torchrun shares and never connect (pytorch/pytorch#135712); docs/scale.md says the same.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TAGGER_TRACE": str(trace),
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    nodes = []
    for node in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"two-{port}",
                   "--rdzv-conf", f"is_host={node == 1}", "--max-restarts", "1", str(ENTRY), *tagger_args]
        extra = {"TAGGER_KILL_STEP": str(kill_step)} if node == 2 and kill_step else {}
        nodes.append(subprocess.Popen(command, env={**env, **extra}, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True))
    return nodes


def _events(nodes: list[subprocess.Popen], trace: Path) -> tuple[list[dict], list[dict]]:
    """Wait for the launches; every rank's trace events (see multinode_entry.py) and the reports printed."""
    try:
        outputs = [node.communicate(timeout=240) for node in nodes]
    finally:
        for node in nodes:  # torchrun and its workers, should one hang
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
    for number, (node, (_, log)) in enumerate(zip(nodes, outputs, strict=True), start=1):
        assert node.returncode == 0, f"node {number} exited {node.returncode}:\n{log[-4000:]}"
    events = [json.loads(line) for path in sorted(trace.glob("*.jsonl")) for line in path.read_text().splitlines()]
    return events, [row for out, _ in outputs if out.strip() for row in json.loads(out)]


def _outcomes(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in ("clips_per_s", "elapsed_s")}
                for row in csv.DictReader(handle)]


def _global_draw(train_csv: Path, epoch: int) -> np.ndarray:
    """What data.sampler=shuffle draws for the whole world of 2 ranks in `epoch`."""
    from tagger.training.data import read_source

    clips = len(read_source(train_csv, "training"))
    sampler = WeightedSampler(np.ones(clips), 16, replacement=False, seed=tiny_config().run.seed, rank=0,
                              world_size=2)
    sampler.set_epoch(epoch)
    return sampler.global_indices().numpy()


@pytest.mark.slow
def test_two_nodes_share_the_draw_and_a_killed_node_restarts_exactly(synth_set, tmp_path):
    # Both jobs at once (they share nothing but the clips): the waits for rendezvous and restarts overlap.
    launches = {name: _two_nodes(synth_set, tmp_path / name, tmp_path / f"{name}-trace", kill)
                for name, kill in (("whole", 0), ("killed", KILL_STEP))}
    whole, reports = _events(launches["whole"], tmp_path / "whole-trace")
    assert [(r["stopped"], r["steps"]) for r in reports] == [("finished", 8)], "rank 0 alone reports"

    batches = {(e["epoch"], e["batch"], e["rank"]): e["indices"] for e in whole if "indices" in e}
    assert {rank for *_, rank in batches} == {0, 1} and len(batches) == 2 * 8
    for epoch in (0, 1):
        draw = _global_draw(synth_set["train"], epoch)
        for batch in range(4):
            first, second = batches[epoch, batch, 0], batches[epoch, batch, 1]
            assert not set(first) & set(second), "the ranks trained the same clip in one step"
            assert sorted(first + second) == sorted(draw[4 * batch: 4 * batch + 4])
            assert (first, second) == (draw[0::2][2 * batch: 2 * batch + 2].tolist(),
                                       draw[1::2][2 * batch: 2 * batch + 2].tolist())
    finals = {e["rank"]: e["final"] for e in whole if "final" in e}
    assert len(finals) == 2 and finals[0] == finals[1], "DDP left the ranks with different weights"

    writes = [e for e in whole if "write" in e]
    assert {e["rank"] for e in writes} == {0}, "a rank other than 0 wrote into the run folder"
    written = {Path(e["write"]).name for e in writes}
    assert {"resume.pt", "last.pt", "best.pt", "metrics.csv", "config.toml", "run.json"} <= written

    killed, reports = _events(launches["killed"], tmp_path / "killed-trace")
    assert [(r["stopped"], r["steps"]) for r in reports] == [("finished", 8)]

    started = {e["pid"] for e in killed if "start" in e}
    first = {e["pid"] for e in killed if "indices" in e and e["step"] == 0}  # the workers of the first attempt
    assert len(first) == 2 and not [e for e in killed if "final" in e and e["pid"] in first], "nobody died"
    assert [e for e in killed if e["pid"] in first and e.get("step") == KILL_STEP - 1], "died before step 7"
    steps = [e["step"] for e in killed if "indices" in e and e["pid"] in started - first]
    # Under load torchrun has been seen starting the workers more than once after the kill (a fresh-clone run
    # counted 4 new worker pids); every attempt continues from the last save, the first one at step 6.
    assert len(started - first) >= 2 and min(steps) == 6, "the restarted workers did not continue from step 6"
    assert {e["rank"] for e in killed if "write" in e} == {0}
    assert {e["final"] for e in killed if "final" in e} == {finals[0]}

    assert _outcomes(tmp_path / "killed") == _outcomes(tmp_path / "whole")
    reference = read_torch_file(tmp_path / "whole" / "last.pt")["state_dict"]
    resumed = read_torch_file(tmp_path / "killed" / "last.pt")["state_dict"]
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_a_run_folder_is_continued_only_by_the_torchrun_job_that_started_it(synth_set, tmp_path, monkeypatch):
    from tagger.errors import TaggerError
    from tagger.training import trainer

    def run(*extra: str):
        return trainer.train(tiny_config("run.epochs=1", *extra), trainer.data_spec(synth_set["train"]),
                             trainer.data_spec(synth_set["valid"]), tmp_path / "run",
                             labels_path=synth_set["labels"], show_progress=False)

    original = trainer.Trainer._train_batch

    def crash_after_two_batches(self, batch):
        original(self, batch)
        self.stop_requested = self.state.batch == 2

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setattr(trainer.Trainer, "_train_batch", crash_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(trainer.Trainer, "_train_batch", original)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["job"] == "job-a"

    for job, message in (("job-b", "already holds a run; continue it with"), ("none", "only with --rdzv-id")):
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)
        with pytest.raises(TaggerError, match=message):
            run()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    with pytest.raises(TaggerError, match=r"with other settings \(optim.lr, run.epochs\)"):
        run("run.epochs=2", "optim.lr=0.01")
    result = run()  # what torchrun does after a failure: the same command again, in the same job
    assert result.steps == 4 and result.stop_reason == "finished" and len(_outcomes(tmp_path / "run")) == 1
