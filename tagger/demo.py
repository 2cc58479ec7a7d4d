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
    print(f"\nDone. Audio, manifests and feature stores are in {OUT}/")


if __name__ == "__main__":
    main()
