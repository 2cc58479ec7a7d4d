"""The training loop: one readable `Trainer.fit`, exact resume, DDP, validation, checkpoints and early stopping.

Reproducibility rests on one rule: every random draw of optimizer step k (dropout, patchout, mel jitter,
SpecAugment, mixup) is seeded from (seed, rank, k), and every draw of a data item from (seed, epoch, rank,
position). So the run's state is just model + optimizer + counters, and a run resumed from any saved step
continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tagger import console
from tagger.augment import apply_mix, draw_spec_mixup, mix_known, mix_targets, spec_augment
from tagger.checkpoint import read_torch_file, save_checkpoint
from tagger.errors import TaggerError
from tagger.evaluation.metrics import summarize
from tagger.fileio import atomic_path, atomic_write_json, atomic_write_text
from tagger.frontends import KaldiFbank
from tagger.labels import LabelSet
from tagger.models.base import probabilities
from tagger.training import distributed
from tagger.training.config import TrainConfig, config_from_dict, read_recipe, to_toml
from tagger.training.data import (
    EvalWaves,
    PositionedSampler,
    Replay,
    Targets,
    Teacher,
    TrainFeatures,
    TrainWaves,
    build_sampler,
    infer_task,
    make_loader,
    read_source,
    source_labels,
)
from tagger.training.frames import FrameGrid, FrameTargets, clip_keys, read_training_strong
from tagger.training.init import build_model, cached_features
from tagger.training.losses import frame_loss, label_loss, training_loss
from tagger.training.schedules import lr_factor

RESUME_VERSION = 1


@dataclass
class RunPaths:
    dir: Path

    def epoch(self, number: int) -> Path:
        """epoch_NNN.pt: zero-padded so that `RUN/epoch_*.pt` lists the epochs in order."""
        return self.dir / f"epoch_{number:03d}.pt"

    def __getattr__(self, name: str) -> Path:
        files = {"config": "config.toml", "run": "run.json", "resume": "resume.pt", "last": "last.pt",
                 "best": "best.pt", "metrics": "metrics.csv", "curves": "curves.png", "tensorboard": "tensorboard"}
        if name not in files:
            raise AttributeError(name)
        return self.dir / files[name]


@dataclass
class TrainState:
    """Counters that, with the model and optimizer, are the whole state of a run."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # micro-batches finished in this epoch
    step: int = 0  # optimizer steps finished in the run
    best: float | None = None
    best_epoch: float | None = None
    since_best: int = 0  # evaluations without improvement
    loss_sum: float = 0.0  # training loss since the last evaluation
    loss_count: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)  # every metrics.csv row so far
    seconds: float = 0.0  # training time of earlier sessions of this run
    done: bool = False
    stop_reason: str = ""


@dataclass
class TrainResult:
    run_dir: Path
    epochs: float
    steps: int
    best: float | None
    metric: str
    last_metrics: dict[str, Any]
    stop_reason: str
    seconds: float


def keep_copy(source: Path, target: Path) -> None:
    """`target` holds what `source` holds now: a hard link (no extra disk until `source` is replaced, which
    the atomic save does by rename, leaving the link on the old file), else a copy; atomic either way."""
    temp = target.with_name(f".{target.name}.tmp")
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, temp)
    os.replace(temp, target)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


CHANNELS_LAST_FAMILIES = ("panns", "efficientat", "psla")  # 2-D CNNs: cuDNN's NHWC kernels suit them


def wants_channels_last(setting: str, arch: str, device: torch.device) -> bool:
    """run.channels_last: "auto" is on only for the conv families on CUDA (a ViT gains nothing, the CPU loses)."""
    if setting != "auto":
        return setting == "on"
    from tagger.models import model_entry

    return device.type == "cuda" and model_entry(arch).family in CHANNELS_LAST_FAMILIES


def to_channels_last(model: nn.Module) -> None:
    """NHWC weights, and NHWC activations from each one-channel stem conv on: a (B, 1, F, T) spectrogram, 1x1 and
    depthwise kernels look contiguous in both layouts, so without the hook EfficientAT and EfficientNet would stay
    NCHW throughout (PANNs' 3x3 convs alone would switch)."""
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 1:
            module.register_forward_hook(_nhwc_output)


def _nhwc_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.contiguous(memory_format=torch.channels_last)


def fused_optimizer_ok(params: list[torch.Tensor]) -> bool:
    """Adam(W)'s fused kernel: one launch for all parameters, and GradScaler's inf check without a host sync."""
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


class FeatureNet(nn.Module):
    """model.forward_features as a module's forward, so DDP and torch.compile see only the trained part: the clip
    logits, and with `frames` also the frame logits (strong-label training)."""

    def __init__(self, model: nn.Module, frames: bool = False):
        super().__init__()
        self.model, self.frames = model, frames

    def forward(self, spec: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_features(spec)
        return (out.logits, out.frame_logits) if self.frames else out.logits


FRAME_OUTPUT_FAMILIES = ("efficientat", "psla")  # frame output is an option of theirs (model kwarg frame_output)


def metric_columns(task: str, frames: bool = False) -> list[str]:
    """metrics.csv's columns; `frames`: the validation set has strong labels, so its frame loss is measured."""
    quality = ["accuracy", "mAP", "mAUC", "d_prime"] if task == "multiclass" else ["mAP", "mAUC", "d_prime", "lwlrap"]
    frame = ["valid_frame_loss"] if frames else []
    return ["epoch", "step", "train_loss", "valid_loss", *frame, *quality, "lr", "clips_per_s", "elapsed_s"]


class Trainer:
    """Trains `config.model.arch` on a training set, validating on another, into a run folder."""

    def __init__(self, config: TrainConfig, run_dir: Path, train: dict, valid: dict, labels_path: Path | None,
                 saved_kwargs: dict | None = None, show_progress: bool = True):
        """`train`/`valid` are {"path", "folds", "audio_dir"} (what run.json records for --resume)."""
        self.config, self.paths = config, RunPaths(Path(run_dir))
        self.show_progress = show_progress
        self.ctx = distributed.setup(config.run.device)
        self.main = self.ctx.is_main
        self.stop_requested = self.interrupted = False
        self.session_start = time.perf_counter()
        cfg = config

        self.train_source = read_source(train["path"], "training", train.get("folds"), train.get("audio_dir"))
        self.valid_source = read_source(valid["path"], "validation", valid.get("folds"), valid.get("audio_dir"))
        self.labels = self._labels(labels_path)
        self.task = cfg.task if cfg.task != "auto" else infer_task(self.train_source)
        self.loss_kind = cfg.loss.kind if cfg.loss.kind != "auto" else ("ce" if self.task == "multiclass" else "bce")
        self.metric = cfg.run.metric if cfg.run.metric != "auto" else (
            "accuracy" if self.task == "multiclass" else "mAP")
        self.strong_specs = {"train": train.get("strong"), "valid": valid.get("strong")}
        self.columns = metric_columns(self.task, frames=bool(self.strong_specs["valid"]))
        if self.metric not in (*self.columns, "loss") and not (self.metric == "frame_loss" and
                                                               "valid_frame_loss" in self.columns):
            raise TaggerError(f"run.metric={self.metric} is not computed for this run ({self.task}"
                              f"{', no strong validation labels' if self.metric == 'frame_loss' else ''}); "
                              f"use one of {', '.join(c for c in self.columns[4:-3])} or loss")

        resume = saved_kwargs is not None
        torch.manual_seed(_seed(cfg.run.seed, 0, 2**31))  # the same seed gives the same initial weights
        self.model, init_notes = build_model(cfg, self.labels, saved_kwargs, self._frame_kwargs())
        self.model.to(self.ctx.device)
        self.init_notes = init_notes
        self.source = getattr(self.model, "init_source", None)  # provenance of the weights it starts from
        self.grids = self._frame_grids()
        self._check_batch()
        self.state = TrainState()
        self.replay: Replay | None = None  # stored teacher draws (loss.teacher_targets), read once
        self._build_data()
        if not resume:  # a resumed run keeps the split it started with, so its steps stay the same
            self._fit_memory()
        self.net = self._wrap(FeatureNet(self.model, frames=self.strong_specs["train"] is not None))
        self.optimizer = self._optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if cfg.run.precision == "fp16" else None
        if cfg.run.precision == "fp16" and self.ctx.device.type != "cuda":
            raise TaggerError("run.precision=fp16 needs a CUDA device; use bf16 on the CPU")
        self.fill = self._mask_fill()
        if resume:
            self._load_resume()
        self.tensorboard = self._tensorboard() if cfg.run.tensorboard and self.main else None

    # ------------------------------------------------------------------------------------------ setup

    def _labels(self, labels_path: Path | None) -> LabelSet:
        if labels_path is not None:
            return LabelSet.from_csv(labels_path)
        store = self.train_source.store
        if store is not None and (store.dir / "labels.csv").is_file():
            return LabelSet.from_csv(store.dir / "labels.csv")
        return LabelSet.from_list(source_labels(self.train_source))

    def _frame_kwargs(self) -> dict:
        """Strong labels need frame output; the families that give it as an option get it switched on."""
        from tagger.models import model_entry

        wanted = any(self.strong_specs.values()) and model_entry(self.config.model.arch).family in \
            FRAME_OUTPUT_FAMILIES
        return {"frame_output": True} if wanted else {}

    def _frame_grids(self) -> dict[str, FrameGrid]:
        """Where the training and validation items' output frames sit, found with one dry forward pass (which
        also shows that the model has frame output at all)."""
        from tagger.models.policy import frame_seconds

        grids = {}
        eval_seconds = self.config.data.eval_clip_seconds or self.config.data.clip_seconds
        for split, seconds in (("train", self.config.data.clip_seconds), ("valid", eval_seconds)):
            if not self.strong_specs[split]:
                continue
            samples = int(round(seconds * self.model.sample_rate))
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                spec = self.model.frontend(torch.zeros(1, samples, device=self.ctx.device))
                frames = self.model.forward_features(spec).frame_logits
            self.model.train(was_training)
            if frames is None:
                raise TaggerError(
                    f"{self.config.model.arch} gives no frame-level output, which strong labels train; use a model "
                    "with one: HTS-AT, PANNs decision-level (panns-cnn14-decisionlevel-*), EfficientAT or PSLA")
            grids[split] = FrameGrid(int(frames.shape[1]), frame_seconds(self.model), self.model.sample_rate,
                                     samples)
        return grids

    def _frame_targets(self, split: str, source) -> FrameTargets | None:
        spec = self.strong_specs[split]
        if not spec:
            return None
        strong = read_training_strong(spec["path"], self.labels, spec.get("label_map"))
        paths = [source.clips.where(i) for i in range(len(source))]
        targets = FrameTargets(strong, clip_keys(list(source.ids), paths), self.labels, self.grids[split])
        if not targets.count:
            raise TaggerError(f"none of the {len(source)} {split} clips is in {spec['path']}; its file names (without "
                              "folders and extension) or ids must match the clips'")
        return targets

    def _check_batch(self) -> None:
        cfg = self.config.data
        if cfg.batch_size % (self.ctx.world_size * cfg.micro_batches):
            raise TaggerError(f"data.batch_size {cfg.batch_size} is the global batch; it must divide by the "
                              f"{self.ctx.world_size} processes times data.micro_batches={cfg.micro_batches}")
        self.rank_batch = cfg.batch_size // self.ctx.world_size  # what one process adds to an optimizer step
        self.loader_batch = self.rank_batch // cfg.micro_batches  # what one forward pass takes
        self.group = self.config.optim.accumulate * cfg.micro_batches  # forward passes per optimizer step
        eval_batch = cfg.eval_batch_size or cfg.batch_size
        self.eval_batch = max(1, eval_batch // self.ctx.world_size)

    def _fit_memory(self) -> None:
        """Run each batch as micro-batches with accumulated gradients when a whole batch would not fit in memory;
        the optimizer sees the same batches, so the recipe is unchanged (config.toml records data.micro_batches)."""
        from tagger.training.memory import free_bytes, optimizer_bytes, plan_batch, saved_bytes_per_clip

        cfg = self.config
        if self.rank_batch < 2 or cfg.data.micro_batches != 1:
            return
        sample = self.train_set[(0, 0, 0)]
        with torch.no_grad():
            spec = sample["features"] if "features" in sample else self.model.frontend(sample["wave"][None])[0]
        self.model.train()
        with self._autocast():
            per_clip = saved_bytes_per_clip(FeatureNet(self.model), spec.to(self.ctx.device))
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.ctx.device.type == "cpu" else 1
        even = cfg.augment.spec_mixup == "pairs"
        fit = plan_batch(self.rank_batch, per_clip, optimizer_bytes(self.model), free_bytes(self.ctx.device, local),
                         even=even)
        if fit.split == 1:
            return
        cfg.data.micro_batches = fit.split
        batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.init_notes.append(
            f"memory: a batch of {fit.batch} clips needs about {fit.needed / 1e9:.1f} GB and {fit.free / 1e9:.1f} GB "
            f"are free, so each batch runs as {fit.split} micro-batches of {fit.micro} with gradients accumulated "
            f"(data.micro_batches={fit.split}): the optimizer sees the same batches"
            + (", BatchNorm statistics come from the micro-batches" if batchnorm else ""))
        self._check_batch()
        self._build_data()

    def _build_data(self) -> None:
        cfg, ctx = self.config, self.ctx
        self.train_targets = Targets(self.train_source.labels, self.labels)  # rows made per item, never all at once
        self.valid_targets = Targets(self.valid_source.labels, self.labels).dense()
        teacher = None
        if cfg.loss.teacher:
            teacher = Teacher.load(cfg.loss.teacher, self.labels, cfg.loss.kd_temperature,
                                   exclusive=self.loss_kind == "ce")
        self.teacher = teacher
        if cfg.loss.teacher_targets and self.replay is None:  # once: a memory split builds the data again
            self.replay = self._replay()
        replay = self.replay
        if any(self.strong_specs.values()) and (self.train_source.cached or self.valid_source.cached):
            raise TaggerError("strong labels follow each random crop, so a run with --strong or --valid-strong "
                              "trains and validates from audio, not from a feature store")
        self.train_frames = self._frame_targets("train", self.train_source)
        self.valid_frames = self._frame_targets("valid", self.valid_source)
        self.sampler = self._sampler()
        rate = self.model.sample_rate
        eval_seconds = cfg.data.eval_clip_seconds or cfg.data.clip_seconds
        if self.train_source.cached:
            wave_augments = [k for k in ("wave_mixup", "gain_db", "roll") if getattr(cfg.augment, k)]
            if wave_augments:
                raise TaggerError(f"{self.train_source.path} holds cached features, but the recipe asks for waveform "
                                  f"augmentation ({', '.join('augment.' + k for k in wave_augments)}); train from "
                                  "audio, or set them to 0")
            view = cached_features(self.train_source, self.model, self.labels, cfg.data.clip_seconds)
            self.train_set = TrainFeatures(view, self.train_targets, self.train_source.ids, teacher)
        else:
            # Replayed draws are the teacher's inputs: waveform augmentation the teacher did not see stays off.
            augment = replace(cfg.augment, wave_mixup=0.0, gain_db=0, roll=0) if replay else cfg.augment
            self.train_set = TrainWaves(self.train_source, self.train_targets, rate, cfg.data.clip_seconds,
                                        augment, cfg.run.seed, ctx.rank, teacher, self.train_frames, replay)
        if self.valid_source.cached:
            view = cached_features(self.valid_source, self.model, self.labels, eval_seconds)
            self.valid_set = TrainFeatures(view, self.valid_targets, self.valid_source.ids)
        else:
            self.valid_set = EvalWaves(self.valid_source, self.valid_targets, rate, eval_seconds, self.valid_frames)
        whole = len(self.sampler) // self.rank_batch
        if whole < 1:
            raise TaggerError(f"an epoch of {len(self.sampler)} clips per process is less than one batch of "
                              f"{self.rank_batch}; lower data.batch_size or raise data.epoch_length")
        self.batches_per_epoch = whole * cfg.data.micro_batches  # forward passes (micro-batches) per epoch
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.group)

    def _replay(self) -> Replay:
        """The stored teacher draws of the training clips, checked against the run: same crop length, every clip
        covered when the loss is KD alone, the teacher's classes matching the run's."""
        from tagger.training.teacher_targets import TeacherTargets

        cfg = self.config
        folder = cfg.loss.teacher_targets
        if self.train_source.cached:
            raise TaggerError(f"teacher targets replay crops of the audio, but {self.train_source.path} holds cached "
                              "features; train from the manifest or pack the targets were made from")
        store = TeacherTargets.open(folder)
        if abs(store.clip_seconds - cfg.data.clip_seconds) > 1e-9:
            raise TaggerError(f"{folder} holds {store.clip_seconds:g} s crops but data.clip_seconds is "
                              f"{cfg.data.clip_seconds:g}; set data.clip_seconds={store.clip_seconds:g} so that the "
                              "student sees the teacher's crops")
        replay = Replay(store, self.train_source.ids.tolist(), self.labels, cfg.loss.kd_temperature,
                        self.model.sample_rate, exclusive=self.loss_kind == "ce")
        missing, total = replay.missing, len(self.train_source)
        if missing:
            example = self.train_source.ids[int(np.flatnonzero(replay.rows < 0)[0])]
            if cfg.loss.kd_lambda == 0:
                raise TaggerError(f"{missing} of {total} training clips (e.g. {example}) have no stored teacher "
                                  f"targets in {folder}, and loss.kd_lambda=0 trains on them alone; teach this "
                                  "training set, or set loss.kd_lambda above 0 to train those clips on their labels")
            self.init_notes.append(f"{missing} of {total} training clips (e.g. {example}) have no stored teacher "
                                   "targets: they train on their labels only (loss.kd_lambda > 0)")
        if store.sample_rate != self.model.sample_rate:
            self.init_notes.append(f"the teacher's draws were cut at {store.sample_rate} Hz and this model reads "
                                   f"{self.model.sample_rate} Hz: crops start at the nearest sample, so the inputs "
                                   "match in time, not bit for bit")
        ignored = [f"augment.{k}" for k in ("wave_mixup", "gain_db", "roll") if getattr(cfg.augment, k)]
        if ignored:
            self.init_notes.append(f"teacher targets replay each stored draw's crop and gain, so these settings are "
                                   f"not used (the teacher never saw them): {', '.join(ignored)}; spectrogram mixup "
                                   "and SpecAugment stay")
        self.init_notes.append(f"teacher targets {folder}: {store.crops} draws per clip, top {store.meta['top_k']} "
                               f"logits of {len(store.labels)} classes; loss.kd_lambda={cfg.loss.kd_lambda:g}")
        return replay

    def _sampler(self):
        """The run's sampler; with strong.batch_share, batches hold that share of strongly labelled clips."""
        from tagger.data.sampling import BatchShareSampler

        cfg, ctx = self.config, self.ctx
        share = cfg.strong.batch_share
        if not share or self.train_frames is None:
            return build_sampler(cfg.data, self.train_targets, cfg.run.seed, ctx.rank, ctx.world_size)
        strong = np.array([self.train_frames.has(i) for i in range(len(self.train_frames))])
        if strong.all():
            raise TaggerError(f"strong.batch_share={share} mixes strongly and weakly labelled clips in each batch, "
                              "but every training clip has strong labels; set it to 0 or add weak clips (--train)")
        length = cfg.data.epoch_length or len(strong)
        return BatchShareSampler(np.flatnonzero(strong), np.flatnonzero(~strong), self.loader_batch, share, length,
                                 cfg.run.seed, ctx.rank, ctx.world_size)

    def _wrap(self, net: nn.Module) -> nn.Module:
        if wants_channels_last(self.config.run.channels_last, self.model.arch, self.ctx.device):
            to_channels_last(self.model)  # before DDP, whose gradient buckets copy the parameters' layout
        if self.ctx.distributed:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if self.config.run.compile:
            net = torch.compile(net)
        return net

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.config.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        kind = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        fused = {"fused": True} if fused_optimizer_ok(params) else {}
        return kind(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                    amsgrad=o.amsgrad, **fused)

    def _mask_fill(self) -> float:
        """AST/PSLA mask the fbank before dataset normalisation, so a masked cell becomes normalised 0."""
        frontend = self.model.frontend
        if isinstance(frontend, KaldiFbank) and frontend.config.mean is not None:
            c = frontend.config
            return (0.0 - c.mean) / (c.std * c.std_scale)
        return 0.0

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TaggerError("run.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
        return SummaryWriter(str(self.paths.tensorboard))

    # ------------------------------------------------------------------------------------------ resume

    def _resume_payload(self) -> dict:
        return {
            "format": "tagger-resume", "version": RESUME_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "state": {**asdict(self.state), "seconds": self._elapsed()},
            "source": self.source,
        }

    def save_resume(self) -> None:
        if self.main:
            with atomic_path(self.paths.resume) as tmp:
                torch.save(self._resume_payload(), tmp)

    def _load_resume(self) -> None:
        payload = read_torch_file(self.paths.resume)
        if not isinstance(payload, dict) or payload.get("format") != "tagger-resume":
            raise TaggerError(f"{self.paths.resume}: not a tagger resume file")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler and payload["scaler"]:
            self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState(**payload["state"])
        self.source = payload.get("source", self.source)
        self._reconcile_metrics()

    def _reconcile_metrics(self) -> None:
        """metrics.csv is append-only: rows the resume file knows but the CSV lacks are appended, never rewritten."""
        if not self.main:
            return
        written = 0
        if self.paths.metrics.is_file():
            with open(self.paths.metrics, newline="") as handle:
                written = max(0, sum(1 for _ in csv.reader(handle)) - 1)
        for row in self.state.rows[written:]:
            self._append_row(row)

    # ------------------------------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        cfg = self.config
        if self.main:
            for note in self.init_notes:
                console.log(note)
            console.log(self._describe())
        # one loader for the whole run: its workers (and their prefetched batches) live from epoch to epoch
        self.train_loader = make_loader(self.train_set, self.loader_batch, cfg.data.num_workers,
                                        sampler=PositionedSampler(self.sampler), drop_last=True,
                                        pin_memory=self.ctx.device.type == "cuda", persistent=True,
                                        prefetch=cfg.data.prefetch)
        self.pending = []  # (epoch, step, loss on the device) of the micro-batches not yet read back
        try:
            with self._signals(), console.progress() as bar:
                task = bar.add_task("", total=self.batches_per_epoch, rate="",
                                    visible=self.show_progress and self.main)
                while not self.state.done and not self.interrupted and self.state.epoch < cfg.run.epochs:
                    self._train_epoch(bar, task)
                if self.interrupted:
                    self._read_losses()
                    self.save_resume()
                    distributed.cleanup(self.ctx)
                    raise KeyboardInterrupt
        finally:
            self.train_loader = None  # stops the persistent workers
        if not self.state.stop_reason:
            self.state.stop_reason = "finished"
        self.state.done = True
        self.save_resume()
        if self.tensorboard:
            self.tensorboard.close()
        distributed.cleanup(self.ctx)
        last = self.state.rows[-1] if self.state.rows else {}
        return TrainResult(self.paths.dir, float(last.get("epoch", 0)), self.state.step, self.state.best,
                           self.metric, last, self.state.stop_reason, self._elapsed())

    def _describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters()) / 1e6
        source = "cached features" if self.train_source.cached else "audio"
        strong = ""
        for split, frames in (("training", self.train_frames), ("validation", self.valid_frames)):
            if frames is not None:
                grid = frames.grid
                strong += (f"{frames.count} {split} clips with strong labels ({grid.frames} frames of "
                           f"{grid.frame_seconds * 1000:g} ms per item); ")
        return (f"{self.config.model.arch} ({params:.2f} M parameters), {self.task}, {len(self.labels)} classes; "
                f"{len(self.train_source)} training clips ({source}), {len(self.valid_source)} validation clips; "
                f"{strong}"
                f"{self.steps_per_epoch} steps per epoch on {self.ctx.world_size} process(es), "
                f"device {self.ctx.device}; run folder {self.paths.dir}")

    def _train_epoch(self, bar, task) -> None:
        cfg, state = self.config, self.state
        # the sampler runs in this process: what it is set to here is what the (persistent) workers load next
        self.sampler.set_epoch(state.epoch)
        self.sampler.load_state_dict({"epoch": state.epoch, "position": state.batch * self.loader_batch})
        self.model.train()
        bar.update(task, description=f"epoch {state.epoch + 1}/{cfg.run.epochs}", completed=state.batch,
                   total=self.batches_per_epoch)
        self.window = (0, time.perf_counter())  # clips trained in this epoch and when it started, for clips/s
        for batch in self.train_loader:
            if state.batch >= self.batches_per_epoch:
                break
            self._train_batch(batch)
            self.window = (self.window[0] + self.loader_batch * self.ctx.world_size, self.window[1])
            bar.update(task, completed=state.batch)
            if not self._ends_step(state.batch - 1):
                continue
            if state.step % cfg.run.log_every_steps == 0:
                self._log_progress(bar, task)
            if cfg.run.eval_every_steps and state.step % cfg.run.eval_every_steps == 0 \
                    and state.batch < self.batches_per_epoch:
                self._log_progress(bar, task)
                self._evaluate(fraction=state.batch / self.batches_per_epoch)
            if state.step % cfg.run.save_every_steps == 0:
                self._read_losses()
                self.save_resume()
            if self._should_stop():
                self.interrupted = True
                return
            if state.done:
                return
        self._log_progress(bar, task)
        state.epoch += 1
        state.batch = 0
        self._evaluate(fraction=0.0)
        self.save_resume()

    def _log_progress(self, bar, task) -> None:
        """Every run.log_every_steps (and before validation): read the losses back, the one host sync of
        training, and show loss and clips/s."""
        self._read_losses()
        clips, start = self.window
        self.clips_per_s = clips / max(time.perf_counter() - start, 1e-9)
        loss = self.state.loss_sum / max(self.state.loss_count, 1)
        bar.update(task, rate=f"loss {loss:.4f}  lr {self._lr():.3g}  {self.clips_per_s:.1f} clips/s  "
                              f"step {self.state.step}")

    def _read_losses(self) -> None:
        """Add the pending losses to state.loss_sum one by one, in order (so the sum is the same whatever
        run.log_every_steps is), stopping at the first non-finite one before any checkpoint holds the spoilt
        weights (every save and evaluation reads the losses first)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        values = torch.stack([loss for _, _, loss in pending]).cpu().tolist()
        for (epoch, step, _), value in zip(pending, values, strict=True):
            if not math.isfinite(value):
                first, last = pending[0][1], pending[-1][1]
                seen = f"losses are read every {self.config.run.log_every_steps} steps; this read: steps {first}-{last}"
                raise TaggerError(
                    f"non-finite training loss ({value}) at epoch {epoch + 1}, step {step} ({seen}); the last good "
                    f"checkpoint stays in {self.paths.dir}; lower optim.lr or use run.precision=fp32")
            self.state.loss_sum += value
            self.state.loss_count += 1

    def _elapsed(self) -> float:
        return self.state.seconds + time.perf_counter() - self.session_start

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _set_lr(self) -> None:
        factor = lr_factor(self.config.schedule, self.state.step, self.steps_per_epoch, self.config.run.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.optim.lr * factor

    def _train_batch(self, batch: dict) -> None:
        """One micro-batch without a host sync: copies from pinned memory do not block, and the loss stays on the
        device until `_read_losses`."""
        cfg, state, device = self.config, self.state, self.ctx.device
        micro = state.epoch * self.batches_per_epoch + state.batch
        torch.manual_seed(_seed(cfg.run.seed, self.ctx.rank, micro))  # dropout, patchout, mel jitter
        rng = np.random.default_rng([cfg.run.seed, self.ctx.rank, micro, 1])
        targets = batch["target"].to(device, non_blocking=True)
        with torch.no_grad():
            if "features" in batch:
                spec = batch["features"].to(device, non_blocking=True)
            else:
                spec = self.model.frontend(batch["wave"].to(device, non_blocking=True))
            a = cfg.augment
            spec = spec_augment(spec, a.freqm, a.timem, rng, a.freq_masks, a.time_masks, self.fill)
            teacher = batch["teacher"].to(device, non_blocking=True) if "teacher" in batch else None
            has_teacher = batch["has_teacher"].to(device, non_blocking=True) if "has_teacher" in batch else None
            frames = batch["frames"].to(device, non_blocking=True) if "frames" in batch else None
            has_frames = batch["has_frames"].to(device, non_blocking=True) if "frames" in batch else None
            if a.spec_mixup != "none":
                plan = draw_spec_mixup(spec.shape[0], a.spec_mixup, a.spec_mixup_alpha, rng)
                plan.first, plan.second, plan.lam = (self._to_device(t) for t in (plan.first, plan.second, plan.lam))
                spec, targets = apply_mix(spec, plan), mix_targets(targets, plan)
                if teacher is not None:  # soft targets, mixed as probabilities (EfficientAT)
                    teacher, has_teacher = mix_known(teacher, has_teacher, plan)
                if frames is not None:  # frame targets mix like the clip targets
                    frames, has_frames = mix_known(frames, has_frames, plan)
        if state.batch % self.group == 0:  # the first micro-batch of an optimizer step
            self._set_lr()
        last_micro = self._ends_step(state.batch)
        sync = nullcontext() if last_micro or not self.ctx.distributed else self.net.no_sync()
        with sync:
            with self._autocast():
                logits = self.net(spec)
            if frames is not None:
                logits, frame_logits = logits
            loss, _ = training_loss(logits.float(), targets, self.loss_kind, teacher, has_teacher, cfg.loss.kd_lambda)
            if frames is not None:
                loss = loss + cfg.strong.frame_weight * frame_loss(frame_logits.float(), frames, has_frames)
            scaled = loss / self.group
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        self.pending.append((state.epoch, state.step, loss.detach()))
        state.batch += 1
        if last_micro:
            self._optimizer_step()
            state.step += 1

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A small tensor made on the host in this step, copied without blocking (pinned first) on CUDA."""
        if self.ctx.device.type != "cuda":
            return tensor.to(self.ctx.device)
        return tensor.pin_memory().to(self.ctx.device, non_blocking=True)

    def _ends_step(self, batch: int) -> bool:
        """Whether micro-batch `batch` (0-based in the epoch) is the last of an optimizer step."""
        return (batch + 1) % self.group == 0 or batch + 1 == self.batches_per_epoch

    def _optimizer_step(self) -> None:
        clip = self.config.optim.clip_grad
        if clip:  # else GradScaler.step unscales (inside the fused kernel, with a fused optimizer)
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _autocast(self):
        precision = self.config.run.precision
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.ctx.device.type, dtype=dtype)

    # ------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def predict_valid(self) -> tuple[np.ndarray, np.ndarray, float, float | None] | None:
        """(logits, targets, mean loss, mean frame loss or None without strong labels) over the validation set,
        gathered from every rank onto rank 0."""
        self.model.eval()
        if self.ctx.distributed:  # DDP copies rank 0's BatchNorm statistics only at the next forward: every rank
            for buffer in self.model.buffers():  # must score with the ones last.pt saves
                torch.distributed.broadcast(buffer.data, 0)
        subset = torch.utils.data.Subset(self.valid_set, range(self.ctx.rank, len(self.valid_set),
                                                               self.ctx.world_size))
        loader = make_loader(subset, self.eval_batch, self.config.data.num_workers)
        indices, logits, losses, frame_losses = [], [], [], [0.0, 0]
        for batch in loader:
            if "features" in batch:
                spec = batch["features"].to(self.ctx.device)
            else:
                spec = self.model.frontend(batch["wave"].to(self.ctx.device))
            with self._autocast():
                output = self.model.forward_features(spec)
            out = output.logits.float()
            target = batch["target"].to(self.ctx.device)
            losses.append(float(label_loss(out, target, self.loss_kind)) * len(out))
            if "frames" in batch:
                has = batch["has_frames"].to(self.ctx.device)
                frame_losses[0] += float(frame_loss(output.frame_logits.float(), batch["frames"], has)) * int(has.sum())
                frame_losses[1] += int(has.sum())
            indices.append(batch["index"].numpy())
            logits.append(out.cpu().numpy())
        self.model.train()
        mine = (np.concatenate(indices) if indices else np.zeros(0, np.int64),
                np.concatenate(logits) if logits else np.zeros((0, len(self.labels)), np.float32), sum(losses),
                *frame_losses)
        parts = distributed.gather(mine, self.ctx)
        if not self.main:
            return None
        order = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])[np.argsort(order, kind="stable")]
        frame_count = sum(p[4] for p in parts)
        frames = sum(p[3] for p in parts) / frame_count if frame_count else None  # None: no strong labels
        return scores, self.valid_targets, sum(p[2] for p in parts) / len(self.valid_set), frames

    def _evaluate(self, fraction: float) -> None:
        state = self.state
        result = self.predict_valid()
        decision = None
        if self.main:
            logits, targets, valid_loss, valid_frame_loss = result
            scores = probabilities(torch.from_numpy(logits), self.task).numpy()  # no overflow warning (numpy exp)
            truth = targets.argmax(axis=1) if self.task == "multiclass" else targets
            metrics = summarize(truth, scores, self.task)
            row = {"epoch": round(state.epoch + fraction, 4), "step": state.step,
                   "train_loss": state.loss_sum / max(state.loss_count, 1), "valid_loss": valid_loss,
                   "valid_frame_loss": "" if valid_frame_loss is None else valid_frame_loss,
                   **{k: metrics.get(k, "") for k in self.columns if k in metrics},
                   "lr": self._lr(), "clips_per_s": getattr(self, "clips_per_s", 0.0),
                   "elapsed_s": round(self._elapsed(), 2)}
            row = {k: row.get(k, "") for k in self.columns}
            decision = self._record(row)
        decision = distributed.broadcast(decision, self.ctx)
        state.loss_sum, state.loss_count = 0.0, 0
        if decision == "stop":
            state.done, state.stop_reason = True, f"early stopping: no better {self.metric} in " \
                                                  f"{self.config.run.patience} evaluations"

    def _record(self, row: dict) -> str:
        """Rank 0: note the row, save last/best checkpoints, decide about early stopping."""
        state, cfg = self.state, self.config
        lower = self.metric in ("loss", "frame_loss")
        value = row["valid_loss"] if self.metric == "loss" else row["valid_frame_loss"] if \
            self.metric == "frame_loss" else row[self.metric]
        better = (state.best is None or (value < state.best if lower else value > state.best))
        if isinstance(value, float) and math.isnan(value):
            better = False
        train_info = {"epoch": row["epoch"], "step": state.step, "metrics": row, "config": cfg.to_dict(),
                      "metric": self.metric}
        save_checkpoint(self.paths.last, self.model, self.labels, self.task, train=train_info, source=self.source)
        if cfg.run.save_every_epoch and float(row["epoch"]).is_integer():
            keep_copy(self.paths.last, self.paths.epoch(int(row["epoch"])))
        if better:
            state.best, state.best_epoch, state.since_best = float(value), row["epoch"], 0
            save_checkpoint(self.paths.best, self.model, self.labels, self.task, train=train_info, source=self.source)
        else:
            state.since_best += 1
        state.rows.append(row)
        self.save_resume()  # the resume file knows the row before the CSV does (see _reconcile_metrics)
        self._append_row(row)
        self._plot()
        if self.tensorboard:
            for key, val in row.items():
                if isinstance(val, float | int) and key not in ("epoch", "step"):
                    self.tensorboard.add_scalar(key, val, state.step)
        mark = " (best)" if better else ""
        shown = "  ".join(f"{k} {row[k]:.4f}" for k in self.columns[2:-3] if isinstance(row[k], float))
        console.log(f"epoch {row['epoch']:g} step {state.step}: {shown}{mark}")
        if cfg.run.patience and state.since_best >= cfg.run.patience:
            return "stop"
        return "go"

    def _append_row(self, row: dict) -> None:
        new = not self.paths.metrics.is_file()
        with open(self.paths.metrics, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _plot(self) -> None:
        from tagger.training.plots import plot_curves

        plot_curves(self.state.rows, self.paths.curves)

    # ------------------------------------------------------------------------------------------ signals

    @contextmanager
    def _signals(self):
        """First Ctrl-C (or SIGTERM): finish the step, save, exit. A second Ctrl-C stops at once."""
        def request(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True
            if self.main:
                console.log("stopping after this step (Ctrl-C again to stop at once) ...")

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in previous:
                signal.signal(s, request)
        except ValueError:  # not the main thread (e.g. a notebook worker): keep the defaults
            previous = {}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _should_stop(self) -> bool:
        """Whether any rank was asked to stop. Ranks agree every run.log_every_steps steps (they are at the same
        step, so they decide together): an all-reduce each step would make every step wait for the host."""
        if not self.ctx.distributed:
            return self.stop_requested
        if self.state.step % self.config.run.log_every_steps and self.state.batch < self.batches_per_epoch:
            return False  # checked every N steps and at the end of each epoch
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.ctx.device)  # NCCL: on the GPU
        torch.distributed.all_reduce(flag)
        return bool(flag.item() > 0)


# ---------------------------------------------------------------------------------------------- entry points


def data_spec(path: str | Path, folds: list[int] | None = None, audio_dir: str | Path | None = None,
              strong: str | Path | None = None, label_map: str | Path | None = None) -> dict:
    """How run.json records a data set: absolute paths, so --resume works from any folder. `strong`: a strong-label
    file for its clips (`label_map` maps its labels onto the run's classes)."""
    spec = {"path": str(Path(path).resolve()), "folds": folds,
            "audio_dir": str(Path(audio_dir).resolve()) if audio_dir else None}
    if strong is not None:
        if not Path(strong).is_file():
            raise TaggerError(f"strong-label file {strong} does not exist; check the path")
        spec["strong"] = {"path": str(Path(strong).resolve()),
                          "label_map": str(Path(label_map).resolve()) if label_map else None}
    return spec


def train(config: TrainConfig, train: dict, valid: dict, out_dir: str | Path,
          labels_path: str | Path | None = None, show_progress: bool = True) -> TrainResult:
    """Start a new run in `out_dir`; `train`/`valid` come from data_spec(). A folder that already holds a run is
    refused, except by the torchrun job that started it (an elastic restart after `--max-restarts`, or a
    requeued job with the same `--rdzv-id`): that job continues it from resume.pt."""
    paths = RunPaths(Path(out_dir))
    context = distributed.setup(config.run.device)
    if distributed.decide(lambda: _continues_own_run(paths, config, train, valid), context):
        if context.is_main:
            console.log(f"{out_dir} was started by this torchrun job (rendezvous id {distributed.job_id()}); "
                        "continuing it from its resume file")
        return resume(paths.dir, show_progress)
    trainer = Trainer(config, paths.dir, train, valid, Path(labels_path) if labels_path else None,
                      show_progress=show_progress)
    if trainer.main:
        paths.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths.config, to_toml(config))
        atomic_write_json(paths.run, {"train": train, "valid": valid, "task": trainer.task,
                                      "model_kwargs": trainer.model.model_kwargs, "job": distributed.job_id()})
        trainer.labels.write_csv(paths.dir / "labels.csv")
        trainer.save_resume()
    return trainer.fit()


def _continues_own_run(paths: RunPaths, config: TrainConfig, train: dict, valid: dict) -> bool:
    """Rank 0, before anything is written: False for a fresh folder, True for one this torchrun job started
    with these settings; any other run in the folder is refused, so nobody's run is overwritten or hijacked."""
    import json

    if not (paths.resume.exists() or paths.metrics.exists()):
        return False
    job = distributed.job_id()
    try:
        saved = json.loads(paths.run.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    if job is None or saved.get("job") != job:
        static = job is None and "TORCHELASTIC_RUN_ID" in os.environ
        hint = "; a torchrun restart continues its own run only with --rdzv-id (or --standalone)" if static else ""
        raise TaggerError(f"{paths.dir} already holds a run; continue it with `tagger train --resume {paths.dir}` "
                          f"or choose another --out{hint}")
    changed = [name for name, spec in (("--train", train), ("--valid", valid)) if saved.get(name[2:]) != spec]
    # data.micro_batches is left out: the first start may have split batches to fit memory (same optimizer steps)
    before = _flat(config_from_dict(read_recipe(str(paths.config))).to_dict())
    changed += [key for key, value in _flat(config.to_dict()).items()
                if key != "data.micro_batches" and before.get(key) != value]
    if changed:
        raise TaggerError(f"{paths.dir} was started by this torchrun job ({job}) with other settings "
                          f"({', '.join(changed)}); restart it as it was started, or choose another --out")
    return True


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume(run_dir: str | Path, show_progress: bool = True) -> TrainResult:
    """Continue the run in `run_dir` from its resume file, with its saved config and data paths."""
    import json

    paths = RunPaths(Path(run_dir))
    if not paths.resume.is_file() or not paths.run.is_file():
        raise TaggerError(f"{run_dir} is not a run folder with a resume file; start one with `tagger train --out`")
    config = config_from_dict(read_recipe(str(paths.config)))
    run = json.loads(paths.run.read_text(encoding="utf-8"))
    trainer = Trainer(config, paths.dir, run["train"], run["valid"], paths.dir / "labels.csv",
                      saved_kwargs=run["model_kwargs"], show_progress=show_progress)
    state = trainer.state
    if state.done and (state.stop_reason != "finished" or state.epoch >= config.run.epochs):
        raise TaggerError(f"{run_dir} already ended ({state.stop_reason} after {state.epoch} epochs); raise "
                          "run.epochs in its config.toml to train further")
    state.done, state.stop_reason = False, ""
    if trainer.main:
        console.log(f"resuming {run_dir} at epoch {trainer.state.epoch + 1}, step {trainer.state.step}")
    return trainer.fit()


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv (values as text, as written)."""
    path = RunPaths(Path(run_dir)).metrics
    if not path.is_file():
        raise TaggerError(f"{run_dir} has no metrics.csv yet; is it a run folder?")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
