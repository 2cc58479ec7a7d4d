"""`make demo`: the whole pipeline that exists so far, run through the real CLI on a synthetic set.

Each step prints the command it runs, so a new user can copy them.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("demo-output")


def run(*args: str) -> None:
    command = [sys.executable, "-m", "tagger", *args]
    print(f"\n$ tagger {shlex.join(args)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    data = OUT / "synthetic"
    run("synthesize", str(data), "--clips", "48", "--seconds", "5", "--sample-rate", "32000")
    for frontend in ("kaldi-fbank", "passt-mel", "panns-logmel"):
        run(
            "extract-features",
            str(data / "train.csv"),
            "--frontend",
            frontend,
            "--labels",
            str(data / "labels.csv"),
            "--out",
            str(OUT / f"features-{frontend}"),
        )
    print("\nA rerun resumes: clips already in the store are skipped.")
    run(
        "extract-features",
        str(data / "train.csv"),
        "--frontend",
        "kaldi-fbank",
        "--labels",
        str(data / "labels.csv"),
        "--out",
        str(OUT / "features-kaldi-fbank"),
        "--format",
        "json",
    )
    print("\nThe model zoo: every registered convolutional tagger, here the EfficientAT family.")
    run("models", "--family", "efficientat")

    print("\nTraining from cached features: PANNs CNN6 on the stored log-mels, with SpecAugment (10 short epochs).")
    run("extract-features", str(data / "valid.csv"), "--frontend", "panns-logmel", "--labels",
        str(data / "labels.csv"), "--out", str(OUT / "features-panns-logmel-valid"))
    run("train", "--arch", "panns-cnn6", "--train", str(OUT / "features-panns-logmel"),
        "--valid", str(OUT / "features-panns-logmel-valid"), "--out", str(OUT / "runs" / "cnn6-cached"),
        "--set", "data.clip_seconds=5", "--set", "data.batch_size=4", "--set", "run.epochs=10",
        "--set", "augment.freqm=8", "--set", "augment.timem=64", "--set", "run.save_every_epoch=true")
    print("\nTraining from audio with waveform augmentation (gain, roll, waveform mixup), then one more epoch")
    print("by resuming the finished run with a raised epoch count.")
    mn01 = OUT / "runs" / "mn01-audio"
    run("train", "--arch", "efficientat-mn01", "--train", str(data / "train.csv"), "--valid", str(data / "valid.csv"),
        "--labels", str(data / "labels.csv"), "--out", str(mn01), "--set", "data.clip_seconds=5",
        "--set", "data.batch_size=8", "--set", "run.epochs=3", "--set", "optim.lr=3e-3",
        "--set", "augment.gain_db=6", "--set", "augment.roll=3200", "--set", "augment.wave_mixup=0.5",
        "--set", "augment.wave_mixup_alpha=2")
    config = mn01 / "config.toml"
    config.write_text(config.read_text().replace("epochs = 3", "epochs = 4"))
    run("train", "--resume", str(mn01))
    print("\nShipped recipes (use with --recipe):")
    run("recipes")

    model = str(OUT / "runs" / "cnn6-cached" / "best.pt")
    print("\nEvaluating the CNN6 trained above (its checkpoint carries its front-end, so it reads audio) on the")
    print("validation set: headline metrics, a per-class table and plot, and the predictions saved for ensembling.")
    print("Ten short epochs on 36 clips make a rough model: expect modest scores.")
    reports = OUT / "evaluation"
    run("evaluate", "--model", model, str(data / "valid.csv"), "--labels", str(data / "labels.csv"),
        "--per-class", str(reports / "per-class.csv"), "--plot", str(reports / "per-class.png"),
        "--save-predictions", str(reports / "predictions.npz"))
    print("\nExporting the model to ONNX with its front-end inside the graph; onnxruntime runs the file and")
    print("its logits are compared with PyTorch before it is kept.")
    run("export", "--model", model, "--format", "onnx", "--out", str(OUT / "export" / "cnn6.onnx"))
    print("\nTagging files: the trained model on three validation clips.")
    clips = sorted((data / "audio").glob("*.wav"))
    run("predict", *map(str, clips[-3:]), "--model", model, "--top-k", "3")
    recording, truth = long_recording(data, OUT / "recording")
    print(f"\nA {recording.stem} of the validation clips end to end (true events: {truth}); events come from")
    print("2 s windows every 0.5 s, merged across window boundaries, with a heat-map of the scores over time.")
    run("predict", str(recording), "--model", model, "--events", "--min-duration", "1", "--min-gap", "0.5",
        "--top-k", "3", "--plot", str(OUT / "recording" / "timeline.png"))
    enhance_labels_demo(OUT / "weak")
    ensembles_demo(data, OUT / "runs", OUT / "ensembles")
    print(f"\nDone. Audio, feature stores, training runs (metrics.csv, curves.png, best.pt), the timeline plot, "
          f"the label-enhancement report and the ensembles are in {OUT}/")


def ensembles_demo(data: Path, runs: Path, folder: Path) -> None:
    """Weight averaging over the last epochs of one run, then a prediction ensemble of two architectures."""
    valid = ["--valid", str(data / "valid.csv"), "--labels", str(data / "labels.csv")]
    print("\nEnsembles. First PSLA/AST weight averaging: the parameters of CNN6's epochs 6-10 (kept by")
    print("run.save_every_epoch=true) averaged into one ordinary checkpoint, each epoch scored on validation.")
    epochs = sorted(str(p) for p in (runs / "cnn6-cached").glob("epoch_*.pt"))
    run("ensemble", *epochs, "--mode", "weights", "--select", "epochs>=6", *valid, "--out",
        str(folder / "cnn6-epochs-6-10.pt"))
    print("\nThen a prediction ensemble chosen by greedy forward selection among every CNN6 epoch and the")
    print("EfficientAT MobileNet trained from audio (another architecture): a member joins only if the validation")
    print("metric rises, so the ensemble never reports less than its best member. Epochs 6-10 are not scored")
    print("again: their validation scores were kept in valid-scores/ by the step above.")
    ensemble = str(folder / "greedy.pt")
    run("ensemble", *epochs, str(runs / "mn01-audio" / "best.pt"), "--select", "greedy", *valid, "--out", ensemble)
    print("\nAn ensemble file is used like any checkpoint:")
    run("evaluate", "--model", ensemble, str(data / "valid.csv"), "--labels", str(data / "labels.csv"))
    clips = sorted((data / "audio").glob("*.wav"))
    run("predict", *map(str, clips[-2:]), "--model", ensemble, "--top-k", "3")


def enhance_labels_demo(folder: Path) -> None:
    """PSLA label enhancement on a set whose labels are known to be incomplete, scored against the truth."""
    print("\nLabel enhancement (PSLA): a set with parent classes (tonal, broadband) where 30% of the train labels")
    print("lose a child or a parent, as in AudioSet. A teacher trained on those weak labels, plus the ontology,")
    print("restores the missing ones; the truth is in train-complete.csv.")
    run("synthesize", str(folder), "--clips", "64", "--seconds", "2", "--hierarchy", "--missing-labels", "0.3")
    run("train", "--arch", "panns-cnn6", "--train", str(folder / "train.csv"), "--valid", str(folder / "valid.csv"),
        "--labels", str(folder / "labels.csv"), "--out", str(folder / "teacher"), "--set", "data.clip_seconds=2",
        "--set", "data.batch_size=8", "--set", "run.epochs=8")
    enhanced = folder / "train-enhanced.csv"
    run("enhance-labels", str(folder / "train.csv"), "--teacher", str(folder / "teacher" / "best.pt"),
        "--ontology", str(folder / "ontology.csv"), "--threshold", "p10", "--out", str(enhanced),
        "--store-teacher-logits", str(folder / "teacher-logits.npz"))
    weak, truth, after = (_labels(folder / name) for name in ("train.csv", "train-complete.csv", enhanced.name))
    missing = sum(len(truth[i] - weak[i]) for i in truth)
    added = sum(len(after[i] - weak[i]) for i in truth)
    right = sum(len((after[i] - weak[i]) & truth[i]) for i in truth)
    print(f"\nAgainst the truth: {missing} labels were missing; enhancement added {added}, of which {right} are "
          f"correct.")


def _labels(path: Path) -> dict[str, set[str]]:
    import csv

    with open(path, newline="") as handle:
        return {row["id"]: set(filter(None, row["labels"].split(","))) for row in csv.DictReader(handle)}


def long_recording(data: Path, folder: Path) -> tuple[Path, Path]:
    """Join the validation clips into one recording and write its true events, shifted to recording time."""
    import csv

    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    with open(data / "valid.csv", newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    with open(data / "events.csv", newline="") as handle:
        events = [row for row in csv.DictReader(handle) if row["id"] in ids]
    waves, offsets, start = [], {}, 0.0
    for clip_id in ids:
        wave, rate = sf.read(data / "audio" / f"{clip_id}.wav", dtype="float32")
        waves.append(wave)
        offsets[clip_id] = start
        start += len(wave) / rate
    recording = folder / f"{start:.0f}-second-recording.wav"
    sf.write(recording, np.concatenate(waves), rate)
    truth = folder / "true-events.csv"
    with open(truth, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "onset", "offset"])
        for row in events:
            shift = offsets[row["id"]]
            writer.writerow([row["label"], round(float(row["onset"]) + shift, 3),
                             round(float(row["offset"]) + shift, 3)])
    return recording, truth


if __name__ == "__main__":
    main()
