"""The GPU-ready step, checked on the CPU: deferred loss reads, bf16 autocast, persistent workers, channels_last."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from tiny import tiny_config

from tagger.checkpoint import read_torch_file
from tagger.errors import TaggerError
from tagger.training import trainer


def _run(cfg, synth_set, out):
    return trainer.train(cfg, trainer.data_spec(synth_set["train"]), trainer.data_spec(synth_set["valid"]), out,
                         labels_path=synth_set["labels"], show_progress=False)


def _outcomes(run_dir):
    """metrics.csv without the timing columns."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v for k, v in row.items() if k not in ("clips_per_s", "elapsed_s")} for row in rows]


def _weights(run_dir):
    return read_torch_file(run_dir / "last.pt")["state_dict"]


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reading_the_loss_every_7_steps_changes_no_weight_and_no_metric(synth_set, tmp_path):
    every = {n: tmp_path / f"every{n}" for n in (1, 7)}
    for n, out in every.items():
        _run(tiny_config("augment.spec_mixup=perm", f"run.log_every_steps={n}", "run.save_every_steps=3"),
             synth_set, out)
    assert _outcomes(every[1]) == _outcomes(every[7])  # train_loss too: the same sum, added in the same order
    assert _same_weights(_weights(every[1]), _weights(every[7]))


def test_bf16_autocast_trains_on_the_cpu_with_a_finite_loss(synth_set, tmp_path):
    result = _run(tiny_config("run.precision=bf16", "run.epochs=1", "run.log_every_steps=2"), synth_set,
                  tmp_path / "run")
    assert result.steps == 4 and np.isfinite(float(result.last_metrics["train_loss"]))
    assert result.last_metrics["train_loss"] > 0


def test_persistent_workers_load_the_same_batches_across_epochs_and_after_a_resume(synth_set, tmp_path, monkeypatch):
    original, seen = trainer.Trainer._train_batch, []

    def record(self, batch):
        seen.append((batch["index"].tolist(), float(batch["wave"].double().sum())))
        original(self, batch)
        if self.config.data.num_workers and len(seen) == 6 and "cut" in str(self.paths.dir):
            self.stop_requested = True  # as if Ctrl-C came during epoch 2

    monkeypatch.setattr(trainer.Trainer, "_train_batch", record)
    extra = ("augment.gain_db=6", "augment.roll=100", "augment.wave_mixup=0.5", "run.save_every_steps=1")
    _run(tiny_config("data.num_workers=0", *extra), synth_set, tmp_path / "main")
    in_process, seen[:] = list(seen), []
    _run(tiny_config("data.num_workers=2", "data.prefetch=3", *extra), synth_set, tmp_path / "workers")
    assert seen == in_process and len(seen) == 8  # two epochs of 4 batches
    seen[:] = []
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_config("data.num_workers=2", *extra), synth_set, tmp_path / "cut")
    trainer.resume(tmp_path / "cut", show_progress=False)
    assert seen == in_process
    assert _same_weights(_weights(tmp_path / "main"), _weights(tmp_path / "cut"))


def test_a_nan_loss_is_caught_at_the_next_read_and_named_in_one_line(synth_set, tmp_path, monkeypatch):
    calls = {"n": 0}
    loss_of = trainer.training_loss

    def nan_from_the_third_batch(*args, **kwargs):
        calls["n"] += 1
        loss, parts = loss_of(*args, **kwargs)
        return (loss * np.nan if calls["n"] >= 3 else loss), parts

    monkeypatch.setattr(trainer, "training_loss", nan_from_the_third_batch)
    with pytest.raises(TaggerError) as caught:
        _run(tiny_config("run.log_every_steps=4", "run.save_every_steps=100"), synth_set, tmp_path / "run")
    message = str(caught.value)
    assert "\n" not in message
    assert "non-finite training loss (nan) at epoch 1, step 2 " in message and "steps 0-3" in message
    assert not (tmp_path / "run" / "last.pt").exists()  # no checkpoint was written with the spoilt weights


def _trainer(synth_set, tmp_path, setting):
    cfg = tiny_config(f"run.channels_last={setting}")
    return trainer.Trainer(cfg, tmp_path / setting, trainer.data_spec(synth_set["train"]),
                           trainer.data_spec(synth_set["valid"]), synth_set["labels"], show_progress=False)


def test_channels_last_on_gives_the_same_outputs_as_off_for_a_cnn(synth_set, tmp_path):
    on, off = _trainer(synth_set, tmp_path, "on"), _trainer(synth_set, tmp_path, "off")
    seen = {}
    for name, t in (("on", on), ("off", off)):
        last = [m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.register_forward_hook(lambda module, inputs, out, name=name: seen.update({name: out}))
    spec = on.model.frontend(torch.randn(3, on.model.sample_rate))
    with torch.no_grad():
        a, b = on.net.eval()(spec), off.net.eval()(spec)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert seen["on"].is_contiguous(memory_format=torch.channels_last) and not seen["on"].is_contiguous()
    assert seen["off"].is_contiguous()
    assert not trainer.wants_channels_last("auto", "efficientat-mn01", torch.device("cpu"))  # auto: CUDA only
    assert trainer.wants_channels_last("auto", "panns-cnn14", torch.device("cuda"))
    assert not trainer.wants_channels_last("auto", "ast-base384", torch.device("cuda"))
