"""`tagger train --strong`: frame targets that follow each item's crop, roll and mixup, the frame loss, batches with
a fixed share of strongly labelled clips, and whole runs of the frame families."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import burst_clip, fake_scenes
from typer.testing import CliRunner

from tagger.cli import app
from tagger.data.sampling import BatchShareSampler
from tagger.data.strong import StrongEvent, StrongLabels, write_dcase_tsv
from tagger.errors import TaggerError
from tagger.labels import LabelSet
from tagger.training.config import AugmentConfig
from tagger.training.data import Source, Targets, TrainWaves
from tagger.training.frames import FrameGrid, FrameTargets, clip_keys
from tagger.training.losses import frame_loss

RATE = 16000
HOP = 0.01
TINY_HTSAT = '{"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [2, 2, 4, 4]}'
LABELS = LabelSet.from_list(["beep"], ["beep"])


@pytest.fixture(scope="module")
def bursts(tmp_path_factory):
    """Four 3 s clips, each with tone bursts at known times, and their strong labels."""
    root = tmp_path_factory.mktemp("bursts")
    times = [[(0.5, 0.9)], [(1.2, 2.0)], [(0.1, 0.3), (2.2, 2.9)], [(1.9, 2.6)]]
    rows, events = [], []
    for k, spans in enumerate(times):
        burst_clip(root / f"c{k}.wav", spans, seconds=3.0, rate=RATE)
        rows.append([f"c{k}.wav", "beep", f"c{k}"])
        events += [StrongEvent(f"c{k}", on, off, "beep") for on, off in spans]
    with open(root / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "labels", "id"], *rows])
    write_dcase_tsv(root / "strong.tsv", StrongLabels(events))
    return root, times


def frame_energy(wave: np.ndarray, frames: int) -> np.ndarray:
    """RMS of the wave over each 10 ms frame [k * hop, (k + 1) * hop)."""
    step = int(HOP * RATE)
    padded = np.pad(wave, (0, frames * step - len(wave)))
    return np.sqrt((padded.reshape(frames, step) ** 2).mean(axis=1))


def waves_dataset(root, augment: AugmentConfig, seconds: float = 2.0):
    from tagger.data.clips import open_clips

    source = Source(root / "train.csv", clips=open_clips(root / "train.csv"))
    grid = FrameGrid(int(seconds / HOP), HOP, RATE, int(seconds * RATE))
    strong = StrongLabels([e for e in _read(root / "strong.tsv")])
    paths = [source.clips.where(i) for i in range(len(source))]
    frames = FrameTargets(strong, clip_keys(list(source.ids), paths), LABELS, grid)
    return TrainWaves(source, Targets(source.labels, LABELS), RATE, seconds, augment, seed=3, frames=frames)


def _read(path):
    from tagger.data.strong import read_strong

    return read_strong(path)


@pytest.mark.parametrize("roll", [0, 12000])
def test_frame_targets_follow_the_random_crop_and_roll(bursts, roll):
    """Where an item's target says the tone sounds, its waveform is loud; elsewhere quiet: crop offsets and the
    circular roll move the targets exactly as they move the audio."""
    root, _ = bursts
    data = waves_dataset(root, AugmentConfig(roll=roll))
    loud_on = quiet_off = 0
    for position in range(24):
        item = data[(0, position, position % 4)]
        energy = frame_energy(item["wave"].numpy(), 200)
        target = item["frames"].numpy()[:, 0]
        assert item["has_frames"] and target.shape == (200,)
        inside, outside = energy[target == 1], energy[target == 0]
        # frames whose centre lies in a burst hold the tone (rms ~0.35); edge frames may be half in
        loud_on += int((inside > 0.1).sum() >= len(inside) - 2)
        quiet_off += int((outside < 0.1).sum() >= len(outside) - 2)
    assert loud_on == quiet_off == 24


def test_frame_targets_mix_with_the_waves(bursts):
    root, _ = bursts
    data = waves_dataset(root, AugmentConfig(wave_mixup=1.0, wave_mixup_alpha=1.0))
    item = data[(0, 5, 1)]
    values = set(np.unique(item["frames"].numpy()).round(6))
    assert item["has_frames"] and len(values) > 2  # 0, lam, 1 - lam (and 1 where both sound)
    assert float(item["frames"].max()) <= 1.0


def test_a_clip_without_strong_labels_has_no_frame_targets(bursts):
    root, _ = bursts
    grid = FrameGrid(10, HOP, RATE, 1600)
    targets = FrameTargets(StrongLabels([StrongEvent("c1", 0.0, 0.05, "beep")]), [("c0",), ("c1",)], LABELS, grid)
    assert not targets.has(0) and targets.has(1) and targets.count == 1
    assert targets(1).sum() == 5 and targets(0).sum() == 0  # centres 0.005 ... 0.045 s
    assert targets(1, start=800).sum() == 0  # the crop starts after the event
    padded = targets(1, start=-400)  # 25 ms of zeros come first
    assert padded[:2].sum() == 0 and padded[2:7].sum() == 5
    rolled = targets(1, shift=1200)  # rolled 75 ms later: the event's last 25 ms wrap round to the start
    assert rolled[:2].sum() == 2 and rolled[7:].sum() == 3


def test_frames_the_front_end_pads_past_the_item_have_no_events():
    """PSLA and AST pad their fbank to a fixed length: those frames hold no audio, whatever the roll."""
    grid = FrameGrid(20, HOP, RATE, 1600)  # 10 frames of audio, 10 of padding
    targets = FrameTargets(StrongLabels([StrongEvent("c", 0.0, 0.1, "beep")]), [("c",)], LABELS, grid)
    assert targets(0).ravel().tolist() == [1.0] * 10 + [0.0] * 10
    assert targets(0, shift=800)[10:].sum() == 0


def test_frame_loss_is_the_loss_at_the_models_step_resolution():
    """Frame logits repeat each step over its frames; BCE is linear in its target, so the per-frame loss equals the
    per-step loss against the fraction of the step the event covers."""
    torch.manual_seed(0)
    steps = torch.randn(2, 5, 3)
    frames = torch.rand(2, 20, 3).round()
    logits = steps.repeat_interleave(4, dim=1)
    fraction = frames.unflatten(1, (5, 4)).mean(dim=2)
    expected = F.binary_cross_entropy_with_logits(steps, fraction)
    assert frame_loss(logits, frames, torch.tensor([True, True])) == pytest.approx(float(expected), rel=1e-6)
    only_first = frame_loss(logits, frames, torch.tensor([True, False]))
    assert only_first == pytest.approx(float(F.binary_cross_entropy_with_logits(steps[:1], fraction[:1])), rel=1e-6)
    zero = frame_loss(logits.requires_grad_(), frames, torch.tensor([False, False]))
    zero.backward()
    assert float(zero.detach()) == 0.0
    with pytest.raises(TaggerError, match="frame output"):
        frame_loss(logits[:, :10], frames, torch.tensor([True, True]))


def test_batch_share_sampler_composes_every_batch_and_resumes():
    strong, weak = np.arange(0, 6), np.arange(6, 30)
    sampler = BatchShareSampler(strong, weak, batch=4, share=0.5, num_samples=40, seed=1)
    drawn = np.array(list(sampler))
    assert len(drawn) == 40
    for batch in drawn.reshape(-1, 4):
        assert np.isin(batch[:2], strong).all() and np.isin(batch[2:], weak).all()
    assert sorted(drawn.reshape(-1, 4)[:3, :2].ravel()) == list(strong)  # a pass over a pool repeats nothing
    again = BatchShareSampler(strong, weak, batch=4, share=0.5, num_samples=40, seed=1)
    again.load_state_dict({"epoch": 0, "position": 12})
    assert list(again) == drawn[12:].tolist()
    ranks = [np.array(list(BatchShareSampler(strong, weak, 4, 0.5, 40, seed=1, rank=r, world_size=2)))
             for r in (0, 1)]
    first_pass = np.concatenate([ranks[0][:4][:2], ranks[1][:4][:2], ranks[0][4:8][:2]])
    assert len(set(first_pass.tolist())) == 6  # ranks split the pool, they do not repeat each other
    sampler.set_epoch(1)
    assert list(sampler) != drawn.tolist()
    with pytest.raises(TaggerError, match="both pools"):
        BatchShareSampler(strong, [], 4, 0.5, 8)


def train(root, out, *extra):
    return CliRunner().invoke(app, ["train", "--arch", "htsat-tiny", "--valid", str(root / "scenes" / "test.csv"),
                                    "--labels", str(root / "scenes" / "labels.csv"), "--out", str(out),
                                    "--valid-strong", str(root / "scenes" / "test-strong.tsv"),
                                    "--set", f"model.kwargs={TINY_HTSAT}", "--set", "run.epochs=2",
                                    "--set", "data.batch_size=4", "--set", "data.clip_seconds=3",
                                    "--set", "data.num_workers=0", "--format", "json", *extra])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return fake_scenes(tmp_path_factory.mktemp("scenes"))


def test_strong_runs_of_htsat_with_and_without_weak_clips(scenes, tmp_path):
    strong = ["--strong", str(scenes / "scenes" / "train-strong.tsv"), "--set", "augment.roll=4000",
              "--set", "augment.spec_mixup=perm", "--set", "augment.wave_mixup=0.5", "--set", "run.metric=frame_loss"]
    result = train(scenes, tmp_path / "run", "--train", str(scenes / "scenes" / "train.csv"), *strong)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [float(r["valid_frame_loss"]) > 0 for r in rows] == [True, True]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train"]["strong"]["path"].endswith("train-strong.tsv")
    config = tmp_path / "run" / "config.toml"
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 3"))
    resumed = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "run")])  # strong labels from run.json
    assert resumed.exit_code == 0, resumed.output
    assert len(list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))) == 3

    # the strong annotation alone is a training set: its clips are found in --audio-dir
    alone = train(scenes, tmp_path / "alone", "--audio-dir", str(scenes / "scenes" / "audio"), *strong)
    assert alone.exit_code == 0, alone.output
    listed = list(csv.DictReader(open(tmp_path / "alone" / "strong-train.csv")))
    assert len(listed) == 8 and all(row["labels"].endswith(";") or not row["labels"] for row in listed)
    weak = {row["id"]: row["labels"] for row in csv.DictReader(open(scenes / "scenes" / "train.csv"))}
    assert {row["id"]: row["labels"].replace(";", ",").rstrip(",") for row in listed} == weak

    # half of each batch from strong clips: a run whose training set has weakly labelled clips too
    mixed = train(scenes, tmp_path / "mixed", "--train", str(scenes / "scenes" / "train.csv"), "--strong",
                  str(_half_strong(scenes, tmp_path)), "--set", "strong.batch_share=0.5")
    assert mixed.exit_code == 0, mixed.output


def _half_strong(scenes, tmp_path):
    """The training annotation with only the first half of the scenes listed."""
    lines = (scenes / "scenes" / "train-strong.tsv").read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if line.split("\t")[0] in {f"train-{k:04d}.wav" for k in range(4)}]
    (tmp_path / "half.tsv").write_text("\n".join(kept) + "\n")
    return tmp_path / "half.tsv"


def test_strong_labels_need_a_frame_model_audio_and_matching_clips(scenes, tmp_path):
    strong = str(scenes / "scenes" / "train-strong.tsv")
    result = train(scenes, tmp_path / "a", "--train", str(scenes / "scenes" / "train.csv"), "--strong", strong,
                   "--arch", "panns-cnn6", "--set", "model.kwargs={}")
    assert result.exit_code == 2 and "gives no frame-level output" in result.output
    other = tmp_path / "other.tsv"
    write_dcase_tsv(other, StrongLabels([StrongEvent("elsewhere", 0.0, 1.0, "dog")]))
    result = train(scenes, tmp_path / "b", "--train", str(scenes / "scenes" / "train.csv"), "--strong", str(other))
    assert result.exit_code == 2 and "none of the 8 train clips" in result.output
    result = train(scenes, tmp_path / "c", "--strong", strong)
    assert result.exit_code == 2 and "--audio-dir" in result.output
    result = train(scenes, tmp_path / "d", "--train", str(scenes / "scenes" / "train.csv"), "--strong", strong,
                   "--set", "strong.batch_share=0.5")
    assert result.exit_code == 2 and "every training clip has strong labels" in result.output
    for message in (result.output,):
        assert "Traceback" not in message


@pytest.mark.parametrize("arch", ["efficientat-mn01", "psla-effnet-b0-att4"])
def test_strong_labels_switch_on_the_frame_output_of_efficientat_and_psla(scenes, tmp_path, arch):
    from tagger.checkpoint import load_checkpoint

    result = CliRunner().invoke(app, [
        "train", "--arch", arch, "--train", str(scenes / "scenes" / "train.csv"), "--valid",
        str(scenes / "scenes" / "test.csv"), "--labels", str(scenes / "scenes" / "labels.csv"), "--out",
        str(tmp_path / "run"), "--strong", str(scenes / "scenes" / "train-strong.tsv"), "--set", "run.epochs=1",
        "--set", "data.batch_size=4", "--set", "data.clip_seconds=3", "--set", "data.num_workers=0"])
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(tmp_path / "run" / "last.pt")
    assert meta["model_kwargs"]["frame_output"] is True and model.frame_level
