"""Real-data training check on ESC-50 (folds 1-3 train, fold 4 validation) from ../shared/data.

Two runs, each through the same code path as `tagger train`:
  finetune  — the official EfficientAT mn04_as checkpoint, imported with `tagger import-checkpoint`, fine-tuned
              with the esc50-efficientat recipe (settings shortened for a 2-core CPU, printed below);
  scratch   — the same MobileNet (mn04) from random weights, to show the from-scratch path learns (a CNN6
              epoch takes ~4 min here, too long for this budget).
It prints and writes (to --out/results.json) fold-4 accuracy per epoch, the best accuracy, epochs and wall time.

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

# Each run: recipe, arch, init, and the --set overrides that fit it into a 2-core CPU budget.
RUNS = {
    "finetune": ("esc50-efficientat", "efficientat-mn04", "checkpoint", [
        "data.batch_size=32", "optim.lr=2e-4", "run.epochs=25", "schedule.warmup_len=2",
        "schedule.ramp_down_start=2", "schedule.ramp_down_len=23", "data.num_workers=1",
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
    result = trainer.train(config, trainer.data_spec(ESC50, [1, 2, 3]), trainer.data_spec(ESC50, [4]),
                           out / name, show_progress=False)
    wall = time.perf_counter() - started
    rows = trainer.read_metrics(out / name)
    accuracies = [float(row["accuracy"]) for row in rows]
    return {"run": name, "recipe": recipe, "arch": arch, "overrides": overrides, "epochs": result.epochs,
            "best_accuracy": max(accuracies), "final_accuracy": accuracies[-1], "accuracy_per_epoch": accuracies,
            "elapsed_s_per_epoch": [float(row["elapsed_s"]) for row in rows], "wall_s": round(wall, 1)}


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
