"""`make demo`: the whole pipeline that exists so far, run through the real CLI on a synthetic set.

Each step prints the command it runs, so a new user can copy them. Three splits keep the figures honest:
synthetic/train.csv fits the models, synthetic/valid.csv chooses best.pt, the epochs to average and the ensemble
members, and synthetic-test/test.csv (clips drawn with another seed) is only ever used for the final figures.
"""

from __future__ import annotations

import csv
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
    data, test_set = OUT / "synthetic", OUT / "synthetic-test"
    labels = str(data / "labels.csv")
    print("Two synthetic sets of the same six classes: synthetic/ (seed 0) to train on (train.csv) and to choose")
    print("checkpoints, epochs and ensemble members (valid.csv); synthetic-test/ (seed 1) held out for the final")
    print("figures only.")
    run("synthesize", str(data), "--clips", "48", "--seconds", "5", "--sample-rate", "32000")
    run("synthesize", str(test_set), "--clips", "48", "--seconds", "5", "--sample-rate", "32000", "--seed", "1")
    test = held_out(data, test_set)
    print(f"\n{test}: all {len(_labels(test))} clips of synthetic-test/ (the synthesizer always splits a set into "
          "train.csv and valid.csv; here both halves are test clips).")
    for frontend in ("kaldi-fbank", "passt-mel", "panns-logmel"):
        run("extract-features", str(data / "train.csv"), "--frontend", frontend, "--labels", labels,
            "--out", str(OUT / f"features-{frontend}"))
    print("\nA rerun resumes: clips already in the store are skipped.")
    run("extract-features", str(data / "train.csv"), "--frontend", "kaldi-fbank", "--labels", labels,
        "--out", str(OUT / "features-kaldi-fbank"), "--format", "json")
    print("\nThe model zoo: every registered convolutional tagger, here the EfficientAT family.")
    run("models", "--family", "efficientat")

    print("\nTraining from cached features: PANNs CNN6 on the stored log-mels, 10 short epochs on random 3 s crops")
    print("of the 5 s clips (validation scores whole clips), with SpecAugment.")
    run("extract-features", str(data / "valid.csv"), "--frontend", "panns-logmel", "--labels", labels,
        "--out", str(OUT / "features-panns-logmel-valid"))
    cnn6 = OUT / "runs" / "cnn6-cached"
    run("train", "--arch", "panns-cnn6", "--train", str(OUT / "features-panns-logmel"),
        "--valid", str(OUT / "features-panns-logmel-valid"), "--out", str(cnn6),
        "--set", "data.clip_seconds=3", "--set", "data.eval_clip_seconds=5", "--set", "data.batch_size=4",
        "--set", "run.epochs=10", "--set", "augment.freqm=8", "--set", "augment.timem=64",
        "--set", "run.save_every_epoch=true")
    print("\nTraining from audio: the EfficientAT MobileNet mn01 with waveform augmentation (gain, roll, waveform")
    print("mixup), on 288 class-balanced draws of 3 s crops per epoch, lr 1e-2 annealed by a cosine. The annealing")
    print("matters: its BatchNorm statistics follow the weights slowly (momentum 0.01), so at a constant lr they")
    print("lag behind the weights and held-out scores stay poor. It trains 9 epochs, then one more by resuming the")
    print("finished run with a raised epoch count.")
    print("\nThe training audio packed into HDF5 shards first, as for AudioSet (FLAC keeps every sample: training on")
    print("the pack equals training on the files, with an index that opens 2 M clips in a fraction of a second).")
    run("pack", str(data / "train.csv"), "--out", str(OUT / "pack-train"))
    mn01 = OUT / "runs" / "mn01-audio"
    run("train", "--arch", "efficientat-mn01", "--train", str(OUT / "pack-train"), "--valid", str(data / "valid.csv"),
        "--labels", labels, "--out", str(mn01), "--set", "data.clip_seconds=3", "--set", "data.eval_clip_seconds=5",
        "--set", "data.batch_size=8", "--set", "data.sampler=balanced", "--set", "data.epoch_length=288",
        "--set", "run.epochs=9", "--set", "optim.lr=1e-2", "--set", "schedule.kind=cosine",
        "--set", "schedule.min_lr_ratio=0.01", "--set", "augment.gain_db=6", "--set", "augment.roll=3200",
        "--set", "augment.wave_mixup=0.5", "--set", "augment.wave_mixup_alpha=2")
    config = mn01 / "config.toml"
    config.write_text(config.read_text().replace("epochs = 9", "epochs = 10"))
    run("train", "--resume", str(mn01))
    print("\nShipped recipes (use with --recipe):")
    run("recipes")

    model = str(cnn6 / "best.pt")
    reports = OUT / "evaluation"
    print("\nEvaluating the CNN6 trained above (its checkpoint carries its front-end, so it reads audio) on the")
    print("held-out test set: headline metrics, a per-class table and plot, and the predictions saved (.npz).")
    run("evaluate", "--model", model, str(test), "--labels", labels, "--per-class", str(reports / "per-class.csv"),
        "--plot", str(reports / "per-class.png"), "--save-predictions", str(reports / "cnn6.npz"))
    print("\nThe same for the EfficientAT MobileNet trained from audio:")
    run("evaluate", "--model", str(mn01 / "best.pt"), str(test), "--labels", labels,
        "--save-predictions", str(reports / "mn01.npz"))
    print("\nExporting the model to ONNX with its front-end inside the graph; onnxruntime runs the file and")
    print("its logits are compared with PyTorch before it is kept.")
    run("export", "--model", model, "--format", "onnx", "--out", str(OUT / "export" / "cnn6.onnx"))
    print("\nTagging files: the trained model on three test clips.")
    clips = [test.parent / row["path"] for row in _rows(test)]
    run("predict", *map(str, clips[-3:]), "--model", model, "--top-k", "3")
    python_demo(model, clips[-1])
    events = events_demo(test, OUT / "recording", model)
    strong = strong_demo(data, labels, mn01 / "best.pt", OUT / "recording")
    teacher, enhanced = enhance_labels_demo(OUT / "weak")
    wa_line, greedy = ensembles_demo(data, test, OUT / "runs", OUT / "ensembles", reports)
    distill_demo(data, test, OUT / "ensembles" / "greedy.pt", OUT / "runs", reports)
    summary(test, reports, {"CNN6 from cached features, best.pt": "cnn6.npz",
                            "CNN6, weights of epochs 6-10 averaged": "cnn6-wa.npz",
                            "EfficientAT mn01 from audio, best.pt": "mn01.npz",
                            f"greedy prediction ensemble ({greedy})": "greedy.npz",
                            "CED-tiny from scratch, taught by the ensemble": "ced-taught.npz"},
           [wa_line, events, strong, teacher, enhanced])
    print(f"\nDone. Audio, feature stores, training runs (metrics.csv, curves.png, best.pt), evaluations, the timeline "
          f"plot, the label-enhancement report, the ensembles and the distilled student are in {OUT}/")


PYTHON_DEMO = """import soundfile as sf, torch, tagger, tagger.hear
t = tagger.load("{model}")
print(t.predict("{clip}", top_k=3))
wave, rate = sf.read("{clip}", dtype="float32")
hear = tagger.hear.load_model("{model}")
audio = torch.from_numpy(wave[None, :rate])  # HEAR: (sounds, samples) at the model's rate
embeddings, ms = tagger.hear.get_timestamp_embeddings(audio, hear)
print("HEAR scene", tuple(tagger.hear.get_scene_embeddings(audio, hear).shape), "timestamp", tuple(embeddings.shape),
      "at", ms[0, :3].tolist(), "... ms")"""


def python_demo(model: str, clip: Path) -> None:
    """The same model from Python: the public API (docs/api.md) and the HEAR API (docs/hear.md)."""
    print("\nThe same from Python, with the public API (docs/api.md) and the HEAR API (docs/hear.md):")
    code = PYTHON_DEMO.format(model=model, clip=clip)
    print("\n".join(("  ... " if line[:1] == " " else "  >>> ") + line for line in code.splitlines()), flush=True)
    subprocess.run([sys.executable, "-c", code], check=True)


def held_out(data: Path, test_set: Path) -> Path:
    """test.csv: every clip of the second synthetic set, after checking that it has the same classes."""
    if (test_set / "labels.csv").read_text() != (data / "labels.csv").read_text():
        raise SystemExit(f"{test_set}/labels.csv differs from {data}/labels.csv: the sets do not share classes")
    rows = _rows(test_set / "train.csv") + _rows(test_set / "valid.csv")
    test = test_set / "test.csv"
    with open(test, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return test


def events_demo(test: Path, folder: Path, model: str) -> str:
    """Detect events in a recording of test clips joined end to end; score them against the clips' true events as
    DCASE does (PSDS, event and segment F1, with sed_scores_eval)."""
    import json

    clips = 24
    recording, truth = long_recording(test, folder, clips)
    print(f"\nA {recording.stem} of {clips} test clips end to end (true events: {truth}). CNN6 scores whole clips,")
    print("so its time axis comes from 1 s windows every 0.25 s, merged across window boundaries; an event starts")
    print("at a score of 0.7 and ends below 0.5 (settings chosen on a recording of validation clips). The events")
    print("go to a JSON file, the scores over time to a heat-map.")
    rule = ["--onset-threshold", "0.7", "--offset-threshold", "0.5", "--min-duration", "1", "--min-gap", "0.5"]
    run("predict", str(recording), "--model", model, "--events", "--window", "1", "--hop", "0.25", *rule,
        "--plot", str(folder / "timeline.png"), "--format", "json", "--output", str(folder / "events.json"))
    print("\nThe same events scored against the true ones as DCASE scores them: PSDS1 and PSDS2 from the scores")
    print("themselves (every threshold), event-based F1 (onset within 0.2 s, offset within 20% of the event) and")
    print("segment-based F1 (1 s segments) of the events above.")
    scores = folder / "sed.json"
    run_to(scores, "evaluate", "--model", model, "--strong", str(truth), "--audio-dir", str(folder), "--window", "1",
           "--hop", "0.25", *rule, "--per-class", str(folder / "sed-per-class.csv"), "--plot",
           str(folder / "psd-roc.png"), "--format", "json")
    (metrics,) = json.loads(scores.read_text())
    line = (f"events (DCASE scoring of {metrics['events']} true events): PSDS1 {metrics['psds1']:.3f}, PSDS2 "
            f"{metrics['psds2']:.3f}, event F1 {metrics['event_f1']:.2f}, segment F1 {metrics['segment_f1']:.2f}")
    print(line)
    print("CNN6 was trained on clip labels only and has no frame-level output, so these events are rough; the")
    print("clip-level figures are in the summary at the end.")
    return line


def strong_demo(data: Path, labels: str, start: Path, folder: Path) -> str:
    """Fine-tune mn01 with the training clips' events (strong labels) and, for comparison, with their clip labels
    only, the same recipe and epochs; score both models' frame output on the recording."""
    import json

    strong = {split: strong_labels(data, split) for split in ("train", "valid")}
    print("\nStrong labels: the synthesizer also wrote when each sound happens (events.csv, here as DCASE TSVs).")
    print("mn01 from above is fine-tuned twice for 4 epochs: with the clip labels only, and with the events too")
    print("(--strong), whose frame targets follow each random crop and roll. EfficientAT's frame output (its")
    print("classifier applied to each 320 ms step) is switched on for both; valid_frame_loss is measured on the")
    print("validation clips' events.")
    common = ["--init", f"checkpoint:{start}", "--arch", "efficientat-mn01", "--valid", str(data / "valid.csv"),
              "--labels", labels, "--valid-strong", str(strong["valid"]), "--set", "data.clip_seconds=3",
              "--set", "data.eval_clip_seconds=5", "--set", "data.batch_size=8", "--set", "run.epochs=4",
              "--set", "optim.lr=2e-3", "--set", "augment.roll=3200", "--set", "run.metric=frame_loss"]
    runs = {"weak": OUT / "runs" / "mn01-weak", "strong": OUT / "runs" / "mn01-strong"}
    run("train", "--train", str(data / "train.csv"), "--out", str(runs["weak"]), *common)
    run("train", "--train", str(data / "train.csv"), "--strong", str(strong["train"]), "--out",
        str(runs["strong"]), *common)
    recording = next(folder.glob("*-recording.wav"))
    print(f"\nBoth models' frame scores on {recording.name}, scored as above (no windows: frame output):")
    found = {}
    for name, run_dir in runs.items():
        out = folder / f"sed-mn01-{name}.json"
        run_to(out, "evaluate", "--model", str(run_dir / "best.pt"), "--strong", str(folder / "true-events.tsv"),
               "--audio-dir", str(folder), "--median-filter", "0.25", "--format", "json")
        (found[name],) = json.loads(out.read_text())
    loss = {name: min(float(row["valid_frame_loss"]) for row in _rows(run_dir / "metrics.csv"))
            for name, run_dir in runs.items()}
    return "strong labels (mn01's frame output; best validation frame loss, then the recording): " + ", ".join(
        f"{name} {loss[name]:.3f}, PSDS1 {m['psds1']:.3f}, event F1 {m['event_f1']:.2f}" for name, m in found.items())


def strong_labels(data: Path, split: str) -> Path:
    """`split`.csv's clips' events (events.csv) as a DCASE TSV, labels by display name."""
    from tagger.data.strong import StrongEvent, StrongLabels, write_dcase_tsv

    names = {row["mid"]: row["display_name"] for row in _rows(data / "labels.csv")}
    ids = [row["id"] for row in _rows(data / f"{split}.csv")]
    events = [StrongEvent(row["id"], float(row["onset"]), float(row["offset"]), names.get(row["label"], row["label"]))
              for row in _rows(data / "events.csv") if row["id"] in ids]
    path = data / f"{split}-strong.tsv"
    write_dcase_tsv(path, StrongLabels(events, empty_files=ids))
    return path


def run_to(path: Path, *args: str) -> None:
    """`run`, with the command's stdout kept in `path` (and shown)."""
    command = [sys.executable, "-m", "tagger", *args]
    print(f"\n$ tagger {shlex.join(args)} > {path}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    path.write_text(done.stdout)
    print(done.stdout, end="")
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)


def ensembles_demo(data: Path, test: Path, runs: Path, folder: Path, reports: Path) -> tuple[str, str]:
    """Weight averaging over the last epochs of one run, then a prediction ensemble of two architectures."""
    labels = str(data / "labels.csv")
    valid = ["--valid", str(data / "valid.csv"), "--labels", labels]
    print("\nEnsembles. First PSLA/AST weight averaging: the parameters of CNN6's epochs 6-10 (kept by")
    print("run.save_every_epoch=true) averaged into one ordinary checkpoint, each epoch scored on validation.")
    epochs = sorted(str(p) for p in (runs / "cnn6-cached").glob("epoch_*.pt"))
    first = 6
    averaged = str(folder / f"cnn6-epochs-{first}-{len(epochs)}.pt")
    run("ensemble", *epochs, "--mode", "weights", "--select", f"epochs>={first}", *valid, "--out", averaged)
    print("\nThe averaged checkpoint against CNN6's best.pt on the test set:")
    run("evaluate", "--model", averaged, str(test), "--labels", labels, "--save-predictions",
        str(reports / "cnn6-wa.npz"))
    wa_line = weight_averaging_verdict(reports / "cnn6.npz", reports / "cnn6-wa.npz", runs / "cnn6-cached", first)
    print(wa_line)
    print("\nThen a prediction ensemble chosen by greedy forward selection among every CNN6 epoch and the")
    print("EfficientAT MobileNet trained from audio (another architecture): a member joins only if the validation")
    print("metric rises, so on validation the ensemble never scores below its best member (the test set may")
    print("disagree). Epochs 6-10 are not scored again: their validation scores were kept in valid-scores/.")
    ensemble = str(folder / "greedy.pt")
    report = folder / "greedy.json"
    run("ensemble", *epochs, str(runs / "mn01-audio" / "best.pt"), "--select", "greedy", *valid, "--out", ensemble,
        "--report", str(report))
    print("\nAn ensemble file is used like any checkpoint, here on the test set:")
    run("evaluate", "--model", ensemble, str(test), "--labels", labels, "--save-predictions",
        str(reports / "greedy.npz"))
    clips = [test.parent / row["path"] for row in _rows(test)]
    run("predict", *map(str, clips[-2:]), "--model", ensemble, "--top-k", "3")
    return wa_line, _members(report, runs)


def distill_demo(data: Path, test: Path, teacher: Path, runs: Path, reports: Path) -> None:
    """CED's recipe on the demo's ensemble: `teach` stores its outputs for seeded crops of the training clips, and a
    ced-tiny from random weights learns from them alone (docs/ced.md compares it with labels on real data)."""
    labels = str(data / "labels.csv")
    targets = OUT / "teacher-targets"
    print("\nDistilling the ensemble into a small transformer (CED): the ensemble scores 4 seeded draws (a 3 s crop")
    print("and a gain) of every training clip, and its top logits are stored with each draw. A ced-tiny from")
    print("random weights then trains on exactly those inputs and targets, with no labels (loss.kd_lambda=0).")
    run("teach", str(teacher), str(data / "train.csv"), "--out", str(targets), "--crops", "4", "--top-k", "6",
        "--clip-seconds", "3", "--gain-db", "6", "--workers", "0")
    student = runs / "ced-tiny-taught"
    run("train", "--arch", "ced-tiny", "--train", str(data / "train.csv"), "--valid", str(data / "valid.csv"),
        "--labels", labels, "--teacher-targets", str(targets), "--out", str(student), "--set", "loss.kd_lambda=0",
        "--set", "data.clip_seconds=3", "--set", "data.eval_clip_seconds=5", "--set", "data.batch_size=8",
        "--set", "run.epochs=12", "--set", "optim.name=adamw", "--set", "optim.lr=1e-3",
        "--set", "schedule.kind=cosine", "--set", "schedule.warmup_epochs=1")
    run("evaluate", "--model", str(student / "best.pt"), str(test), "--labels", labels, "--save-predictions",
        str(reports / "ced-taught.npz"))


def weight_averaging_verdict(best: Path, averaged: Path, run_dir: Path, first_epoch: int) -> str:
    """WA minus best.pt in test mAP, with a paired bootstrap SE over clips, and why when there is no clear gain."""
    import numpy as np

    from tagger.evaluation.metrics import average_precision, nanmean

    targets, best_scores = _predictions(best)
    _, wa_scores = _predictions(averaged)
    gain = nanmean(average_precision(targets, wa_scores)) - nanmean(average_precision(targets, best_scores))
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(500):
        pick = rng.integers(0, len(targets), len(targets))
        draws.append(nanmean(average_precision(targets[pick], wa_scores[pick]))
                     - nanmean(average_precision(targets[pick], best_scores[pick])))
    se = float(np.std(draws))
    with open(run_dir / "metrics.csv", newline="") as handle:
        history = {int(float(r["epoch"])): (float(r["mAP"]), float(r["train_loss"])) for r in csv.DictReader(handle)}
    epochs = [epoch for epoch in history if epoch >= first_epoch]
    first, last = epochs[0], epochs[-1]
    best_epoch = max(history, key=lambda epoch: history[epoch][0])
    head = (f"weight averaging (epochs {first}-{last}) vs best.pt (epoch {best_epoch}) on test: mAP {gain:+.3f} "
            f"(paired bootstrap SE {se:.3f} over {len(targets)} clips)")
    if gain > 2 * se:
        return f"{head}: a gain."
    verdict = "worse" if gain < -2 * se else "no clear gain"
    (map_first, loss_first), (map_last, loss_last) = history[first], history[last]
    if map_last - map_first > 0.05 or loss_last < 0.9 * loss_first:
        why = (f"the run was still improving over epochs {first}-{last} (validation mAP {map_first:.2f} -> "
               f"{map_last:.2f}, training loss {loss_first:.2f} -> {loss_last:.2f}), so the average mixes in weaker "
               f"earlier weights; averaging pays off once a run has levelled off, which {last} short epochs do "
               "not reach")
    else:
        values = [history[epoch][0] for epoch in epochs]
        why = (f"epochs {first}-{last} had levelled off (validation mAP {min(values):.2f}-{max(values):.2f}, training "
               f"loss {loss_first:.2f} -> {loss_last:.2f}) yet their average is no better: so few epochs of one short "
               "run leave the averaged weights little noise to smooth")
    return f"{head}: {verdict}, because {why}."


def enhance_labels_demo(folder: Path) -> tuple[str, str]:
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
    enhanced_line = (f"label enhancement against the truth: {missing} labels were missing; it added {added}, of "
                     f"which {right} are correct")
    print(f"\n{enhanced_line}.")
    with open(folder / "teacher" / "metrics.csv", newline="") as handle:
        best = max(csv.DictReader(handle), key=lambda row: float(row["mAP"]))
    valid = folder / "valid.csv"
    chance = chance_map(_targets(valid, folder / "labels.csv"))
    teacher_line = (f"teacher (CNN6 on the weak labels), on {valid} (it chose its best.pt there, so a little "
                    f"optimistic): mAP {float(best['mAP']):.2f} (chance ~{chance:.2f}), mAUC {float(best['mAUC']):.2f}"
                    " (chance 0.50)")
    return teacher_line, enhanced_line


def summary(test: Path, reports: Path, models: dict[str, str], lines: list[str]) -> None:
    """The final figures, all computed from the test-set predictions saved above, with chance beside them."""
    from tagger.evaluation.metrics import average_precision, nanmean, roc_auc

    targets, _ = _predictions(reports / next(iter(models.values())))
    print(f"\nFinal figures on the held-out test set ({test}: {len(targets)} clips never trained on or used to choose "
          "anything).")
    print(f"Chance: mAP ~{chance_map(targets):.2f} (random scores; about the share of positive labels, "
          f"{targets.mean():.2f}), mAUC 0.50.")
    width = max(map(len, models))
    print(f"  {'model':<{width}}  mAP    mAUC")
    for name, file in models.items():
        targets, scores = _predictions(reports / file)
        ap, auc = nanmean(average_precision(targets, scores)), nanmean(roc_auc(targets, scores))
        print(f"  {name:<{width}}  {ap:.3f}  {auc:.3f}")
    for line in lines:
        print(line)


def chance_map(targets) -> float:
    """The mAP of random scores on these labels, averaged over 200 draws."""
    import numpy as np

    from tagger.evaluation.metrics import average_precision, nanmean

    rng = np.random.default_rng(0)
    return float(np.mean([nanmean(average_precision(targets, rng.random(targets.shape))) for _ in range(200)]))


def _predictions(path: Path):
    import numpy as np

    with np.load(path) as saved:
        return saved["targets"] > 0.5, saved["probabilities"]


def _members(report: Path, runs: Path) -> str:
    """The members greedy selection kept, e.g. 'cnn6-cached/epoch_007.pt + mn01-audio/best.pt'."""
    import json

    members = json.loads(report.read_text())["members"]
    return " + ".join(str(Path(m["source"]).relative_to(runs)) for m in members if m["selected"])


def _targets(manifest: Path, labels: Path):
    import numpy as np

    ids = _label_ids(labels)
    order = list(dict.fromkeys(ids.values()))
    rows = _labels(manifest)
    targets = np.zeros((len(rows), len(order)), dtype=bool)
    for k, names in enumerate(rows.values()):
        for name in names:
            targets[k, order.index(ids[name])] = True
    return targets


def _label_ids(path: Path) -> dict[str, str]:
    """Display names and ids of a labels.csv, each mapped to the id."""
    ids = {}
    for row in _rows(path):
        ids[row["display_name"]] = ids[row["mid"]] = row["mid"]
    return ids


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _labels(path: Path) -> dict[str, set[str]]:
    return {row["id"]: set(filter(None, row["labels"].split(","))) for row in _rows(path)}


def long_recording(manifest: Path, folder: Path, clips: int) -> tuple[Path, Path]:
    """Join the first `clips` clips of a manifest into one recording; write its true events in recording time."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rows = _rows(manifest)[:clips]
    ids = [row["id"] for row in rows]
    events = [row for row in _rows(manifest.parent / "events.csv") if row["id"] in ids]
    waves, offsets, start = [], {}, 0.0
    for row in rows:
        wave, rate = sf.read(manifest.parent / row["path"], dtype="float32")
        waves.append(wave)
        offsets[row["id"]] = start
        start += len(wave) / rate
    recording = folder / f"{start:.0f}-second-recording.wav"
    sf.write(recording, np.concatenate(waves), rate)
    from tagger.data.strong import StrongEvent, StrongLabels, write_dcase_tsv

    truth = folder / "true-events.tsv"
    names = {row["mid"]: row["display_name"] for row in _rows(manifest.parent / "labels.csv")}
    write_dcase_tsv(truth, StrongLabels([
        StrongEvent(recording.stem, round(float(row["onset"]) + offsets[row["id"]], 3),
                    round(float(row["offset"]) + offsets[row["id"]], 3), names.get(row["label"], row["label"]))
        for row in events]))
    return recording, truth


if __name__ == "__main__":
    main()
