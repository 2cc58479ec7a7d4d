"""Real-data ensembles on ESC-50 from ../shared/data, under the honest protocol of bench_esc50.py: train on folds
1-2, build and choose on fold 3, score fold 4 once per ensemble. Fold 4 decides nothing.

Stage `train`: two fine-tuning runs of the real EfficientAT mn04_as checkpoint (seeds 0 and 1), with exactly the
settings of bench_esc50.py's `finetune` run (seed 0 is that run), each keeping its epoch checkpoints
(run.save_every_epoch=true). Stage `ensembles`: what `tagger ensemble` makes of them (weights and greedy choices
made on fold 3), each scored once on fold 4, and the inference cost of each option (evaluate over fold 4, seconds
per clip, ratio to one model, same run):

  single      the last epoch of seed 0, and the epoch fold 3 chose (best.pt)
  wa          weight average of seed 0's epochs >= 10, without and with BatchNorm re-estimation on folds 1-2
  wa-late     weight average of seed 0's epochs >= 13 (a window nearer the end of the learning-rate ramp)
  cum         prediction ensemble of seed 0's epochs >= 10 (AST/PSLA's single-run checkpoint ensemble)
  seeds       prediction ensemble of the two seeds' last epochs
  seeds-wa    prediction ensemble of the two seeds' weight averages
  greedy      greedy forward selection over every seed's epochs >= 10, selected on fold 3

The prediction ensembles are the teachers of bench_distill.py.

    python benchmarks/bench_ensemble.py --out /tmp/ens-bench [--stages train ensembles] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_esc50 import ESC50, MN04, RUNS, SHARED, TEST_FOLDS, TRAIN_FOLDS, VALID_FOLDS, start, test_once

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1)
EPOCHS = ["run.save_every_epoch=true"]  # after RUNS' own overrides
WA_FROM = 10
LATE_FROM = 13


def train(out: Path) -> list[dict]:
    """The three runs (resumed if a previous call was interrupted)."""
    from tagger.labels import LabelSet
    from tagger.training import trainer
    from tagger.training.config import build_config
    from tagger.weights.importing import import_checkpoint

    recipe, arch, _, overrides = RUNS["finetune"]
    imported = out / "mn04_as.pt"
    if not imported.exists():
        import_checkpoint("efficientat", MN04, imported,
                          labels=LabelSet.from_csv(SHARED / "audioset" / "class_labels_indices.csv"))
    rows = []
    for seed in SEEDS:
        run_dir = out / f"seed{seed}"
        started = time.perf_counter()
        if (run_dir / "resume.pt").exists():
            result = trainer.resume(run_dir, show_progress=False)
        else:
            config = build_config(recipe, [*overrides, *EPOCHS, f"run.seed={seed}",
                                           f"model.init=checkpoint:{imported}"], arch)
            result = trainer.train(config, trainer.data_spec(ESC50, TRAIN_FOLDS),
                                   trainer.data_spec(ESC50, VALID_FOLDS),
                                   run_dir, show_progress=False)
        rows.append({"seed": seed, "best": result.best, "wall_s": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def ensembles(out: Path) -> dict:
    from tagger.ensemble.run import EnsembleSettings, run_ensemble

    def build(name: str, paths: list[Path], **settings) -> dict:
        target = out / "ensembles" / f"{name}.pt"
        started = time.perf_counter()
        report = run_ensemble(paths, EnsembleSettings(out=target, valid=ESC50, valid_folds=VALID_FOLDS,
                                                      force=True, **settings))
        row = {"name": name, "file": str(target), "build_s": round(time.perf_counter() - started, 1),
               **{k: v for k, v in report.to_dict().items() if k != "members"}, **test_once(target),
               "members": [{"source": m.source, "selected": m.selected, "weight": round(m.weight, 4),
                           "value": m.value} for m in report.members]}
        print(json.dumps({k: row[k] for k in ("name", "ensemble", "test_accuracy", "test_mAP")}), flush=True)
        return row

    def epochs(seed: int, first: int = 1) -> list[Path]:
        return sorted(p for p in (out / f"seed{seed}").glob("epoch_*.pt") if int(p.stem[-3:]) >= first)

    window = f"epochs>={WA_FROM}"
    results = [
        build("single-last", [out / "seed0" / "last.pt"], mode="predictions"),
        build("single-best", [out / "seed0" / "best.pt"], mode="predictions"),
        build("wa", epochs(0), mode="weights", select=window),
        build("wa-bn", epochs(0), mode="weights", select=window, bn_recalibrate=ESC50, bn_folds=TRAIN_FOLDS,
              batch_size=32),
        build("wa-late", epochs(0), mode="weights", select=f"epochs>={LATE_FROM}"),
        build("cum", epochs(0), mode="predictions", select=window),
    ]
    for seed in SEEDS[1:]:
        results.append(build(f"wa-seed{seed}", epochs(seed), mode="weights", select=window))
    results += [
        build("seeds", [out / f"seed{s}" / "last.pt" for s in SEEDS], mode="predictions"),
        build("seeds-wa", [out / "ensembles" / f"wa{'' if s == 0 else f'-seed{s}'}.pt" for s in SEEDS],
              mode="predictions"),
        build("greedy", [p for s in SEEDS for p in epochs(s, WA_FROM)], mode="predictions", select="greedy"),
    ]
    return {"results": results, "inference": inference_cost(out, results)}


def inference_cost(out: Path, results: list[dict], repeats: int = 2) -> list[dict]:
    """evaluate() over fold 4 for one model, a weight average and the prediction ensembles; best of `repeats`."""
    from tagger.evaluation.evaluate import evaluate
    from tagger.inference.runtime import Scorer

    rows = []
    for result in results:
        if result["name"] in ("single-best", "wa-seed1", "wa-seed2"):
            continue
        seconds = []
        for _ in range(repeats):
            tagger = Scorer.load(result["file"], device="cpu")
            started = time.perf_counter()
            scored = evaluate(tagger, ESC50, folds=TEST_FOLDS, batch_size=8)
            seconds.append(time.perf_counter() - started)
        members = sum(m["selected"] for m in result["members"]) if result["mode"] == "predictions" else 1
        rows.append({"name": result["name"], "members": members, "accuracy": scored.metrics["accuracy"],
                     "s_per_clip": min(seconds) / scored.metrics["clips"]})
        print(json.dumps(rows[-1]), flush=True)
    single = next(r["s_per_clip"] for r in rows if r["name"] == "single-last")
    for row in rows:
        row["cost_vs_single"] = round(row["s_per_clip"] / single, 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stages", nargs="*", default=["train", "ensembles"], choices=["train", "ensembles"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = start(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if "train" in args.stages:
        results["train"] = train(args.out)
    if "ensembles" in args.stages:
        results.update(ensembles(args.out))
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
