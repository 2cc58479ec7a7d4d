"""The training loop on a tiny model and synthetic audio: outputs, exact resume, init, KD, stopping rules."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from tiny import tiny_config

from tagger.checkpoint import load_checkpoint, read_torch_file
from tagger.errors import TaggerError
from tagger.labels import LabelSet
from tagger.training import trainer
from tagger.training.data import save_teacher


def _run(cfg, synth_set, out, **kwargs):
    return trainer.train(cfg, trainer.data_spec(synth_set["train"]), trainer.data_spec(synth_set["valid"]), out,
                         labels_path=synth_set["labels"], show_progress=False, **kwargs)


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _outcomes(run_dir):
    """metrics.csv without the timing columns."""
    return [{k: v for k, v in row.items() if k not in ("clips_per_s", "elapsed_s")} for row in _rows(run_dir)]


def _state(path):
    return read_torch_file(path)["state_dict"]


def test_a_run_writes_config_metrics_curves_and_checkpoints(synth_set, tmp_path):
    cfg = tiny_config("augment.spec_mixup=perm", "augment.freqm=8", "augment.timem=10", "augment.gain_db=6",
                      "augment.roll=100", "augment.wave_mixup=0.5", "augment.wave_mixup_alpha=2")
    result = _run(cfg, synth_set, tmp_path / "run")
    run = tmp_path / "run"
    assert result.stop_reason == "finished" and result.steps == 2 * 4 and result.metric == "mAP"
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1.0", "2.0"] and [r["step"] for r in rows] == ["4", "8"]
    assert all(0 <= float(r["mAP"]) <= 1 and np.isfinite(float(r["valid_loss"])) for r in rows)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, meta = load_checkpoint(run / "last.pt")
    assert meta["train"]["config"] == cfg.to_dict() and meta["task"] == "multilabel"
    assert meta["labels"] == LabelSet.from_csv(synth_set["labels"]) and model.arch == "efficientat-mn01"
    best = read_torch_file(run / "best.pt")["train"]
    assert best["metrics"]["mAP"] == max(float(r["mAP"]) for r in rows)
    assert "[optim]" in (run / "config.toml").read_text()
    assert not list(run.glob(".*tmp*")), "temporary files left behind"


def test_save_every_epoch_keeps_one_checkpoint_per_whole_epoch(synth_set, tmp_path):
    cfg = tiny_config("run.save_every_epoch=true", "run.eval_every_steps=2")
    _run(cfg, synth_set, tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("epoch_*.pt")) == ["epoch_001.pt", "epoch_002.pt"]  # not at 0.5, 1.5
    first, second = read_torch_file(run / "epoch_001.pt"), read_torch_file(run / "epoch_002.pt")
    assert (first["train"]["epoch"], second["train"]["epoch"]) == (1.0, 2.0)
    last = _state(run / "last.pt")
    assert all(torch.equal(second["state_dict"][k], v) for k, v in last.items())
    assert not all(torch.equal(first["state_dict"][k], v) for k, v in last.items())
    assert not list(run.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.slow  # the default run keeps the stronger SIGKILL + --resume check in test_train_cli.py
def test_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one(synth_set, tmp_path, monkeypatch):
    cfg = tiny_config("run.epochs=3", "augment.spec_mixup=perm", "augment.freqm=8", "augment.wave_mixup=0.5",
                      "augment.gain_db=6", "run.save_every_steps=1", "schedule.kind=cosine")
    _run(cfg, synth_set, tmp_path / "whole")

    original = trainer.Trainer._train_batch
    calls = {"n": 0}

    def stop_mid_epoch(self, batch):  # as if Ctrl-C arrived during the 6th batch (epoch 2, batch 2)
        original(self, batch)
        calls["n"] += 1
        if calls["n"] == 6:
            self.stop_requested = True

    monkeypatch.setattr(trainer.Trainer, "_train_batch", stop_mid_epoch)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, synth_set, tmp_path / "cut")
    saved = read_torch_file(tmp_path / "cut" / "resume.pt")["state"]
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 2, 6)
    monkeypatch.setattr(trainer.Trainer, "_train_batch", original)
    trainer.resume(tmp_path / "cut", show_progress=False)

    assert _outcomes(tmp_path / "cut") == _outcomes(tmp_path / "whole")  # same numbers, to the last digit
    whole, cut = _state(tmp_path / "whole" / "last.pt"), _state(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_a_finished_run_cannot_be_resumed_unless_epochs_are_raised(synth_set, tmp_path):
    _run(tiny_config("run.epochs=1"), synth_set, tmp_path / "run")
    with pytest.raises(TaggerError, match="already ended"):
        trainer.resume(tmp_path / "run", show_progress=False)
    config = tmp_path / "run" / "config.toml"
    config.write_text(config.read_text().replace("epochs = 1", "epochs = 2"))
    result = trainer.resume(tmp_path / "run", show_progress=False)
    assert result.epochs == 2 and len(_rows(tmp_path / "run")) == 2


def test_out_dir_holding_a_run_is_refused(synth_set, tmp_path):
    _run(tiny_config("run.epochs=1"), synth_set, tmp_path / "run")
    with pytest.raises(TaggerError, match="already holds a run"):
        _run(tiny_config("run.epochs=1"), synth_set, tmp_path / "run")


def test_checkpoint_init_reinitialises_only_the_classifier_for_other_labels(synth_set, tmp_path):
    _run(tiny_config("run.epochs=1"), synth_set, tmp_path / "base")
    source = _state(tmp_path / "base" / "last.pt")

    from tagger.training.init import build_model

    same, notes = build_model(tiny_config(f"model.init=checkpoint:{tmp_path / 'base' / 'last.pt'}"),
                              LabelSet.from_csv(synth_set["labels"]))
    assert all(torch.equal(same.state_dict()[k], source[k]) for k in source) and len(notes) == 1

    other = LabelSet.from_list(["a", "b", "c"])
    model, notes = build_model(tiny_config(f"model.init=checkpoint:{tmp_path / 'base' / 'last.pt'}"), other)
    assert model.num_classes == 3 and "classifier re-initialised" in notes[1]
    changed = [k for k in source if k not in model.state_dict() or model.state_dict()[k].shape != source[k].shape
               or not torch.equal(model.state_dict()[k], source[k])]
    assert changed and all(k.startswith("classifier.5") for k in changed), changed

    with pytest.raises(TaggerError, match="holds a efficientat-mn01 model"):
        build_model(tiny_config(f"model.init=checkpoint:{tmp_path / 'base' / 'last.pt'}", arch="efficientat-mn02"),
                    other)


def test_distillation_with_kd_lambda_one_trains_exactly_as_without_teacher(synth_set, tmp_path):
    ids = [line.split(",")[-1].strip() for line in synth_set["train"].read_text().splitlines()[1:]]
    logits = np.random.default_rng(0).normal(size=(len(ids), 6)).astype(np.float32)
    save_teacher(tmp_path / "teacher.npz", ids[:-3], logits[:-3])  # 3 clips without a teacher entry
    _run(tiny_config("run.epochs=1"), synth_set, tmp_path / "plain")
    _run(tiny_config("run.epochs=1", f"loss.teacher={tmp_path / 'teacher.npz'}", "loss.kd_lambda=1"), synth_set,
         tmp_path / "kd1")
    kd = _run(tiny_config("run.epochs=1", f"loss.teacher={tmp_path / 'teacher.npz'}", "loss.kd_lambda=0.1"),
              synth_set, tmp_path / "kd")
    plain, kd1 = _state(tmp_path / "plain" / "last.pt"), _state(tmp_path / "kd1" / "last.pt")
    assert all(torch.equal(plain[k], kd1[k]) for k in plain)
    assert kd.stop_reason == "finished"
    assert not all(torch.equal(plain[k], v) for k, v in _state(tmp_path / "kd" / "last.pt").items())


def test_teacher_file_errors_are_one_line(synth_set, tmp_path):
    save_teacher(tmp_path / "t.npz", ["clip0000"], np.zeros((1, 3), np.float32))
    with pytest.raises(TaggerError, match="the teacher has 3 classes but this run has 6"):
        _run(tiny_config(f"loss.teacher={tmp_path / 't.npz'}"), synth_set, tmp_path / "run")


def test_early_stopping_without_improvement(synth_set, tmp_path):
    result = _run(tiny_config("run.epochs=5", "optim.lr=1e-12", "run.patience=2", "run.metric=loss",
                              "schedule.kind=constant"), synth_set, tmp_path / "run")
    assert result.stop_reason.startswith("early stopping") and len(_rows(tmp_path / "run")) <= 4


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_checkpoint(synth_set, tmp_path, monkeypatch):
    _run(tiny_config("run.epochs=1"), synth_set, tmp_path / "run")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    config = tmp_path / "run" / "config.toml"
    config.write_text(config.read_text().replace("epochs = 1", "epochs = 2"))
    nan = lambda self, spec: torch.full((spec.shape[0], 6), np.nan, requires_grad=True)  # noqa: E731
    monkeypatch.setattr(trainer.FeatureNet, "forward", nan)  # differentiable: the check comes after backward
    with pytest.raises(TaggerError, match="non-finite training loss"):
        trainer.resume(tmp_path / "run", show_progress=False)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_cached_features_train_and_waveform_augmentation_is_refused(synth_set, tmp_path):
    from tagger.data.extract import extract_features
    from tagger.data.manifests import read_manifest
    from tagger.models import create_model

    frontend = create_model("efficientat-mn01", num_classes=6).frontend
    from tagger.frontends import frontend_to_dict

    for split in ("train", "valid"):
        extract_features(read_manifest(synth_set[split]).examples, tmp_path / split, frontend_to_dict(frontend),
                         labels=LabelSet.from_csv(synth_set["labels"]), workers=0, show_progress=False)
    spec = (trainer.data_spec(tmp_path / "train"), trainer.data_spec(tmp_path / "valid"))
    result = trainer.train(tiny_config("augment.spec_mixup=perm", "augment.freqm=8"), *spec, tmp_path / "run",
                           show_progress=False)
    assert result.stop_reason == "finished" and len(_rows(tmp_path / "run")) == 2
    with pytest.raises(TaggerError, match="augment.gain_db"):
        trainer.train(tiny_config("augment.gain_db=6"), *spec, tmp_path / "run2", show_progress=False)
    with pytest.raises(TaggerError, match="re-run extract-features"):
        trainer.train(tiny_config(arch="panns-cnn6"), *spec, tmp_path / "run3", show_progress=False)


def test_balanced_sampling_accumulation_bf16_and_pairs_mixup(synth_set, tmp_path):
    result = _run(tiny_config("data.sampler=balanced", "data.epoch_length=12", "optim.accumulate=2",
                              "run.precision=bf16", "augment.spec_mixup=pairs", "augment.spec_mixup_alpha=1",
                              "optim.clip_grad=1.0", "schedule.kind=step", "schedule.warmup_steps=4"),
                  synth_set, tmp_path / "run")
    # 12 clips / batch 4 = 3 micro-batches per epoch, stepping after 2 and at the epoch end: 2 steps per epoch.
    assert result.steps == 4 and result.stop_reason == "finished"


def test_single_label_data_trains_as_multiclass_with_accuracy(tmp_path):
    from tagger.data.synth import synthesize

    config = tiny_config

    paths = synthesize(tmp_path / "data", clips=16, seconds=1.0, sample_rate=32000, seed=1)
    for split in ("train", "valid"):  # keep the first label of each clip: a single-label task
        lines = paths[split].read_text().splitlines()
        rows = [lines[0]] + [",".join([ln.split(",")[0], ln.split(",")[1].strip('"'), ln.split(",")[-1]])
                             for ln in lines[1:]]
        paths[split].write_text("\n".join(rows) + "\n")
    result = _run(config("run.epochs=1"), paths, tmp_path / "run")
    assert result.metric == "accuracy" and "accuracy" in _rows(tmp_path / "run")[0]
    assert load_checkpoint(tmp_path / "run" / "best.pt")[1]["task"] == "multiclass"


def test_a_batch_too_big_for_memory_runs_as_micro_batches(synth_set, tmp_path, monkeypatch, capsys):
    """Told that memory holds 2 clips but not 4, the trainer splits each batch of 4 into 2 micro-batches with
    accumulated gradients: the same effective batch, so the same weights for a model without BatchNorm, with the
    split recorded in config.toml and said once."""
    from tagger.models import create_model
    from tagger.training import memory

    settings = ("model.kwargs.input_tdim=100", "run.epochs=1")
    whole = tmp_path / "whole"
    _run(tiny_config(*settings, arch="ast-tiny224"), synth_set, whole)

    model = create_model("ast-tiny224", num_classes=len(LabelSet.from_csv(synth_set["labels"])), input_tdim=100)
    with torch.no_grad():
        spec = model.frontend(torch.zeros(1, 16000))[0]
    per_clip = memory.saved_bytes_per_clip(trainer.FeatureNet(model.train()), spec)
    fixed = memory.optimizer_bytes(model)
    monkeypatch.setattr(memory, "free_bytes", lambda device, local=1: (fixed + 3 * per_clip) / memory.HEADROOM)
    split = tmp_path / "split"
    _run(tiny_config(*settings, arch="ast-tiny224"), synth_set, split)

    assert "2 micro-batches of 2 with gradients accumulated" in capsys.readouterr().err
    config = (split / "config.toml").read_text()
    assert "batch_size = 4" in config and "micro_batches = 2" in config
    assert [r["step"] for r in _rows(split)] == [r["step"] for r in _rows(whole)]
    # Adam's steps move weights by about 1e-3 each; summation order moves them by at most 2e-5 (measured).
    for key, value in _state(whole / "last.pt").items():
        torch.testing.assert_close(_state(split / "last.pt")[key], value, rtol=0, atol=1e-4)
