"""Ensemble distillation on ESC-50 from ../shared/data (docs/ced.md), under bench_esc50.py's honest protocol: train
on folds 1-2, choose on fold 3, score fold 4 once.

It starts from bench_ensemble.py's output folder (--ensembles), whose prediction ensembles of fine-tuned mn04 runs
are the candidate teachers:

  teacher   the candidate with the best fold-3 accuracy (fold 4 plays no part in the choice)
  teach     `tagger teach` of that teacher over folds 1-2: --crops draws per clip (5 s ESC-50 clips and 5 s crops,
            so the draws differ in their gain, +-12 dB as the fine-tuning recipe), top --top-k logits; timed
  students  each student trained with the same settings and seed: (a) `labels` only, (b) `kd`: the stored
            teacher targets with the KD loss alone (loss.kd_lambda=0, as CED trains), and optionally `mixed`: half
            label loss, half KD (loss.kd_lambda=0.5); the epoch is chosen on fold 3 and fold 4 scored once
              ced-tiny  from random weights (STUDENTS below: the settings fitted to a 2-core CPU)
              mn04      the official AudioSet mn04_as, fine-tuned with bench_esc50.py's settings; its (a) is
                        bench_ensemble.py's seed-0 run, which has exactly those settings, so it is read, not rerun

    python benchmarks/bench_distill.py --ensembles /tmp/ens-bench --out /tmp/distill-bench \
        [--stages teacher teach students] [--students ced-tiny mn04] [--variants labels kd mixed] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_esc50 import ESC50, RUNS, TRAIN_FOLDS, VALID_FOLDS, start, test_once

CANDIDATES = ("seeds", "seeds-wa", "greedy")  # bench_ensemble.py's prediction ensembles of several runs
CROPS, TOP_K, GAIN_DB, CLIP_SECONDS = 8, 20, 12, 5.0

# Student settings after the recipe: (recipe, arch, init, overrides). ced-tiny: a ViT from scratch, so AdamW with
# weight decay, a warmup and a cosine decay, spectrogram mixup and SpecAugment; 40 epochs fit the 2-core budget.
STUDENTS = {
    "ced-tiny": ("esc50-efficientat", "ced-tiny", "", [
        "data.batch_size=32", "data.num_workers=1", "optim.name=adamw", "optim.lr=1e-3", "optim.weight_decay=0.05",
        "schedule.kind=cosine", "schedule.warmup_epochs=4", "schedule.min_lr_ratio=0.01", "run.epochs=40",
        "augment.freqm=16", "augment.timem=48",
    ]),
    "mn04": (RUNS["finetune"][0], RUNS["finetune"][1], "checkpoint", RUNS["finetune"][3]),
}
VARIANTS = {"labels": None, "kd": "loss.kd_lambda=0", "mixed": "loss.kd_lambda=0.5"}


def choose_teacher(ensembles: Path) -> dict:
    """The candidate ensemble with the best fold-3 accuracy, and every candidate's figures."""
    results = json.loads((ensembles / "results.json").read_text())["results"]
    rows = [{k: r[k] for k in ("name", "file", "ensemble", "test_accuracy", "test_mAP")} |
            {"members": sum(m["selected"] for m in r["members"])} for r in results if r["name"] in CANDIDATES]
    if not rows:
        raise SystemExit(f"{ensembles}/results.json has none of {CANDIDATES}: run bench_ensemble.py first")
    chosen = max(rows, key=lambda r: r["ensemble"])
    return {"chosen": chosen["name"], "file": chosen["file"], "candidates": rows}


def teach_targets(teacher: str, out: Path) -> dict:
    from tagger.data.clips import open_clips
    from tagger.training.teach import teach

    started = time.perf_counter()
    result = teach(teacher, open_clips(ESC50, folds=TRAIN_FOLDS), out / "targets", crops=CROPS, k=TOP_K, seed=0,
                   clip_seconds=CLIP_SECONDS, gain_db=GAIN_DB, batch_size=32, workers=1, device="cpu")
    size = sum(f.stat().st_size for f in (out / "targets").iterdir())
    return {"clips": result.total_clips, "crops": CROPS, "top_k": TOP_K, "gain_db": GAIN_DB,
            "teach_s": round(time.perf_counter() - started, 1), "complete": result.complete, "bytes": size}


def train_student(name: str, variant: str, out: Path, ensembles: Path) -> dict:
    from tagger.training import trainer
    from tagger.training.config import build_config

    recipe, arch, init, overrides = STUDENTS[name]
    run_dir = out / f"{name}-{variant}"
    if init == "checkpoint":
        overrides = [*overrides, f"model.init=checkpoint:{ensembles / 'mn04_as.pt'}"]
        if variant == "labels":  # bench_ensemble.py's seed-0 run has exactly these settings
            run_dir = ensembles / "seed0"
    if VARIANTS[variant]:
        overrides = [*overrides, VARIANTS[variant], f"loss.teacher_targets={out / 'targets'}"]
    started = time.perf_counter()
    config = build_config(recipe, overrides, arch)
    finished = (run_dir / "metrics.csv").is_file() and len(trainer.read_metrics(run_dir)) >= config.run.epochs
    if not finished and (run_dir / "resume.pt").exists():
        trainer.resume(run_dir, show_progress=False)
    elif not finished:
        trainer.train(config, trainer.data_spec(ESC50, TRAIN_FOLDS), trainer.data_spec(ESC50, VALID_FOLDS),
                      run_dir, show_progress=False)
    rows = trainer.read_metrics(run_dir)
    accuracies = [float(row["accuracy"]) for row in rows]
    result = {"student": name, "variant": variant, "run": str(run_dir), "overrides": overrides,
              "valid_accuracy_per_epoch": accuracies, "chosen_epoch": accuracies.index(max(accuracies)) + 1,
              "valid_accuracy": max(accuracies), **test_once(run_dir / "best.pt"),
              "train_s": float(rows[-1]["elapsed_s"]),  # the run's own clock, summed over resumes
              "wall_s_this_call": round(time.perf_counter() - started, 1)}
    print(json.dumps({k: v for k, v in result.items() if k not in ("overrides", "valid_accuracy_per_epoch")}),
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ensembles", type=Path, required=True, help="bench_ensemble.py's --out")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stages", nargs="*", default=["teacher", "teach", "students"],
                        choices=["teacher", "teach", "students"])
    parser.add_argument("--students", nargs="*", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--variants", nargs="*", default=["labels", "kd"], choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = {**(json.loads(path.read_text()) if path.exists() else {}), **start(args.threads)}
    if "teacher" in args.stages:
        results["teacher"] = choose_teacher(args.ensembles)
        print(json.dumps(results["teacher"]), flush=True)
    if "teach" in args.stages:
        results["teach"] = teach_targets(results["teacher"]["file"], args.out)
        print(json.dumps(results["teach"]), flush=True)
    if "students" in args.stages:
        students = results.setdefault("students", {})
        for name in args.students:
            for variant in args.variants:
                students[f"{name}-{variant}"] = train_student(name, variant, args.out, args.ensembles)
                path.write_text(json.dumps(results, indent=1))
    path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
