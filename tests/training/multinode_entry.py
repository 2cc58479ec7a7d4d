"""`tagger train` under torchrun for test_multinode.py, recording what this rank did into $TAGGER_TRACE.

Each process appends JSON lines to TRACE/rank<R>-<pid>.jsonl: the clip indices of every micro-batch it trained,
every file it wrote (an open for writing or a rename) inside the run folder, and a hash of its final parameters.
With TAGGER_KILL_STEP=K on the first attempt (TORCHELASTIC_RESTART_COUNT 0), the process SIGKILLs itself right
after optimizer step K, as a crashed machine would stop.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    from tagger.cli import main as tagger_main
    from tagger.training import trainer

    rank, pid = int(os.environ["RANK"]), os.getpid()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    kill_step = int(os.environ.get("TAGGER_KILL_STEP", "0")) if attempt == 0 else 0
    run_dir = Path(sys.argv[sys.argv.index("--out") + 1]).resolve()
    trace = Path(os.environ["TAGGER_TRACE"]) / f"rank{rank}-{pid}.jsonl"
    real_open, real_replace = builtins.open, os.replace

    def record(**event) -> None:
        with real_open(trace, "a") as handle:
            event = {"rank": rank, "pid": pid, "attempt": attempt, "time": time.time(), **event}
            handle.write(json.dumps(event) + "\n")

    def in_run(path) -> bool:
        return isinstance(path, str | os.PathLike) and Path(path).resolve().is_relative_to(run_dir)

    def audited_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and in_run(file):
            record(write=str(Path(file).resolve()))
        return real_open(file, mode, *args, **kwargs)

    def audited_replace(source, target, *args, **kwargs):
        if in_run(target):
            record(write=str(Path(target).resolve()))
        return real_replace(source, target, *args, **kwargs)

    builtins.open, os.replace = audited_open, audited_replace

    train_batch, fit = trainer.Trainer._train_batch, trainer.Trainer.fit

    def traced_batch(self, batch):
        state, before = self.state, self.state.step
        record(epoch=state.epoch, batch=state.batch, step=before, indices=batch["index"].tolist())
        train_batch(self, batch)
        if kill_step and before + 1 == state.step == kill_step:
            os.kill(pid, signal.SIGKILL)

    def traced_fit(self):
        result = fit(self)
        digest = hashlib.sha256()
        # Parameters only: BatchNorm statistics are each rank's own after its last forward pass (DDP
        # broadcasts rank 0's at the start of the next one), and only rank 0's are saved.
        for name, tensor in sorted(self.model.named_parameters()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        record(final=digest.hexdigest(), steps=self.state.step, world_size=self.ctx.world_size)
        return result

    trainer.Trainer._train_batch, trainer.Trainer.fit = traced_batch, traced_fit
    record(start=True)
    sys.argv = ["tagger", *sys.argv[1:]]
    tagger_main()


if __name__ == "__main__":
    main()
