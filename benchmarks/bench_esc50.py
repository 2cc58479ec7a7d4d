"""Real-data training check on ESC-50 from ../shared/data, with an honest protocol: train on folds 1-2, choose
the epoch (best.pt) on fold 3, then score fold 4 once with the chosen checkpoint. Fold 4 decides nothing.

ESC-50's folds keep the clips cut from one recording together, so a whole fold is a validation split that shares
no source with the training clips (a random carve of folds 1-3 would).

Two runs, each through the same code path as `tagger train`:
  finetune  — the official EfficientAT mn04_as checkpoint, imported with `tagger import-checkpoint`, fine-tuned
              with the esc50-efficientat recipe (settings shortened for a 2-core CPU, printed below);
  scratch   — the same MobileNet (mn04) from random weights, to show the from-scratch path learns (a CNN6
              epoch takes ~4 min here, too long for this budget).
It prints and writes (to --out/results.json) the fold-3 (validation) accuracy per epoch, the epoch it chose, the
fold-4 (test) accuracy and mAP of that checkpoint, and the wall time.

    python benchmarks/bench_esc50.py --out /tmp/esc50-bench [--runs finetune scratch] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ESC50 = SHARED / "esc50-folds1-4" / "esc50.csv"
MN04 = SHARED / "pretrained" / "efficientat_mn04_as" / "mn04_as_mAP_432.pt"
AUDIOSET_LABELS = SHARED / "audioset" / "class_labels_indices.csv"
TRAIN_FOLDS, VALID_FOLDS, TEST_FOLDS = [1, 2], [3], [4]

# Each run: recipe, arch, init, and the --set overrides that fit it into a 2-core CPU budget.
RUNS = {
    "finetune": ("esc50-efficientat", "efficientat-mn04", "checkpoint", [
        "data.batch_size=32", "optim.lr=2e-4", "run.epochs=15", "schedule.warmup_len=2",
        "schedule.ramp_down_start=2", "schedule.ramp_down_len=13", "data.num_workers=1",
    ]),
    "scratch": ("esc50-efficientat", "efficientat-mn04", "", [
        "data.batch_size=32", "optim.lr=2e-3", "run.epochs=10", "schedule.warmup_len=2",
        "schedule.ramp_down_start=2", "schedule.ramp_down_len=8", "data.num_workers=1",
    ]),
}


def run(name: str, out: Path) -> dict:
    from tagger.labels import LabelSet
    from tagger.training import trainer
    from tagger.training.config import build_config
    from tagger.weights.importing import import_checkpoint

    recipe, arch, init, overrides = RUNS[name]
    if init == "checkpoint":
        imported = out / "mn04_as.pt"
        if not imported.exists():
            import_checkpoint("efficientat", MN04, imported, labels=LabelSet.from_csv(AUDIOSET_LABELS))
        overrides = [*overrides, f"model.init=checkpoint:{imported}"]
    config = build_config(recipe, overrides, arch)
    started = time.perf_counter()
    result = trainer.train(config, trainer.data_spec(ESC50, TRAIN_FOLDS), trainer.data_spec(ESC50, VALID_FOLDS),
                           out / name, show_progress=False)
    wall = time.perf_counter() - started
    rows = trainer.read_metrics(out / name)
    accuracies = [float(row["accuracy"]) for row in rows]
    test = test_once(out / name / "best.pt")
    return {"run": name, "recipe": recipe, "arch": arch, "overrides": overrides, "epochs": result.epochs,
            "valid_accuracy_per_epoch": accuracies, "chosen_epoch": accuracies.index(max(accuracies)) + 1,
            "valid_accuracy": max(accuracies), **test,
            "elapsed_s_per_epoch": [float(row["elapsed_s"]) for row in rows], "wall_s": round(wall, 1)}


def test_once(checkpoint: Path) -> dict:
    """The test fold scored once, by the checkpoint the validation fold chose."""
    from tagger import api

    result = api.evaluate(checkpoint, ESC50, folds=TEST_FOLDS, clip_seconds=5.0)
    return {"test_accuracy": result.metrics["accuracy"], "test_mAP": result.metrics["mAP"]}


def start(threads: int) -> dict:
    """Common set-up of the ESC-50 benchmarks: check the data, set the threads, import tagger from this
    checkout; the machine record that heads their results."""
    if not ESC50.is_file():
        sys.exit(f"{ESC50} is absent: this benchmark needs ../shared/data")
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    return {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = {**start(args.threads), "runs": []}
    for name in args.runs:
        results["runs"].append(run(name, args.out))
        print(json.dumps(results["runs"][-1]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
