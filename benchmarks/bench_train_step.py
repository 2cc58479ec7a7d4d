"""Training-step benchmarks, one fresh process per measurement (so memory and threads stay isolated).

Three tables, chosen with --tables (all by default):

official  "training step, ours vs official": clips/s of tagger's training step (what `Trainer._train_batch`
          does: front-end under no_grad, the recipe's SpecAugment and spectrogram mixup, forward_features,
          training_loss, backward, the recipe's optimizer) next to the official code's training step on the same
          model, batch and clip length (its model in train mode, its in-model augmentation, mixup, loss and
          optimizer). The official code is not part of tagger: pass your checkouts (--panns, --psla, ...) and make
          their dependencies importable (torchlibrosa, efficientnet_pytorch). Without a checkout, ours is timed alone.
pipeline  "input pipeline vs step": seconds per batch of the training DataLoader over cached features
          (TrainFeatures, 0 and 1 workers) against our step on such a batch, on a small feature store extracted
          from synthetic clips; plus the audio path (TrainWaves: decode, resample, crop, waveform augmentation).
memory    seconds per step (forward + backward + AdamW on model(wave)) and peak RSS of AST, PaSST with and
          without patchout and HTS-AT (the table recorded in docs/benchmarks.md).

Columns of "ours vs official": s/step is the median time of one training step on a batch of `batch` input
clips; "official loader prep" is work the official data loader does per batch that our step does inside the step
(PSLA: Kaldi fbank, padding, SpecAugment and normalisation per clip in AudiosetDataset.__getitem__; 0 for the other
families, whose official steps compute their own front-end); official clips/s = batch / (official step + prep);
"official / ours" = (official step + prep) / our step, above 1 when ours is faster (target >= 1). PANNs mixes
clips two by two (the official loader gives 2B clips for B mixed ones): both sides take `batch` clips and yield
batch/2 mixed ones, and clips/s counts input clips. Waveform mixup, gain and roll run in the data loader on both
sides and are not timed here. AST is timed alone (its official code needs timm 0.4.5).

Columns of "input pipeline vs step" (seconds per batch): the training DataLoader over TrainFeatures (features from
a store made by extract_features with the model's front-end, cropped/padded/normalised as the trainer's
cached_features view) with 0 and 1 worker processes, timed alone (first batch, the worker start-up, left out);
our step on such a batch (no front-end); "step + 1-worker loader", training with both running at once;
"input-bound?" is yes when the 1-worker loader alone is slower than the step. The audio columns time the same
loader over TrainWaves (decode, resample, random crop, the recipe's waveform augmentation), for information.

Clip length: --seconds, or each recipe's data.clip_seconds when omitted (10 s for the AudioSet recipes, 5 s for
esc50-efficientat; the memory table uses 10 s; PSLA and AST pad to their recipe's 1056 / 1024 frames, HTS-AT
stretches any clip to its 1024 frames). The full run (torchlibrosa and efficientnet_pytorch importable):

    PYTHONPATH=~/src/refsite python benchmarks/bench_train_step.py --batch 8 --steps 3 --threads 2 \
        --panns ~/src/audioset_tagging_cnn --psla ~/src/psla --efficientat ~/src/EfficientAT \
        --htsat ~/src/HTS-Audio-Transformer --passt ~/src/PaSST

The memory table alone, as recorded: `python benchmarks/bench_train_step.py --tables memory --seconds 10 --steps 1`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# config -> the recipe whose augmentation, loss and optimizer our step uses (its arch replaced by the config)
RECIPES = {
    "panns-cnn14": "audioset-panns", "panns-cnn6": "audioset-panns", "psla-effnet-b2-att4": "audioset-psla",
    "efficientat-mn10": "esc50-efficientat", "efficientat-mn04": "esc50-efficientat",
    "passt-s-p16-s10": "audioset-passt", "htsat-tiny": "audioset-htsat", "ast-base384": "audioset-ast",
}
PIPELINE_CONFIGS = ["efficientat-mn10", "panns-cnn14", "psla-effnet-b2-att4"]
MEMORY_CONFIGS = {
    "ast-base384": ("ast-base384", {}),
    "passt-patchout-t40-f4": ("passt-s-p16-s10", {"s_patchout_t": 40, "s_patchout_f": 4}),
    "passt-no-patchout": ("passt-s-p16-s10", {"s_patchout_t": 0, "s_patchout_f": 0}),
    "htsat-tiny": ("htsat-tiny", {}),
}
TABLE_CONFIGS = {"official": list(RECIPES), "pipeline": PIPELINE_CONFIGS, "memory": list(MEMORY_CONFIGS)}
NOT_RUN = {"ast": "the official AST needs timm 0.4.5 (it patches that version's internals): ours alone"}
LOADER_BATCHES = 8  # batches timed per DataLoader measurement (after the first, which starts the workers)


# ------------------------------------------------------------------------------------------ common pieces


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call (allocator, optimizer state)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def recipe_config(config: str):
    from tagger.training.config import build_config

    return build_config(RECIPES[config], arch=config)


def num_classes(config: str) -> int:
    return 50 if RECIPES[config].startswith("esc50") else 527


def clip_seconds(args: argparse.Namespace, cfg) -> float:
    return args.seconds if args.seconds is not None else cfg.data.clip_seconds


def random_batch(batch: int, samples: int, classes: int, loss_kind: str) -> tuple:
    """(waveforms, float targets): one-hot rows for a CE recipe, sparse multi-hot rows for BCE."""
    import torch

    wave = torch.randn(batch, samples) * 0.1
    if loss_kind == "ce":
        return wave, torch.nn.functional.one_hot(torch.randint(classes, (batch,)), classes).float()
    return wave, (torch.rand(batch, classes) < 0.02).float()


# ------------------------------------------------------------------------------------------ our step


def mask_fill(model) -> float:
    """The value SpecAugment writes, as `Trainer._mask_fill`: normalised 0 for AST/PSLA fbanks, else 0."""
    from tagger.frontends import KaldiFbank

    frontend = model.frontend
    if isinstance(frontend, KaldiFbank) and frontend.config.mean is not None:
        c = frontend.config
        return (0.0 - c.mean) / (c.std * c.std_scale)
    return 0.0


def recipe_optimizer(model, cfg):
    """The optimizer `Trainer._optimizer` builds from the recipe."""
    import torch

    o = cfg.optim
    kind = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return kind([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                weight_decay=o.weight_decay, amsgrad=o.amsgrad)


def our_step(model, cfg) -> Callable[[dict, int], None]:
    """One optimizer step of `Trainer._train_batch` on a batch {"wave" or "features", "target"} (fp32, no DDP)."""
    import numpy as np
    import torch

    from tagger.augment import apply_mix, draw_spec_mixup, mix_targets, spec_augment
    from tagger.training.losses import training_loss

    optimizer, fill, a = recipe_optimizer(model, cfg), mask_fill(model), cfg.augment

    def step(batch: dict, seed: int) -> None:
        rng = np.random.default_rng([0, 0, seed, 1])
        targets = batch["target"]
        with torch.no_grad():
            spec = batch["features"] if "features" in batch else model.frontend(batch["wave"])
            spec = spec_augment(spec, a.freqm, a.timem, rng, a.freq_masks, a.time_masks, fill)
            if a.spec_mixup != "none":
                plan = draw_spec_mixup(spec.shape[0], a.spec_mixup, a.spec_mixup_alpha, rng)
                spec, targets = apply_mix(spec, plan), mix_targets(targets, plan)
        loss, _ = training_loss(model.forward_features(spec).logits.float(), targets, cfg.loss.kind)
        loss.backward()
        if cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def build_ours(config: str, classes: int):
    from tagger.models import create_model

    cfg = recipe_config(config)
    return create_model(cfg.model.arch, num_classes=classes, **cfg.model.kwargs).train(), cfg


def ours_child(config: str, args: argparse.Namespace) -> dict:
    model, cfg = build_ours(config, num_classes(config))
    wave, target = random_batch(args.batch, int(clip_seconds(args, cfg) * model.sample_rate), num_classes(config),
                                cfg.loss.kind)
    step, seeds = our_step(model, cfg), itertools.count()
    return {"step_s": median_seconds(lambda: step({"wave": wave, "target": target}, next(seeds)), args.steps)}


# ------------------------------------------------------------------------------------------ official steps


@dataclass
class OfficialStep:
    """The official training loop's work per batch: `step(model input, target)`, and `prep(wave)` for work its
    data loader does that our step does in-step (PSLA's per-clip fbank); the model input is prep(wave) or wave."""

    step: Callable
    prep: Callable | None = None


@contextlib.contextmanager
def stubbed(*names: str):
    """Empty stand-ins, while the official files are imported, for what they import at the top but the timed code
    never calls; removed afterwards, since other libraries (torch._dynamo) probe whether those modules exist."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    sys.modules.update({name: types.ModuleType(name) for name in missing})
    try:
        yield
    finally:
        for name in missing:
            sys.modules.pop(name)


def panns_official(config: str, repo: Path, classes: int) -> OfficialStep:
    """pytorch/main.py with augmentation='mixup': 2B clips and B lambda pairs in, B mixed clips out; clip_bce."""
    import torch
    from bench_models import PANNS_CLASSES

    sys.path[:0] = [str(repo / "pytorch"), str(repo / "utils")]
    with stubbed("h5py", "pandas"):  # utilities.py needs them only for its dataset helpers
        import models
        from losses import get_loss_func
        from pytorch_utils import do_mixup
        from utilities import Mixup

    net = getattr(models, PANNS_CLASSES[config])(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64,
                                                 fmin=50, fmax=14000, classes_num=classes).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                 amsgrad=True)
    mixup, loss_func = Mixup(mixup_alpha=1.0), get_loss_func("clip_bce")

    def step(wave, target):
        lam = torch.from_numpy(mixup.get_lambda(len(wave))).float()
        loss = loss_func(net(wave, lam), {"target": do_mixup(target, lam)})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return OfficialStep(step)


def psla_official(config: str, repo: Path, classes: int, target_length: int, batch: int) -> OfficialStep:
    """src/traintest.py's step on the fbank its AudiosetDataset.__getitem__ makes per clip (Kaldi fbank, padding to
    target_length, SpecAugment 48/192, normalisation). Decoding is left out: torchaudio.load returns the batch."""
    import torch
    import torchaudio
    from bench_models import PSLA_HEADS
    from torch.utils.data import default_collate

    sys.path.insert(0, str(repo))
    from src.dataloaders import AudiosetDataset
    from src.models.Models import EffNetAttention

    net = EffNetAttention(label_dim=classes, b=2, pretrain=False, head_num=PSLA_HEADS[config]).train()
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 1e-4, weight_decay=5e-7,
                                 betas=(0.95, 0.999))
    loss_fn = torch.nn.BCELoss()
    conf = {"num_mel_bins": 128, "target_length": target_length, "freqm": 48, "timem": 192, "mixup": 0,
            "dataset": "audioset", "mode": "train", "mean": -4.6476, "std": 4.5699, "noise": False}  # egs/audioset
    with tempfile.TemporaryDirectory() as name, contextlib.redirect_stdout(io.StringIO()):
        folder = Path(name)  # the dataset reads a JSON list of clips and a label CSV when built; clip "i" is wave[i]
        (folder / "labels.csv").write_text("index,mid\n" + "".join(f"{i},/m/{i}\n" for i in range(classes)))
        clips = [{"wav": str(i), "labels": "/m/0"} for i in range(batch)]
        (folder / "data.json").write_text(json.dumps({"data": clips}))
        dataset = AudiosetDataset(str(folder / "data.json"), conf, label_csv=str(folder / "labels.csv"))

    def prep(wave):
        torchaudio.load = lambda name: (wave[int(name)][None], 16000)
        return default_collate([dataset[i] for i in range(len(wave))])[0]

    def step(fbank, target):
        output = torch.clamp(net(fbank), 1e-7, 1.0 - 1e-7)
        loss = loss_fn(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return OfficialStep(step, prep)


def efficientat_official(config: str, repo: Path, classes: int) -> OfficialStep:
    """ex_esc50.py's loop body: AugmentMelSTFT in train mode, mixup 0.3 of a permutation, mixed CE, Adam 6e-5."""
    import torch
    import torch.nn.functional as F
    from bench_models import EFFICIENTAT_WIDTH

    sys.path.insert(0, str(repo))
    with contextlib.chdir(repo):  # its helpers read metadata/ relative to the checkout at import time
        from helpers.utils import mixup
        from models.mn.model import get_model
        from models.preprocess import AugmentMelSTFT

    net = get_model(num_classes=classes, pretrained_name=None, width_mult=EFFICIENTAT_WIDTH[config],
                    head_type="mlp", se_dims="c").train()
    mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=0, timem=0, fmin=0,
                         fmax=None, fmin_aug_range=10, fmax_aug_range=2000).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=6e-5, weight_decay=0.0)

    def step(wave, y):
        x = mel(wave).unsqueeze(1)
        bs = x.size(0)
        rn_indices, lam = mixup(bs, 0.3)
        x = x * lam.reshape(bs, 1, 1, 1) + x[rn_indices] * (1.0 - lam.reshape(bs, 1, 1, 1))
        y_hat, _ = net(x)
        samples_loss = (F.cross_entropy(y_hat, y, reduction="none") * lam
                        + F.cross_entropy(y_hat, y[rn_indices], reduction="none") * (1.0 - lam))
        samples_loss.mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    return OfficialStep(step)


def htsat_official(repo: Path, classes: int) -> OfficialStep:
    """sed_model.py's training_step (mixup lambdas of the flipped batch inside the model, clip_bce), then what
    Lightning does with main.py's settings: backward, gradient_clip_val=1.0, AdamW (weight decay 0.05)."""
    import torch

    sys.path.insert(0, str(repo))
    with stubbed("h5py", "museval"):  # utils.py imports them for functions the step does not use
        import config
        import utils
        from model.htsat import HTSAT_Swin_Transformer

    net = HTSAT_Swin_Transformer(
        spec_size=config.htsat_spec_size, patch_size=config.htsat_patch_size, in_chans=1, num_classes=classes,
        window_size=config.htsat_window_size, config=config, depths=config.htsat_depth, embed_dim=config.htsat_dim,
        patch_stride=config.htsat_stride, num_heads=config.htsat_num_head,
    ).train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=config.learning_rate,
                                  betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    loss_func = utils.get_loss_func(config.loss_type)

    def step(wave, target):
        mix_lambda = torch.from_numpy(utils.get_mix_lambda(0.5, len(wave)))
        loss = loss_func(net(wave, mix_lambda)["clipwise_output"], target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return OfficialStep(step)


def passt_official(repo: Path, classes: int) -> OfficialStep:
    """ex_audioset.py's training_step (mel with SpecAugment 48/192, mixup 0.3, BCE on mixed targets) and its
    get_optimizer (AdamW 2e-5, weight decay 1e-4), with the model settings of the AudioSet experiment."""
    import torch
    import torch.nn.functional as F
    from bench_models import stub_ba3l

    stub_ba3l()
    sys.path.insert(0, str(repo))
    from helpers.mixup import my_mixup
    from models.passt import get_model
    from models.preprocess import AugmentMelSTFT

    net = get_model(arch="passt_s_swa_p16_128_ap476", pretrained=False, n_classes=classes, in_channels=1, fstride=10,
                    tstride=10, input_fdim=128, input_tdim=998, u_patchout=0, s_patchout_t=40, s_patchout_f=4).train()
    mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
                         htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-5, weight_decay=1e-4)

    def step(wave, y):
        x = mel(wave).unsqueeze(1)
        batch_size = len(y)
        rn_indices, lam = my_mixup(batch_size, 0.3)
        x = x * lam.reshape(batch_size, 1, 1, 1) + x[rn_indices] * (1.0 - lam.reshape(batch_size, 1, 1, 1))
        y_hat, _ = net(x)
        y_mix = y * lam.reshape(batch_size, 1) + y[rn_indices] * (1.0 - lam.reshape(batch_size, 1))
        F.binary_cross_entropy_with_logits(y_hat, y_mix, reduction="none").mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    return OfficialStep(step)


def build_official(config: str, repo: Path, classes: int, cfg, batch: int) -> OfficialStep:
    family = config.split("-")[0]
    if family == "panns":
        return panns_official(config, repo, classes)
    if family == "psla":
        return psla_official(config, repo, classes, cfg.model.kwargs["target_length"], batch)
    if family == "efficientat":
        return efficientat_official(config, repo, classes)
    return htsat_official(repo, classes) if family == "htsat" else passt_official(repo, classes)


def official_child(config: str, args: argparse.Namespace) -> dict:
    cfg, classes = recipe_config(config), num_classes(config)
    official = build_official(config, getattr(args, config.split("-")[0]), classes, cfg, args.batch)
    rate = 16000 if config.startswith("psla") else 32000
    wave, target = random_batch(args.batch, int(clip_seconds(args, cfg) * rate), classes, cfg.loss.kind)
    prep_s = median_seconds(lambda: official.prep(wave), args.steps) if official.prep else 0.0
    x = official.prep(wave) if official.prep else wave
    return {"step_s": median_seconds(lambda: official.step(x, target), args.steps), "prep_s": prep_s}


# ------------------------------------------------------------------------------------------ input pipeline


def loader_seconds(dataset, batch: int, workers: int, sampler) -> float:
    """Mean seconds per batch of a training DataLoader, the first batch (worker start-up) left out."""
    from tagger.training.data import make_loader

    stamps = []
    for _ in make_loader(dataset, batch, workers, sampler=sampler, drop_last=True):
        stamps.append(time.perf_counter())
        if len(stamps) > LOADER_BATCHES:
            break
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def overlapped_seconds(dataset, batch: int, sampler, step, steps: int) -> float:
    """Mean seconds per batch of training with a 1-worker loader: the step and the next batch's loading overlap."""
    from tagger.training.data import make_loader

    stamps = []
    for i, item in enumerate(make_loader(dataset, batch, 1, sampler=sampler, drop_last=True)):
        step(item, i)
        stamps.append(time.perf_counter())
        if len(stamps) > steps:
            break
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def pipeline_child(config: str, args: argparse.Namespace) -> dict:
    """Loader and step seconds per batch for one config; its features are extracted with its front-end on first use."""
    from tagger.data.extract import extract_features
    from tagger.data.manifests import read_manifest
    from tagger.frontends import frontend_to_dict
    from tagger.labels import LabelSet
    from tagger.training.data import (
        PositionedSampler,
        TrainFeatures,
        TrainWaves,
        build_sampler,
        encode_targets,
        make_loader,
        read_source,
    )
    from tagger.training.init import cached_features

    data = Path(args.data)
    labels = LabelSet.from_csv(data / "labels.csv")
    model, cfg = build_ours(config, len(labels))
    store = data / f"features-{config}"
    if not store.exists():
        extract_features(read_manifest(data / "train.csv").examples, store, frontend_to_dict(model.frontend),
                         labels=labels, workers=0, show_progress=False)
    seconds = clip_seconds(args, cfg)
    cached, audio = read_source(store, "training"), read_source(data / "train.csv", "training")
    targets = encode_targets(labels, cached)
    features = TrainFeatures(cached_features(cached, model, labels, seconds), targets, cached.ids)
    waves = TrainWaves(audio, encode_targets(labels, audio), model.sample_rate, seconds, cfg.augment, seed=0)

    def sampler() -> PositionedSampler:  # the trainer's: the recipe's shuffle or balanced sampling, one process
        return PositionedSampler(build_sampler(cfg.data, targets, 0, 0, 1))

    step, seeds = our_step(model, cfg), itertools.count()
    first = next(iter(make_loader(features, args.batch, 0, sampler=sampler(), drop_last=True)))
    result = {"clips": len(cached), "step_s": median_seconds(lambda: step(first, next(seeds)), args.steps)}
    for workers in (0, 1):
        result[f"features_w{workers}"] = loader_seconds(features, args.batch, workers, sampler())
        result[f"audio_w{workers}"] = loader_seconds(waves, args.batch, workers, sampler())
    result["overlapped_s"] = overlapped_seconds(features, args.batch, sampler(), step, args.steps)
    return result


# ------------------------------------------------------------------------------------------ memory table


def memory_child(config: str, args: argparse.Namespace) -> dict:
    """forward + backward + AdamW on model(wave).logits with BCE, 527 classes."""
    import torch

    from tagger.models import create_model

    arch, kwargs = MEMORY_CONFIGS[config]
    model = create_model(arch, num_classes=527, **kwargs).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    seconds = args.seconds if args.seconds is not None else 10.0
    wave = torch.randn(args.batch, int(model.sample_rate * seconds)) * 0.1
    target = (torch.rand(args.batch, 527) < 0.02).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    setup_mib = _rss_mib()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(wave).logits, target).backward()
        optimizer.step()

    return {
        "step_s": median_seconds(step, args.steps),
        "peak_rss_mib": _rss_mib(),
        "setup_rss_mib": setup_mib,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
    }


# ------------------------------------------------------------------------------------------ the parent


CHILDREN = {"ours": ours_child, "official": official_child, "pipeline": pipeline_child, "memory": memory_child}
FAMILIES = ("panns", "psla", "efficientat", "htsat", "passt")


def run_child(kind: str, config: str, args: argparse.Namespace) -> dict | str:
    """The child's JSON result, or the last line of its error output when it failed."""
    command = [sys.executable, __file__, "--child", f"{kind}:{config}", "--batch", str(args.batch),
               "--steps", str(args.steps), "--threads", str(args.threads)]
    if args.seconds is not None:
        command += ["--seconds", str(args.seconds)]
    for option in (*FAMILIES, "data"):
        if getattr(args, option, None) is not None:
            command += [f"--{option}", str(getattr(args, option))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit status {done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def why_no_official(config: str, args: argparse.Namespace) -> str | None:
    family = config.split("-")[0]
    if family in NOT_RUN:
        return NOT_RUN[family]
    if getattr(args, family) is None:
        return f"no --{family} checkout given: ours alone"
    return None


def official_table(configs: list[str], args: argparse.Namespace) -> None:
    print("\n### Training step, ours vs official\n")
    print("| config | batch | clip s | ours s/step | official s/step | official loader prep s/batch | ours clips/s "
          "| official clips/s | official / ours |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for config in configs:
        seconds = clip_seconds(args, recipe_config(config))
        ours = run_child("ours", config, args)
        if isinstance(ours, str):
            notes.append(f"{config}: our step failed: {ours}")
            continue
        why = why_no_official(config, args)
        theirs = run_child("official", config, args) if why is None else why
        cells = ["–"] * 4
        if isinstance(theirs, dict):
            total = theirs["step_s"] + theirs["prep_s"]
            cells = [f"{theirs['step_s']:.3f}", f"{theirs['prep_s']:.3f}", f"{args.batch / total:.2f}",
                     f"{total / ours['step_s']:.2f}×"]
        else:
            notes.append(f"{config}: official not timed: {theirs}")
        print(f"| {config} | {args.batch} | {seconds:g} | {ours['step_s']:.3f} | {cells[0]} | {cells[1]} | "
              f"{args.batch / ours['step_s']:.2f} | {cells[2]} | {cells[3]} |", flush=True)
    for note in notes:
        print(f"- {note}")


def pipeline_table(configs: list[str], args: argparse.Namespace) -> None:
    from tagger.data.synth import synthesize

    with tempfile.TemporaryDirectory() as folder:
        synthesize(folder, clips=args.data_clips, seconds=args.data_seconds, sample_rate=32000, valid_fraction=0.01)
        args.data = folder
        rows = [(config, run_child("pipeline", config, args)) for config in configs]
        args.data = None
    clips = next((r["clips"] for _, r in rows if isinstance(r, dict)), 0)
    print(f"\n### Input pipeline vs step ({clips} synthetic training clips of {args.data_seconds:g} s, 32 kHz; "
          "s/batch)\n")
    print("| config | batch | clip s | features loader, 0 workers | features loader, 1 worker | our step on cached "
          "features | step + 1-worker loader | input-bound? | audio loader, 0 workers | audio loader, 1 worker |")
    print("|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|")
    for config, r in rows:
        if isinstance(r, str):
            print(f"| {config} | {args.batch} | failed: {r} |")
            continue
        bound = "yes" if r["features_w1"] > r["step_s"] else "no"
        seconds = clip_seconds(args, recipe_config(config))
        print(f"| {config} | {args.batch} | {seconds:g} | {r['features_w0']:.4f} | {r['features_w1']:.4f} | "
              f"{r['step_s']:.3f} | {r['overlapped_s']:.3f} | {bound} | {r['audio_w0']:.4f} | {r['audio_w1']:.4f} |")


def memory_table(configs: list[str], args: argparse.Namespace) -> None:
    print("\n### Training step memory (forward + backward + AdamW on the waveform, 527 classes)\n")
    print("| config | params M | s / step | peak RSS MiB | RSS after set-up MiB | peak - set-up MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    results = {}
    for config in configs:
        r = run_child("memory", config, args)
        if isinstance(r, str):
            print(f"| {config} | failed: {r} |")
            continue
        results[config] = r
        print(f"| {config} | {r['params_M']:.2f} | {r['step_s']:.2f} | {r['peak_rss_mib']:.0f} | "
              f"{r['setup_rss_mib']:.0f} | {r['peak_rss_mib'] - r['setup_rss_mib']:.0f} |", flush=True)
    if {"passt-patchout-t40-f4", "passt-no-patchout"} <= results.keys():
        ratio = results["passt-no-patchout"]["step_s"] / results["passt-patchout-t40-f4"]["step_s"]
        print(f"\nPaSST step time, no patchout / patchout: {ratio:.2f}x (target >= 2)")
    if {"ast-base384", "htsat-tiny"} <= results.keys():
        ratio = results["htsat-tiny"]["peak_rss_mib"] / results["ast-base384"]["peak_rss_mib"]
        print(f"HTS-AT peak RSS / AST peak RSS: {ratio:.2f} (target <= 0.5)")


TABLES = {"official": official_table, "pipeline": pipeline_table, "memory": memory_table}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="*", choices=list(TABLES), default=list(TABLES))
    parser.add_argument("--configs", nargs="*", help="limit every table to these of its configs (default: all, "
                        f"pipeline: {' '.join(PIPELINE_CONFIGS)})")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, help="clip length (default: each recipe's data.clip_seconds)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (median) after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-clips", type=int, default=64, help="synthetic clips for the pipeline table")
    parser.add_argument("--data-seconds", type=float, default=10.0, help="their length")
    parser.add_argument("--panns", type=Path, help="checkout of qiuqiangkong/audioset_tagging_cnn")
    parser.add_argument("--psla", type=Path, help="checkout of YuanGongND/psla")
    parser.add_argument("--efficientat", type=Path, help="checkout of fschmid56/EfficientAT")
    parser.add_argument("--htsat", type=Path, help="checkout of RetroCirce/HTS-Audio-Transformer")
    parser.add_argument("--passt", type=Path, help="checkout of kkoutini/PaSST")
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    known = dict.fromkeys([*RECIPES, *MEMORY_CONFIGS])
    unknown = [c for c in args.configs or () if c not in known]
    if unknown:
        parser.error(f"unknown configs {', '.join(unknown)}; known: {', '.join(known)}")
    return args


def main() -> None:
    args = parse_args()
    import torch

    if args.child:
        kind, config = args.child.split(":")
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        print(json.dumps(CHILDREN[kind](config, args)))
        return
    length = f"{args.seconds:g} s" if args.seconds is not None else "each recipe's clip length"
    print(f"torch {torch.__version__}, CPU, {args.threads} threads, fp32, batch {args.batch}, {length}, "
          f"median of {args.steps} steps after 1 warm-up step, one process per measurement")
    for table in args.tables:
        configs = [c for c in args.configs or TABLE_CONFIGS[table] if c in TABLE_CONFIGS[table]
                   or (table == "pipeline" and c in RECIPES)]
        if configs:
            TABLES[table](configs, args)


if __name__ == "__main__":
    main()
