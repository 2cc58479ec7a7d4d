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

    print("\nTraining from cached features: PANNs CNN6 on the stored log-mels, with SpecAugment and mixup.")
    run("extract-features", str(data / "valid.csv"), "--frontend", "panns-logmel", "--labels",
        str(data / "labels.csv"), "--out", str(OUT / "features-panns-logmel-valid"))
    run("train", "--arch", "panns-cnn6", "--train", str(OUT / "features-panns-logmel"),
        "--valid", str(OUT / "features-panns-logmel-valid"), "--out", str(OUT / "runs" / "cnn6-cached"),
        "--set", "data.clip_seconds=5", "--set", "data.batch_size=8", "--set", "run.epochs=4",
        "--set", "augment.spec_mixup=perm", "--set", "augment.freqm=8", "--set", "augment.timem=64")
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
    print(f"\nDone. Audio, feature stores and training runs (metrics.csv, curves.png, best.pt) are in {OUT}/")


if __name__ == "__main__":
    main()
