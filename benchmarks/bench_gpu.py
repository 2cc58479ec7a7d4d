"""GPU training speed: tagger's training step against the official code's, per family, and `tagger train` end to end.

    python benchmarks/bench_gpu.py [--official-root DIR] [--families ...] [--steps N] [--out JSON] [--smoke]

Step table, one row per family's paper model (tagger's family default, `resolve_arch`), each side measured in its
own process (the official repositories' module names clash, and peak memory stays per model):
  tagger      `Trainer._train_batch` itself, on a Trainer built for the model (run.precision=bf16, AdamW, BCE, no
              augmentation, run.channels_last=auto): a pinned batch of `--batch` waveforms of `--seconds` copied to
              the GPU, the front-end on the GPU, forward_features, BCE, backward, AdamW step. Conv families are also
              timed with channels_last off (column "NCHW clips/s"), the measurement behind channels_last=auto.
  official    the official model class, imported from its checkout under --official-root (made by
              benchmarks/prepare_official.sh; no official code is part of tagger), under the same bf16 autocast,
              with BCE (on logits, or on the clamped probabilities of the models that output them) and AdamW as
              PyTorch builds it by default. From waveforms where the official model holds its front-end (PANNs,
              HTS-AT) or its training step runs one (PaSST, EfficientAT: AugmentMelSTFT); from the fbank features
              its data loader computes per clip on the CPU (AST, PSLA: that CPU work is not timed, so the official
              side is flattered there). AST needs timm 0.4.5 (its code asserts it): the wheel in .whl/ast/ is put in
              front of sys.path in that process only.
Timing: `--warmup` steps, then `--steps` steps between CUDA events (torch.cuda.synchronize before and after);
clips/s = batch / seconds per step; ratio = tagger clips/s / official clips/s (goal >= 1.2). Peak memory is
torch.cuda.max_memory_allocated of the process (max RSS on the CPU).

End to end: a synthetic set (tagger.data.synth, `--e2e-clips` clips (256) of `--seconds` s at 32 kHz in a temporary
folder), then the real `python -m tagger train` (bf16, the same batch, `--workers` DataLoader workers, AdamW, an
epoch of --e2e-steps steps drawn with replacement, two epochs); its steady-state clips/s is metrics.csv's clips_per_s of
the second epoch (the first pays for the workers' start). e2e/step = that / the step-only clips/s of the same model
(goal >= 0.9).

Without CUDA it prints one line and exits 0. --smoke runs the same code paths on the CPU at tiny sizes (batch 2,
1 s clips, 1 timed step, the smallest model of each family where one exists), for tests and for checking the
official adapters without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("ast", "passt", "htsat", "psla", "panns", "efficientat")
CONV_FAMILIES = ("panns", "efficientat", "psla")
# --smoke: the smallest model of each family (the official side builds the same size where it can)
SMOKE_ARCH = {"efficientat": "efficientat-mn01", "panns": "panns-cnn6"}
OFFICIAL_DIRS = {"ast": "ast", "passt": "PaSST", "htsat": "HTS-Audio-Transformer", "psla": "psla",
                 "panns": "audioset_tagging_cnn", "efficientat": "EfficientAT"}
FEATURE_INPUT = {"ast": 1024, "psla": 1056}  # official models fed fbank frames by their data loaders


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def arch_of(family: str, smoke: bool) -> str:
    from tagger.models import resolve_arch

    return (SMOKE_ARCH.get(family) if smoke else None) or resolve_arch(family)


def timed(step: Callable[[], None], warmup: int, steps: int, device) -> float:
    """Seconds per step: `warmup` steps, then `steps` between CUDA events (wall clock on the CPU)."""
    import torch

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / steps
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - begin) / steps


def peak_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def host_batch(batch: int, samples: int, classes: int, pin: bool, seed: int = 0) -> dict:
    """Waveforms of noise and sparse multi-hot targets, pinned as the training DataLoader delivers them on CUDA."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {"wave": 0.1 * torch.randn(batch, samples, generator=gen),
           "target": (torch.rand(batch, classes, generator=gen) < 0.02).float(), "index": torch.arange(batch)}
    return {k: v.pin_memory() for k, v in out.items()} if pin else out


# ------------------------------------------------------------------------------------------ tagger's step


def ours_child(args: argparse.Namespace) -> dict:
    import torch

    from tagger.training import trainer
    from tagger.training.config import build_config

    overrides = [f"data.batch_size={args.batch}", f"data.clip_seconds={args.seconds}", "data.num_workers=0",
                 "run.precision=bf16", "optim.name=adamw", "loss.kind=bce", "task=multilabel", "run.epochs=1",
                 f"run.channels_last={args.channels_last}", f"run.device={args.device}"]
    cfg = build_config(None, overrides, args.arch)
    with tempfile.TemporaryDirectory() as run:
        t = trainer.Trainer(cfg, Path(run) / "run", trainer.data_spec(args.data / "train.csv"),
                            trainer.data_spec(args.data / "valid.csv"), args.data / "labels.csv", show_progress=False)
    device = t.ctx.device
    batch = host_batch(args.batch, int(args.seconds * t.model.sample_rate), len(t.labels), device.type == "cuda")
    t.model.train()
    t.pending = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(lambda: t._train_batch(batch), args.warmup, args.steps, device)
    t._read_losses()  # raises on a non-finite loss: a fast step that learns nothing would not count
    return {"arch": t.model.arch, "step_s": seconds, "clips_per_s": args.batch / seconds, "peak_gib": peak_gib(device),
            "micro_batches": cfg.data.micro_batches, "channels_last": args.channels_last,
            "params_m": sum(p.numel() for p in t.model.parameters()) / 1e6}


# ------------------------------------------------------------------------------------------ official steps


def numpy_core_alias() -> None:
    """HTS-AT imports numpy.core.fromnumeric, which NumPy 2 moved to numpy._core."""
    try:
        import numpy.core.fromnumeric  # noqa: F401
    except ImportError:
        import numpy._core.fromnumeric as moved

        sys.modules["numpy.core.fromnumeric"] = moved


def official_model(family: str, repo: Path, classes: int, arch: str) -> tuple:
    """(net taking the input on the device -> output, front-end or None, output kind "logits"/"probs", note)."""
    from bench_train_step import stubbed  # empty stand-ins for imports the timed code never calls

    sys.path.insert(0, str(repo))
    if family == "panns":
        sys.path.insert(0, str(repo / "pytorch"))
        import models

        name = {"panns-cnn14": "Cnn14", "panns-cnn6": "Cnn6"}[arch]
        net = getattr(models, name)(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50,
                                    fmax=14000, classes_num=classes)
        return net, None, "probs", f"{name}(waveform): torchlibrosa front-end and SpecAugmentation in the model"
    if family == "efficientat":
        with contextlib.chdir(repo):  # helpers/utils.py reads metadata/ relative to the checkout at import
            from models.mn.model import get_model
            from models.preprocess import AugmentMelSTFT
        width = int(arch.split("-mn")[1]) / 10
        net = get_model(num_classes=classes, pretrained_name=None, width_mult=width, head_type="mlp", se_dims="c")
        mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
                             fmin=0, fmax=None, fmin_aug_range=10, fmax_aug_range=2000)
        return net, mel, "logits", f"mn width {width:g} on AugmentMelSTFT(waveform), as its ex_audioset.py"
    if family == "passt":
        from bench_models import stub_ba3l  # PaSST files register sacred configs at import

        stub_ba3l()
        from models.passt import get_model
        from models.preprocess import AugmentMelSTFT

        net = get_model(arch="passt_s_swa_p16_128_ap476", pretrained=False, n_classes=classes, in_channels=1,
                        fstride=10, tstride=10, input_fdim=128, input_tdim=998, u_patchout=0, s_patchout_t=40,
                        s_patchout_f=4)
        mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
                             htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000)
        return net, mel, "logits", "PaSST-S (patchout t40 f4) on AugmentMelSTFT(waveform), as its ex_audioset.py"
    if family == "htsat":
        numpy_core_alias()
        with stubbed("museval"):  # utils.py imports it for functions the model does not use
            import config
            from model.htsat import HTSAT_Swin_Transformer
        net = HTSAT_Swin_Transformer(
            spec_size=config.htsat_spec_size, patch_size=config.htsat_patch_size, in_chans=1, num_classes=classes,
            window_size=config.htsat_window_size, config=config, depths=config.htsat_depth,
            embed_dim=config.htsat_dim, patch_stride=config.htsat_stride, num_heads=config.htsat_num_head)
        return net, None, "probs", "HTSAT_Swin_Transformer(waveform) with its config.py: front-end in the model"
    if family == "psla":
        from src.models.Models import EffNetAttention

        net = EffNetAttention(label_dim=classes, b=2, pretrain=False, head_num=4)
        return net, None, "probs", "EffNetAttention B2 4 heads on the fbank its data loader makes (not timed)"
    if family == "ast":
        folders = (ROOT / ".whl" / "ast", repo.parent.parent / ".whl" / "ast")  # beside the project or the root
        wheels = sorted(w for f in folders for w in glob.glob(str(f / "timm-0.4.5-*.whl")))
        if wheels:
            sys.path.insert(0, wheels[0])  # a pure-Python wheel imports as a zip
        import timm

        if timm.__version__ != "0.4.5":
            raise RuntimeError(f"the official AST needs timm 0.4.5, found {timm.__version__}; put its wheel in "
                               ".whl/ast/")
        sys.path.insert(0, str(repo / "src"))
        with stubbed("wget"):  # imported for pretrained downloads, which are off
            from models.ast_models import ASTModel
        with contextlib.redirect_stdout(sys.stderr):
            net = ASTModel(label_dim=classes, fstride=10, tstride=10, input_fdim=128, input_tdim=1024,
                           imagenet_pretrain=False, audioset_pretrain=False, model_size="base384", verbose=False)
        return net, None, "logits", "ASTModel base384 on the fbank its data loader makes (not timed)"
    raise ValueError(family)


def official_child(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    net, mel, output, note = official_model(args.family, args.official_root / OFFICIAL_DIRS[args.family],
                                            args.classes, args.arch)
    net.to(device).train()
    if mel is not None:
        mel.to(device).train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    rate = 16000 if args.family in FEATURE_INPUT else 32000
    batch = host_batch(args.batch, int(args.seconds * rate), args.classes, device.type == "cuda")
    if args.family in FEATURE_INPUT:  # normalised fbank frames, as the official loader hands them over
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(args.batch, FEATURE_INPUT[args.family], 128, generator=gen)
        batch["wave"] = x.pin_memory() if device.type == "cuda" else x

    def step() -> None:
        x = batch["wave"].to(device, non_blocking=True)
        y = batch["target"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if mel is not None:
                x = mel(x).unsqueeze(1)
            out = net(x)
        out = out["clipwise_output"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out
        if output == "probs":  # BCE on probabilities may not run under autocast
            loss = F.binary_cross_entropy(out.float().clamp(1e-7, 1 - 1e-7), y)
        else:
            loss = F.binary_cross_entropy_with_logits(out.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    losses: list = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, args.warmup, args.steps, device)
    if not all(torch.isfinite(torch.stack(losses)).tolist()):
        raise RuntimeError("non-finite loss in the official step")
    return {"step_s": seconds, "clips_per_s": args.batch / seconds, "peak_gib": peak_gib(device),
            "input": "fbank" if args.family in FEATURE_INPUT else "waveform", "note": note,
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6, "output_shape": list(out_shape(net, mel,
                                                                                                    batch, device))}


def out_shape(net, mel, batch, device) -> tuple:
    """The shape of the official model's clip-level output on two clips: the adapter's own check."""
    import torch

    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        x = batch["wave"][:2].to(device)
        out = net(mel(x).unsqueeze(1) if mel is not None else x)
    out = out["clipwise_output"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out
    return tuple(out.shape)


# ------------------------------------------------------------------------------------------ orchestration


def child(kind: str, args: argparse.Namespace, **extra) -> dict:
    """Run one measurement in a fresh process; {"error": ...} when it fails (the other rows still run)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--data", str(args.data),
               "--batch", str(args.batch), "--seconds", str(args.seconds), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {args.child_timeout} s"}
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def end_to_end(args: argparse.Namespace, arch: str, folder: Path) -> dict:
    """`tagger train` on a synthetic set; steady state = the second epoch's clips_per_s in metrics.csv."""
    from tagger.data.synth import synthesize

    begin = time.perf_counter()
    valid_fraction = max(args.batch, 8) / args.e2e_clips
    data = synthesize(folder / "e2e", clips=args.e2e_clips, seconds=args.seconds, sample_rate=32000,
                      valid_fraction=valid_fraction, seed=1)
    made = time.perf_counter() - begin
    run = folder / "e2e-run"
    sets = [f"data.batch_size={args.batch}", f"data.clip_seconds={args.seconds}", f"data.num_workers={args.workers}",
            "data.sampler=balanced", f"data.epoch_length={args.e2e_steps * args.batch}", "run.precision=bf16",
            "optim.name=adamw", "loss.kind=bce", "task=multilabel", "run.epochs=2", f"run.device={args.device}",
            "run.save_every_steps=100000"]
    command = [sys.executable, "-m", "tagger", "train", "--arch", arch, "--train", str(data["train"]),
               "--valid", str(data["valid"]), "--labels", str(data["labels"]), "--out", str(run)]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    begin = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.child_timeout)
    wall = time.perf_counter() - begin
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).strip().splitlines() if line.strip()]
        return {"arch": arch, "error": lines[-1] if lines else f"exit {done.returncode}"}
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"arch": arch, "clips": args.e2e_clips, "synth_s": made, "wall_s": wall, "workers": args.workers,
            "epoch_clips_per_s": [float(r["clips_per_s"]) for r in rows],
            "clips_per_s": float(rows[-1]["clips_per_s"])}


def table(rows: list[dict], e2e: dict | None) -> str:
    def num(value, digits=1):
        return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"

    lines = [f"{'family':<12}{'model':<22}{'tagger clips/s':>15}{'NCHW clips/s':>13}{'official clips/s':>17}"
             f"{'ratio':>7}{'e2e/step':>9}{'peak GiB t/o':>14}  official input / note"]
    for r in rows:
        ours, official = r["tagger"], r.get("official") or {}
        peak = f"{num(ours.get('peak_gib'))}/{num(official.get('peak_gib'))}"
        note = official.get("error") or official.get("input") or "not run"
        if "error" in ours:
            note = f"tagger: {ours['error']}"
        lines.append(f"{r['family']:<12}{r['arch']:<22}{num(ours.get('clips_per_s')):>15}"
                     f"{num((r.get('nchw') or {}).get('clips_per_s')):>13}{num(official.get('clips_per_s')):>17}"
                     f"{num(r.get('ratio'), 2):>7}{num(r.get('e2e_over_step'), 2):>9}{peak:>14}  {note}")
    if e2e:
        lines.append(f"end to end: tagger train {e2e['arch']}: " + (
            f"{num(e2e['clips_per_s'])} clips/s steady (epochs {', '.join(num(v) for v in e2e['epoch_clips_per_s'])}"
            f"; {e2e['workers']} workers, {e2e['clips']} clips, {num(e2e['wall_s'])} s wall)"
            if "error" not in e2e else f"failed: {e2e['error']}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", type=Path, help="folder of official checkouts (prepare_official.sh)")
    parser.add_argument("--families", nargs="+", choices=FAMILIES)
    parser.add_argument("--steps", type=int, help="timed steps per measurement (20; 1 with --smoke)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (5; 1 with --smoke)")
    parser.add_argument("--batch", type=int, help="clips per step (32; 2 with --smoke)")
    parser.add_argument("--seconds", type=float, help="clip length (10; 1 with --smoke)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the end-to-end run")
    parser.add_argument("--e2e-arch", default="efficientat", help="model of the end-to-end run (family or name)")
    parser.add_argument("--e2e-clips", type=int, help="synthetic clips (256; 16 with --smoke)")
    parser.add_argument("--e2e-steps", type=int, help="steps per end-to-end epoch (150; 2 with --smoke)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end run")
    parser.add_argument("--sides", nargs="+", default=["tagger", "official"], choices=["tagger", "official"])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the code paths")
    parser.add_argument("--child-timeout", type=float, default=150, help="seconds per measurement process")
    parser.add_argument("--child", choices=["tagger", "official"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--classes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        sys.path.insert(0, str(ROOT))
        result = ours_child(args) if args.child == "tagger" else official_child(args)
        print(json.dumps(result))
        return 0

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print(f"bench_gpu: no CUDA device (torch {torch.__version__}); nothing measured. Run it on a CUDA machine "
              "(benchmarks/gpu_check.sh), or with --smoke to check the code paths on the CPU.")
        return 0
    small = args.smoke
    args.steps = args.steps or (1 if small else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if small else 5)
    args.batch = args.batch or (2 if small else 32)
    args.seconds = args.seconds or (1.0 if small else 10.0)
    args.e2e_clips = args.e2e_clips or (16 if small else 256)
    args.e2e_steps = args.e2e_steps or (2 if small else 150)
    args.device = "cpu" if small else "cuda"
    if small:
        args.workers = min(args.workers, 2)
    families = args.families or (["efficientat"] if small else list(FAMILIES))
    if args.official_root and not args.official_root.is_dir():
        log(f"bench_gpu: --official-root {args.official_root} is not a folder; run benchmarks/prepare_official.sh")
        return 2

    from tagger.data.synth import synthesize

    results: dict = {"device": torch.cuda.get_device_name() if not small else "cpu (smoke)",
                     "torch": torch.__version__, "batch": args.batch, "seconds": args.seconds, "steps": args.steps,
                     "warmup": args.warmup, "precision": "bf16", "families": []}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as name:
        folder = Path(name)
        # the Trainer needs a data set to be built; the timed batches are made in memory
        paths = synthesize(folder / "tiny", clips=max(4 * args.batch, 16), seconds=1.0, sample_rate=32000,
                           valid_fraction=0.25, seed=0)
        args.data = paths["train"].parent
        classes = sum(1 for _ in open(paths["labels"])) - 1
        e2e_arch = arch_of(args.e2e_arch, small) if args.e2e_arch in FAMILIES else args.e2e_arch
        want_e2e = not args.no_e2e and "tagger" in args.sides
        # the end-to-end run's family first, and the run right after it: a cut-short job still has both
        families.sort(key=lambda f: arch_of(f, small) != e2e_arch)
        e2e = None
        for family in families:
            arch = arch_of(family, small)
            row: dict = {"family": family, "arch": arch}
            if "tagger" in args.sides:
                log(f"[{family}] tagger step, {arch} ...")
                row["tagger"] = child("tagger", args, arch=arch, channels_last="auto")
                if family in CONV_FAMILIES:
                    row["nchw"] = child("tagger", args, arch=arch, channels_last="off")
            else:
                row["tagger"] = {}
            if "official" in args.sides and args.official_root:
                log(f"[{family}] official step ...")
                row["official"] = child("official", args, arch=arch, family=family, classes=classes,
                                        official_root=args.official_root)
            ours, official = row["tagger"].get("clips_per_s"), (row.get("official") or {}).get("clips_per_s")
            row["ratio"] = ours / official if ours and official else None
            log(f"[{family}] {json.dumps(row)}")
            results["families"].append(row)
            if want_e2e and arch == e2e_arch:
                e2e = run_end_to_end(args, arch, folder, ours, results)
            save(args.out, results)  # after every row: a run cut short keeps what it measured
        if want_e2e and e2e is None:
            e2e = run_end_to_end(args, e2e_arch, folder, None, results)
            save(args.out, results)
    print(table(results["families"], e2e), flush=True)
    return 0


def run_end_to_end(args: argparse.Namespace, arch: str, folder: Path, step: float | None, results: dict) -> dict:
    log(f"end to end: tagger train {arch} ...")
    e2e = end_to_end(args, arch, folder)
    if step is None and "error" not in e2e:
        step = child("tagger", args, arch=arch, channels_last="auto").get("clips_per_s")
    e2e["step_clips_per_s"] = step
    e2e["e2e_over_step"] = e2e["clips_per_s"] / step if step and "clips_per_s" in e2e else None
    for row in results["families"]:
        if row["arch"] == arch:
            row["e2e_over_step"] = e2e["e2e_over_step"]
    log(f"end to end: {json.dumps(e2e)}")
    results["end_to_end"] = e2e
    return e2e


def save(path: Path | None, results: dict) -> None:
    if path is not None:
        from tagger.fileio import atomic_write_json

        atomic_write_json(path, results)


if __name__ == "__main__":
    sys.exit(main())
