"""Consistent teacher targets: `tagger teach` stores a teacher's top-K logits per random draw of each clip, and
`tagger train --teacher-targets` replays exactly those draws (the student's input is the teacher's, bit for bit)."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import spread_model, tone, write_wav
from typer.testing import CliRunner

from tagger import audio
from tagger.augment import random_gain
from tagger.checkpoint import save_checkpoint
from tagger.cli import app
from tagger.errors import TaggerError
from tagger.inference.runtime import Scorer
from tagger.labels import LabelSet
from tagger.training import teach as teach_module
from tagger.training import trainer
from tagger.training.teach import teach
from tagger.training.teacher_targets import (
    META,
    TeacherTargets,
    choose_draw,
    draw_input,
    shard_name,
    soft_targets,
    top_k,
)

sys.path.insert(0, str(Path(__file__).resolve().parent / "training"))
from tiny import tiny_config  # noqa: E402

RATE = 32000
SECONDS = 0.8  # the crop: longer than some clips (padded at random), shorter than the others (cropped at random)
LENGTHS = (0.5, 1.2, 0.8, 1.5, 0.7, 1.1, 1.3, 0.9)
LABELS = LabelSet(["/m/a", "/m/b", "/m/c"], ["A", "B", "C"])
CROPS, TOP_K = 3, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Clips of several lengths, a three-class teacher at the student's rate, its label file."""
    root = tmp_path_factory.mktemp("teach")
    rows = []
    for k, seconds in enumerate(LENGTHS):
        path = write_wav(root / "audio" / f"clip{k}.wav", tone(seconds, RATE, 300.0 + 150 * k, seed=k), RATE)
        rows.append(f"{path},{LABELS.ids[k % 3]}")
    (root / "train.csv").write_text("path,labels\n" + "\n".join(rows) + "\n")
    (root / "valid.csv").write_text("path,labels\n" + "\n".join(rows[:3]) + "\n")
    LABELS.write_csv(root / "labels.csv")
    save_checkpoint(root / "teacher.pt", spread_model("efficientat-mn01", 3, seed=1).eval(), LABELS)
    return {"root": root, "train": root / "train.csv", "valid": root / "valid.csv", "labels": root / "labels.csv",
            "teacher": root / "teacher.pt"}


def _teach(setup, out: Path, **options):
    from tagger.data.clips import open_clips

    settings = {"crops": CROPS, "k": TOP_K, "seed": 5, "clip_seconds": SECONDS, "gain_db": 6, "shard_size": 3,
                "batch_size": 4, "workers": 0, "device": "cpu", **options}
    return teach(setup["teacher"], open_clips(setup["train"]), out, **settings)


@pytest.fixture(scope="module")
def taught(setup) -> dict:
    """One teach run with every teacher input and output recorded, in the order the teacher saw them."""
    inputs, logits = [], []
    original = Scorer.__call__

    def recording(self, waves, frames=True):
        scores = original(self, waves, frames)
        inputs.append(np.array(waves))
        logits.append(scores.logits)
        return scores

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Scorer, "__call__", recording)
        result = _teach(setup, setup["root"] / "targets")
    assert result.complete and result.total_clips == len(LENGTHS) and result.written == [0, 1, 2]
    # Crops run clip by clip, draw by draw; every clip is readable, so teacher row r * N + d is clip r, draw d.
    return {"out": setup["root"] / "targets", "inputs": np.concatenate(inputs), "logits": np.concatenate(logits)}


def _trainer(setup, out: Path, *extra: str, labels: Path | None = None, targets: Path | None = None):
    cfg = tiny_config(f"data.clip_seconds={SECONDS}", f"loss.teacher_targets={targets}", *extra)
    return trainer.Trainer(cfg, out, trainer.data_spec(setup["train"]), trainer.data_spec(setup["valid"]),
                           labels or setup["labels"], show_progress=False)


def test_the_student_input_for_a_stored_draw_is_the_teachers_bit_for_bit(setup, taught, tmp_path):
    # The recipe's own waveform augmentation is on: a replayed draw must not apply it a second time.
    run = _trainer(setup, tmp_path / "run", "loss.kd_lambda=0", "augment.gain_db=6", "augment.roll=500",
                   "augment.wave_mixup=0.5", targets=taught["out"])
    assert any("augment.wave_mixup, augment.gain_db, augment.roll" in note for note in run.init_notes)
    seen = set()
    for index in range(len(LENGTHS)):
        for position in range(6):
            item = run.train_set[(1, position * len(LENGTHS) + index, index)]
            draw = item["draw"]
            teacher_input = taught["inputs"][index * CROPS + draw]
            assert item["wave"].numpy().dtype == teacher_input.dtype == np.float32
            assert np.array_equal(item["wave"].numpy(), teacher_input), (index, draw)
            # ... and its targets are that draw's stored top-K logits, 0 elsewhere: one label per clip makes
            # this run multiclass, so they are a softmax over the K (a cross-entropy target sums to 1)
            expected = np.zeros(3, np.float32)
            index_k, values = top_k(taught["logits"][index * CROPS + draw][None], TOP_K)
            expected[index_k[0]] = soft_targets(values[0], 1.0, exclusive=True)
            assert item["has_teacher"] and np.array_equal(item["teacher"].numpy(), expected)
            assert item["teacher"].sum() == pytest.approx(1.0, abs=1e-6)
            seen.add((index, draw))
    assert len(seen) > 2 * len(LENGTHS), "the items should replay several draws of each clip"


def test_a_multilabel_student_gets_the_sigmoided_logits(setup, taught, tmp_path):
    run = _trainer(setup, tmp_path / "run", "loss.kd_lambda=0", "task=multilabel", "loss.kd_temperature=2",
                   targets=taught["out"])
    item = run.train_set[(0, 0, 0)]
    expected = np.zeros(3, np.float32)
    index_k, values = top_k(taught["logits"][item["draw"]][None], TOP_K)
    expected[index_k[0]] = 1.0 / (1.0 + np.exp(-values[0].astype(np.float32) / 2.0))
    assert np.allclose(item["teacher"].numpy(), expected, atol=1e-7)


def test_a_draw_is_what_trainings_own_crop_and_gain_give():
    """choose_draw draws as crop_or_pad_from and random_gain draw: same generator, same crop, same gain."""
    for length in (900, 1000, 1500):
        wave = np.random.default_rng(length).standard_normal(length).astype(np.float32)
        for draw in range(5):
            start, gain_db, _ = choose_draw(7, 3, draw, length, 1000, 6)
            rng = np.random.default_rng([7, 3, draw])
            crop, offset = audio.crop_or_pad_from(wave, 1000, mode="random", generator=rng)
            assert offset == start
            assert np.array_equal(draw_input(wave, 1000, start, gain_db), random_gain(crop, 6, rng))


def test_stored_top_k_round_trips(setup, taught):
    store = TeacherTargets.open(taught["out"])
    assert store.crops == CROPS and store.sample_rate == RATE and store.labels == LABELS and len(store) == 8
    assert store.rows_for(["clip3", "nothing"]).tolist() == [3, -1]
    for row in range(len(LENGTHS)):
        for draw in range(CROPS):
            start, gain_db, index, values = store.draw(row, draw)
            full = taught["logits"][row * CROPS + draw]
            assert index.tolist() == np.argsort(-full, kind="stable")[:TOP_K].tolist()
            assert np.array_equal(values, full[index].astype(np.float16).astype(np.float32))
            assert -6 <= gain_db < 6
    with h5py.File(taught["out"] / shard_name(0), "r") as shard:
        assert shard["topk_logits"].dtype == np.float16 and shard["topk_indices"].dtype == np.int16
        assert shard["topk_logits"].shape == (3, CROPS, TOP_K) and shard["start"].shape == (3, CROPS)
        assert shard.attrs["teacher_fingerprint"].endswith(f"{os.stat(setup['teacher']).st_mtime_ns}")
        assert [s.decode() for s in shard["label_ids"][()]] == list(LABELS.ids)
    index, values = top_k(np.array([[1e6, -2.0, 3.0]], np.float32), 5)  # K above the classes; an fp16 overflow
    assert index.tolist() == [[0, 2, 1]] and np.isfinite(values).all()


def _contents(folder: Path) -> dict:
    """Every dataset and attribute of every shard, and teach.json."""
    out = {META: (folder / META).read_text()}
    for path in sorted(folder.glob("shard-*.h5")):
        with h5py.File(path, "r") as handle:
            out[path.name] = ({k: v for k, v in handle.attrs.items()}, {k: handle[k][()] for k in handle})
    return out


def test_an_interrupted_teach_resumes_to_what_an_uninterrupted_run_writes(setup, taught, tmp_path, monkeypatch):
    out = tmp_path / "targets"
    original = teach_module.write_shard
    written = []

    def interrupted_after_one_shard(path, *args, **kwargs):
        if written:
            raise KeyboardInterrupt
        original(path, *args, **kwargs)
        written.append(path)

    monkeypatch.setattr(teach_module, "write_shard", interrupted_after_one_shard)
    with pytest.raises(KeyboardInterrupt):
        _teach(setup, out)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.h5"]
    assert not list(out.glob(".*tmp*")), "an interrupted run leaves no half-written shard"
    with pytest.raises(TaggerError, match="incomplete"):
        TeacherTargets.open(out)
    monkeypatch.setattr(teach_module, "write_shard", original)
    (out / ".shard-00002.h5.tmp-99999").write_bytes(b"half")  # what a kill -9 mid-write leaves
    result = _teach(setup, out)
    assert result.written == [1, 2] and result.already == 1 and result.complete
    assert not list(out.glob(".*tmp*"))
    mine, whole = _contents(out), _contents(taught["out"])
    assert mine.keys() == whole.keys()
    for name in mine:
        if name == META:
            assert mine[name] == whole[name].replace(str(taught["out"]), str(out))
            continue
        _assert_same_shard(mine[name], whole[name], name)
    again = _teach(setup, out)
    assert again.written == [] and again.already == 3 and again.total_clips == 8


def _assert_same_shard(mine: tuple, whole: tuple, name: str) -> None:
    (attrs, arrays), (attrs_whole, arrays_whole) = mine, whole
    assert attrs.keys() == attrs_whole.keys() and all(np.array_equal(attrs[k], attrs_whole[k]) for k in attrs)
    assert arrays.keys() == arrays_whole.keys()
    assert all(np.array_equal(arrays[k], arrays_whole[k]) for k in arrays), name


def test_two_shard_jobs_fill_one_folder_as_one_run_does(setup, taught, tmp_path):
    out = tmp_path / "targets"
    first = _teach(setup, out, part=(1, 2))
    assert first.written == [0, 2] and not first.complete and first.total_clips is None
    with pytest.raises(TaggerError, match="incomplete"):
        TeacherTargets.open(out)
    second = _teach(setup, out, part=(2, 2))
    assert second.written == [1] and second.already == 0 and second.complete and second.total_clips == 8
    mine, whole = _contents(out), _contents(taught["out"])
    assert mine[META] == whole[META].replace(str(taught["out"]), str(out))
    for name in (n for n in mine if n != META):
        _assert_same_shard(mine[name], whole[name], name)
    assert _teach(setup, out, part=(1, 2)).already == 2


def test_a_rerun_with_other_settings_or_another_teacher_is_refused(setup, taught, tmp_path):
    with pytest.raises(TaggerError, match=r"was taught with --crops 3, not 4; rerun with the same settings"):
        _teach(setup, taught["out"], crops=4)
    with pytest.raises(TaggerError, match=r"was taught with --clip-seconds 0.8, not 1.0"):
        _teach(setup, taught["out"], clip_seconds=1.0)
    other = tmp_path / "teacher.pt"
    save_checkpoint(other, spread_model("efficientat-mn01", 3, seed=2).eval(), LABELS)
    from tagger.data.clips import open_clips

    with pytest.raises(TaggerError, match="holds targets of another teacher"):
        teach(other, open_clips(setup["train"]), taught["out"], crops=CROPS, k=TOP_K, seed=5, clip_seconds=SECONDS,
              gain_db=6, shard_size=3, workers=0, device="cpu")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(TaggerError, match="holds no teacher targets; choose a new or empty folder"):
        _teach(setup, tmp_path / "busy")
    with pytest.raises(TaggerError, match="--top-k 0 must be at least 1"):
        _teach(setup, tmp_path / "new", k=0)


def test_the_trainer_refuses_what_it_cannot_replay_in_one_line(setup, taught, tmp_path):
    with pytest.raises(TaggerError, match=r"holds 0.8 s crops but data.clip_seconds is 1; set data.clip_seconds=0.8"):
        _trainer(setup, tmp_path / "a", "data.clip_seconds=1", targets=taught["out"])
    LabelSet(["/m/a", "/m/b", "/m/c", "/m/z"]).write_csv(tmp_path / "labels.csv")
    with pytest.raises(TaggerError, match=r"the teacher has no class for 1 of this run's labels \(/m/z\)"):
        _trainer(setup, tmp_path / "b", labels=tmp_path / "labels.csv", targets=taught["out"])
    with pytest.raises(TaggerError, match="no teacher targets"):
        _trainer(setup, tmp_path / "c", targets=tmp_path / "nowhere")
    with pytest.raises(TaggerError, match="two ways to distil"):
        tiny_config(f"loss.teacher_targets={taught['out']}", "loss.teacher=t.npz")


def test_clips_without_stored_targets_stop_kd_alone_and_train_on_labels_otherwise(setup, tmp_path):
    # Teach only the first five clips: the other three have no targets.
    lines = setup["train"].read_text().splitlines()
    (tmp_path / "part.csv").write_text("\n".join(lines[:6]) + "\n")
    from tagger.data.clips import open_clips

    teach(setup["teacher"], open_clips(tmp_path / "part.csv"), tmp_path / "targets", crops=2, k=TOP_K,
          clip_seconds=SECONDS, workers=0, device="cpu")
    with pytest.raises(TaggerError, match=r"3 of 8 training clips \(e.g. clip5\) have no stored teacher targets"):
        _trainer(setup, tmp_path / "a", "loss.kd_lambda=0", targets=tmp_path / "targets")
    run = _trainer(setup, tmp_path / "b", "loss.kd_lambda=0.5", targets=tmp_path / "targets")
    assert any("3 of 8 training clips (e.g. clip5)" in note and "labels only" in note for note in run.init_notes)
    item = run.train_set[(0, 0, 6)]
    assert not item["has_teacher"] and item["draw"] == -1 and not item["teacher"].any()
    assert item["wave"].shape == (int(SECONDS * RATE),)


def test_teach_and_train_from_the_command_line_train_on_the_kd_loss(setup, tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "targets"
    command = ["teach", str(setup["teacher"]), str(setup["train"]), "--out", str(out), "--crops", "2", "--top-k", "2",
               "--clip-seconds", str(SECONDS), "--gain-db", "3", "--shard-size", "4", "--workers", "1",
               "--device", "cpu", "--format", "json"]
    done = runner.invoke(app, command)
    assert done.exit_code == 0, done.output
    assert '"clips_taught": 8' in done.output and '"complete": "yes"' in done.output
    again = runner.invoke(app, [*command[:8], "3", *command[9:]])  # --top-k 3
    assert again.exit_code == 2 and "error:" in again.output and "--top-k 2, not 3" in again.output
    assert "Traceback" not in again.output and len(again.output.strip().splitlines()) <= 2

    losses = []
    original = trainer.training_loss

    def recording(logits, targets, kind, teacher=None, has_teacher=None, kd_lambda=0.1):
        total, parts = original(logits, targets, kind, teacher, has_teacher, kd_lambda)
        losses.append((teacher is not None and bool(has_teacher.all()), float(total.detach()), float(parts["kd_loss"]),
                       float(parts["label_loss"])))
        return total, parts

    monkeypatch.setattr(trainer, "training_loss", recording)
    run = tmp_path / "run"
    done = runner.invoke(app, ["train", "--arch", "efficientat-mn01", "--train", str(setup["train"]), "--valid",
                               str(setup["valid"]), "--labels", str(setup["labels"]), "--out", str(run),
                               "--teacher-targets", str(out), "--set", f"data.clip_seconds={SECONDS}", "--set",
                               "loss.kd_lambda=0", "--set", "run.epochs=1", "--set", "data.batch_size=4", "--set",
                               "data.num_workers=0", "--set", "augment.spec_mixup=perm", "--format", "json"])
    assert done.exit_code == 0, done.output
    assert len(losses) == 2 and all(has for has, *_ in losses)
    assert all(total == kd and total != label for _, total, kd, label in losses), losses
    with open(run / "metrics.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["train_loss"]) == pytest.approx(np.mean([total for _, total, _, _ in losses]), rel=1e-6)
    assert f"teacher_targets = \"{out.resolve()}\"" in (run / "config.toml").read_text()


def test_a_bad_shard_is_one_line(setup, tmp_path):
    done = CliRunner().invoke(app, ["teach", str(setup["teacher"]), str(setup["train"]), "--out", str(tmp_path / "t"),
                                    "--shard", "3/2"])
    assert done.exit_code == 2 and "--shard '3/2': K must be between 1 and N" in done.output
    assert "Traceback" not in done.output and not (tmp_path / "t").exists()
