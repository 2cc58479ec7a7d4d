"""`tagger train` straight from stored data sets: AudioSet HDF5 files in the PaSST and PANNs layouts, and packs."""

from __future__ import annotations

import json

import numpy as np
from conftest import shared_path, tone
from test_audioset_hdf5 import random_targets, write_labels, write_mp3_file, write_waveform_file
from tiny import TINY_ARCH, tiny_overrides
from typer.testing import CliRunner

from tagger.cli import app

runner = CliRunner()
RATE = 32000


def _waves(count: int, seed: int) -> list[np.ndarray]:
    return [tone(1.0, RATE, freq=200 + 90 * i, seed=seed + i) for i in range(count)]


def test_passt_and_panns_hdf5_files_train_directly(tmp_path):
    """--train a PaSST/EfficientAT mp3 file, --valid a PANNs waveform file; 527 AudioSet classes from the label
    file beside them; targets stay CSR (made per item)."""
    mids = write_labels(tmp_path)
    train_targets, valid_targets = random_targets(8, seed=1), random_targets(6, seed=2)
    valid_targets[:, : 527 // 2] |= train_targets[:6, : 527 // 2]
    train = write_mp3_file(tmp_path / "balanced_train_segments_mp3.hdf", [f"Y{i:011d}.mp3" for i in range(8)],
                           _waves(8, 0), train_targets)
    waves = (np.stack(_waves(6, 1)) * 32767).astype(np.int16)
    valid = write_waveform_file(tmp_path / "eval.h5", [f"Y{i:011d}.wav" for i in range(6)], waves, valid_targets)
    sets = [f"--set={item}" for item in tiny_overrides("run.epochs=1")]
    result = runner.invoke(app, ["train", "--arch", TINY_ARCH, "--train", str(train), "--valid", str(valid),
                                 "--labels", str(tmp_path / "class_labels_indices.csv"), "--out",
                                 str(tmp_path / "run"), *sets, "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["stopped"] == "finished" and row["steps"] == 2 and 0 <= row["mAP"] <= 1
    labels = (tmp_path / "run" / "labels.csv").read_text().splitlines()
    assert len(labels) == 528 and labels[1].split(",")[1] == mids[0]


def _train(train, valid, out, *extra: str) -> dict:
    sets = [f"--set={item}" for item in tiny_overrides("run.epochs=1", *extra)]
    result = runner.invoke(app, ["train", "--arch", TINY_ARCH, "--train", str(train), "--valid", str(valid),
                                 "--out", str(out), *sets, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]


def test_packs_train_like_their_manifests(synth_set, tmp_path):
    """A FLAC pack decodes to the loose files' samples, so a run on packs equals the run on the manifests."""
    packs = {}
    for split in ("train", "valid"):
        result = runner.invoke(app, ["pack", str(synth_set[split]), "--out", str(tmp_path / split), "--workers", "0"])
        assert result.exit_code == 0, result.output
        packs[split] = tmp_path / split
    from_packs = _train(packs["train"], packs["valid"], tmp_path / "packs")
    from_files = _train(synth_set["train"], synth_set["valid"], tmp_path / "files")
    keep = ("steps", "mAP", "mAUC", "train_loss", "valid_loss")
    assert {k: from_packs[k] for k in keep} == {k: from_files[k] for k in keep}


def test_esc50_pack_trains(tmp_path):
    """Real ESC-50 clips packed to FLAC (bit-exact) train from the pack (ESC-50's 5-fold CSV, folds 1 and 2)."""
    import csv

    esc50 = shared_path("data", "esc50-folds1-4")
    with open(esc50 / "esc50.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["category"] in ("dog", "rain", "siren")]
    for fold, name in ((1, "train"), (2, "valid")):
        lines = ["path,labels"] + [f"{esc50 / 'audio' / r['filename']},{r['category']}"
                                   for r in rows if int(r["fold"]) == fold][:6]
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
        result = runner.invoke(app, ["pack", str(tmp_path / f"{name}.csv"), "--out", str(tmp_path / name),
                                     "--workers", "0"])
        assert result.exit_code == 0, result.output
    row = _train(tmp_path / "train", tmp_path / "valid", tmp_path / "run", "data.clip_seconds=5")
    assert row["stopped"] == "finished" and 0 <= row["accuracy"] <= 1
