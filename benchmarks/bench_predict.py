"""`tagger predict` speed: cold start, batch throughput per family, real-time factor on an hour of audio.

Each table has a reference timed in the same run on the same machine:
- cold start: `tagger predict clip.wav --model mn04.pt` from process start to output, against a bare
  `python -c "import torch"` (the floor any PyTorch CLI pays) and, with --efficientat, the official
  EfficientAT `inference.py` on the same clip and weights.
- throughput: clips/s through `Scorer` (the path predict and evaluate use: front-end, fast CNN path, sigmoid)
  against the plain eager model call, at fp32 and bf16 (autocast), full-size models with random weights.
- real-time factor: `predict_files` streaming a synthetic 1-hour WAV in 10 s windows with a 5 s hop, against
  the official EfficientAT windowed inference (whole file through librosa, one window per forward) with
  --efficientat, else a whole-file load plus window-by-window eager forwards written the same way here.

    python benchmarks/bench_predict.py --model mn04.pt --efficientat ~/src/EfficientAT --tables cold rtf throughput
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagger.inference.runtime import Scorer  # noqa: E402
from tagger.models import create_model  # noqa: E402

FAMILIES = ["efficientat-mn04", "efficientat-mn10", "panns-cnn14", "panns-cnn14-decisionlevel-max",
            "psla-effnet-b2-att4", "htsat-tiny", "ast-base384", "passt-s-p16-s10"]


def _timed(command: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return elapsed


def cold_start(model: Path, clip: Path, repeats: int, efficientat: Path | None) -> list[dict]:
    tagger_cli = [sys.executable, "-m", "tagger", "predict", str(clip), "--model", str(model), "--format", "json"]
    runs = {"tagger predict": (tagger_cli, None), "python -c 'import torch'": ([sys.executable, "-c", "import torch"],
                                                                                None)}
    if efficientat is not None:
        runs["official EfficientAT inference.py"] = (
            [sys.executable, "inference.py", "--model_name", "mn04_as", "--audio_path", str(clip)],
            efficientat)
    for command, cwd in runs.values():  # warm the file cache once
        _timed(command, cwd)
    times = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so drift hits every row alike
        for name, (command, cwd) in runs.items():
            times[name].append(_timed(command, cwd))
    ours = statistics.median(times["tagger predict"])
    return [{"command": name, "median_s": round(statistics.median(t), 3),
             "ratio_to_tagger": round(statistics.median(t) / ours, 2)} for name, t in times.items()]


def throughput(families: list[str], batch: int, seconds: float, repeats: int) -> list[dict]:
    from bench_train_step import median_seconds  # median after one warm-up call

    rows = []
    for name in families:
        torch.manual_seed(0)
        model = create_model(name, num_classes=527).eval()
        wave = np.random.default_rng(0).standard_normal((batch, int(seconds * model.sample_rate)),
                                                       dtype=np.float32) * 0.1
        for precision in ("fp32", "bf16"):
            tagger = Scorer(model, _labels(527), "multilabel", device="cpu", precision=precision)
            tensor = torch.from_numpy(wave)

            def eager(model=model, tensor=tensor, precision=precision):
                context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
                with torch.inference_mode(), context:
                    torch.sigmoid(model(tensor).logits.float())

            if tagger._fast is not None:  # the fast path traces a shape on its second use
                tagger(wave, frames=False)
            ours_s = median_seconds(lambda tagger=tagger, wave=wave: tagger(wave, frames=False), repeats)
            eager_s = median_seconds(eager, repeats)
            rows.append({"model": name, "precision": precision, "batch": batch,
                         "tagger_clips_per_s": round(batch / ours_s, 2), "eager_clips_per_s": round(batch / eager_s, 2),
                         "speedup": round(eager_s / ours_s, 2)})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def real_time_factor(model_path: Path | None, hours: float, batch: int, efficientat: Path | None) -> list[dict]:
    from tagger import audio
    from tagger.inference.predict import PredictOptions, predict_files

    tagger = Scorer.load(model_path, device="cpu") if model_path else Scorer(
        create_model("efficientat-mn04", num_classes=527).eval(), _labels(527), "multilabel", device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hour.wav"
        _write_long(path, hours * 3600, tagger.sample_rate)
        seconds = audio.info(path).duration
        start = time.perf_counter()
        (result,) = predict_files(tagger, [path], PredictOptions(window=10.0, hop=5.0, batch_size=batch))
        ours = time.perf_counter() - start
        rows = [{"pipeline": f"tagger predict_files (streamed, batch {batch})", "audio_s": seconds,
                 "elapsed_s": round(ours, 2), "real_time_factor": round(seconds / ours, 1)}]
        if efficientat is not None:
            reference, name = _official_windowed(efficientat, path), "official EfficientAT windowed_inference"
        else:
            reference, name = _naive_windowed(tagger, path), "whole-file load + one eager forward per window"
        rows.append({"pipeline": name, "audio_s": seconds, "elapsed_s": round(reference, 2),
                     "real_time_factor": round(seconds / reference, 1)})
    return rows


def _official_windowed(repo: Path, path: Path) -> float:
    """The loop of the official `windowed_inference.py` (EATagger.tag_audio_window) on CPU, built from the
    official model and mel modules: at commit a425fdc the script itself fails to import (`get_ensemble_model`
    is missing from models/mn/model.py)."""
    import librosa

    sys.path.insert(0, str(repo))
    cwd = os.getcwd()
    os.chdir(repo)  # the official loader finds resources/ relative to the working folder
    try:
        from helpers.utils import NAME_TO_WIDTH
        from models.mn.model import get_model
        from models.preprocess import AugmentMelSTFT

        model = get_model(width_mult=NAME_TO_WIDTH("mn04_as"), pretrained_name="mn04_as").eval()
        mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320).eval()
        start = time.perf_counter()
        wave, _ = librosa.core.load(str(path), sr=32000, mono=True)
        wave = torch.from_numpy(wave[None, :])
        size, hop = 10 * 32000, 5 * 32000
        count = int(np.ceil((wave.shape[1] - size) / hop)) + 1
        wave = torch.nn.functional.pad(wave, (0, count * hop + size - wave.shape[1]))
        with torch.no_grad():
            for i in range(count):
                preds, _ = model(mel(wave[:, i * hop:i * hop + size]).unsqueeze(0))
                torch.sigmoid(preds.float()).squeeze().numpy()
        return time.perf_counter() - start
    finally:
        os.chdir(cwd)


def _naive_windowed(tagger: Scorer, path: Path) -> float:
    from tagger import audio

    model = tagger.model
    start = time.perf_counter()
    wave = torch.from_numpy(audio.load(path, tagger.sample_rate))
    size, hop = 10 * tagger.sample_rate, 5 * tagger.sample_rate
    with torch.inference_mode():
        for begin in range(0, max(1, wave.numel() - size + hop), hop):
            chunk = torch.nn.functional.pad(wave[begin:begin + size], (0, max(0, size - wave[begin:].numel())))
            torch.sigmoid(model(chunk[None]).logits)
    return time.perf_counter() - start


def _write_long(path: Path, seconds: float, rate: int) -> None:
    """Noise with tones, written in one-minute blocks as 16-bit PCM (an hour is 230 MB at 32 kHz)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as handle:
        for minute in range(int(np.ceil(seconds / 60))):
            n = int(min(60, seconds - minute * 60) * rate)
            t = np.arange(n) / rate
            block = 0.05 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * (200 + 20 * minute) * t)
            handle.write(block.astype(np.float32))


def _labels(count: int):
    from tagger.weights.importing import numbered_labels

    return numbered_labels(count)


def _markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="tagger checkpoint of mn04_as (tagger import-checkpoint)")
    parser.add_argument("--clip", type=Path, help="clip for the cold start (default: a 10 s synthetic WAV)")
    parser.add_argument("--efficientat", type=Path, help="official EfficientAT checkout with resources/mn04 weights")
    parser.add_argument("--tables", nargs="+", default=["cold", "throughput", "rtf"])
    parser.add_argument("--families", nargs="+", default=FAMILIES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs", file=sys.stderr)
    if "cold" in args.tables:
        if args.model is None:
            raise SystemExit("--model mn04.pt is needed for the cold-start table")
        with tempfile.TemporaryDirectory() as folder:
            clip = args.clip or _synthetic_clip(Path(folder) / "clip.wav")
            print(_markdown(cold_start(args.model, clip, args.repeats, args.efficientat)), flush=True)
    if "throughput" in args.tables:
        print(_markdown(throughput(args.families, args.batch, 10.0, args.repeats)), flush=True)
    if "rtf" in args.tables:
        print(_markdown(real_time_factor(args.model, args.hours, args.batch, args.efficientat)), flush=True)


def _synthetic_clip(path: Path) -> Path:
    _write_long(path, 10.0, 32000)
    return path


if __name__ == "__main__":
    main()
