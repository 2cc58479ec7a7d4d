"""A checkpoint loaded for scoring audio: device, precision, input-length policy, probabilities out.

predict, evaluate and the benchmarks all score audio through `Scorer`, so they share one answer to "what does
this family do with a clip of this length" and one rule for turning logits into probabilities.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch

from tagger import audio
from tagger.errors import TaggerError
from tagger.inference.events import RULE_KEY, EventRule, read_record, rule_from_record, rule_record
from tagger.labels import LabelSet
from tagger.models.base import probabilities
from tagger.models.policy import InputPolicy, frame_seconds, input_policy

Wave = np.ndarray | tuple[np.ndarray, ...]  # one waveform, or one per sample rate (multi-rate ensembles)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_CHECKPOINT_ENV = "TAGGER_MODEL"
SUGGESTED_RELEASE = "efficientat-mn10"  # small and fast on a CPU, and as good as the transformers of 2021
# Families whose networks are convolutions + BatchNorm: FastInference (BN folded, fused oneDNN) pays off on CPU.
_FAST_FAMILIES = ("panns", "psla", "efficientat")
_FAST_AFTER = 2  # trace a shape on its second use: one-off shapes (a single file) skip the tracing cost


@dataclass
class Scores:
    """Model outputs for a batch, as numpy: logits and probabilities (B, C), embedding (B, D), frame
    probabilities (B, T, C) or None."""

    logits: np.ndarray
    probabilities: np.ndarray
    embedding: np.ndarray
    frame_probabilities: np.ndarray | None


class Scorer:
    """A model in eval mode on a device, scoring float32 waveforms at its own sample rate.

    An ensemble whose members need different rates takes one waveform per rate (`rates`, highest first): a
    "wave" is then a tuple of arrays. `read`, `crop`, `windows`, `pad`, `length` and `stack` hide the difference
    from predict and evaluate.
    """

    def __init__(self, model, labels: LabelSet, task: str, device: str = "auto", precision: str = "fp32",
                 fast: bool = True, source: str = "", input_settings: Mapping[str, str | None] | None = None,
                 event_record: dict | None = None):
        """input_settings: per-call choices of how clips of other lengths are taken, e.g. {"short_input": "stretch"} for
        HTS-AT (`model.input_settings`); None keeps the checkpoint's own. event_record: the event rule stored with
        the checkpoint (`store_event_rule`), thresholds by class name."""
        if precision not in PRECISIONS:
            raise TaggerError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if input_settings:
            model.configure_inputs(**input_settings)
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.labels, self.task, self.precision, self.source = labels, task, precision, source
        self.event_record = event_record
        self.policy = input_policy(model)
        self.rates: tuple[int, ...] = tuple(getattr(model, "rates", (model.sample_rate,)))
        self._shortest = {rate: self._policy_at(rate).min_samples for rate in self.rates}
        self._fast = None
        if fast and precision == "fp32" and self.device.type == "cpu":
            self._fast = _fast_runner(self.model)
        self._shape_uses: Counter = Counter()

    @classmethod
    def load(cls, path: str | Path | None, device: str = "auto", precision: str = "fp32", fast: bool = True,
             input_settings: Mapping[str, str | None] | None = None) -> Scorer:
        from tagger.checkpoint import load_model

        path = default_checkpoint() if path is None else model_path(path)
        model, meta = load_model(path)
        return cls(model, meta["labels"], meta.get("task", "multilabel"), device, precision, fast, str(path),
                   input_settings, meta.get(RULE_KEY))

    @property
    def event_rule(self) -> EventRule | None:
        """The event rule stored with the checkpoint, its thresholds matched to this model's classes by name
        (classes it does not name get EventRule's defaults); None when there is none."""
        if self.event_record is None:
            return None
        return rule_from_record(self.event_record, self.labels.names, EventRule(),
                                f"{self.source}: its stored event rule")

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def frame_level(self) -> bool:
        """Whether the model gives frame_logits (an opt-in frame output or an ensemble says so itself)."""
        from tagger.models import has_frame_output

        return has_frame_output(self.model)

    @property
    def frame_seconds(self) -> float:
        """Spacing of frame_probabilities rows: one front-end hop."""
        own = getattr(self.model, "frame_seconds", None)
        return float(own) if own is not None else frame_seconds(self.model)

    # ---- reading audio: one array at the model's rate, or a tuple with one per rate

    @property
    def multirate(self) -> bool:
        return len(self.rates) > 1

    def read(self, path) -> Wave:
        """The whole file at the model's rate(s); decoded once, resampled to each rate from the file's own."""
        if not self.multirate:
            return audio.load(path, self.sample_rate)
        native, rate = audio.load_with_rate(path)
        return tuple(audio.resample(native, rate, r) for r in self.rates)

    def crop(self, wave: Wave, seconds: float) -> Wave:
        """Crop or zero-pad to `seconds` from the start (evaluation protocols).

        A model whose front-end pads to a fixed frame count itself (AST, PSLA) is only cropped: the official
        loaders pad the fbank, where padded frames are -mean / std, not the log of silence."""
        fixed = getattr(getattr(self.model.frontend, "config", None), "target_length", None) is not None
        if fixed:
            return self._each(wave, lambda w, rate: w[..., : round(seconds * rate)])
        return self._each(wave, lambda w, rate: audio.crop_or_pad(w, round(seconds * rate)))

    def pad(self, wave: Wave) -> Wave:
        """Zero-pad the end of a too-short clip up to the policy's minimum, as the windowed official scripts do."""

        def pad_one(one: np.ndarray, rate: int) -> np.ndarray:
            missing = self._shortest[rate] - one.shape[-1]
            return one if missing <= 0 else np.pad(one, [(0, 0)] * (one.ndim - 1) + [(0, missing)])

        return self._each(wave, pad_one)

    def length(self, wave: Wave) -> int | tuple[int, ...]:
        """What clips must share to be batched together."""
        return wave.shape[-1] if not self.multirate else tuple(w.shape[-1] for w in wave)

    def stack(self, waves: list[Wave]) -> Wave:
        if not self.multirate:
            return np.stack(waves)
        return tuple(np.stack([w[k] for w in waves]) for k in range(len(self.rates)))

    def windows(self, path, window: float, hop: float, block_seconds: float) -> Iterator[tuple[float, Wave]]:
        """(start, wave) every hop, streamed: each rate reads the file once, in blocks. The window that runs past
        the end holds only the audio that is left, so the model takes it by its own short-clip rule (AST/PSLA pad
        the fbank, HTS-AT tiles or stretches) instead of scoring digital silence."""
        if not self.multirate:
            yield from audio.iter_windows(path, self.sample_rate, window, hop, block_seconds, last="short")
            return
        yield from self._zip_windows([audio.iter_windows(path, r, window, hop, block_seconds, last="short")
                                      for r in self.rates])

    def array_windows(self, wave: Wave, window: float, hop: float) -> Iterator[tuple[float, Wave]]:
        if not self.multirate:
            yield from audio.array_windows(wave, self.sample_rate, window, hop, last="short")
            return
        yield from self._zip_windows([audio.array_windows(w, r, window, hop, last="short")
                                      for w, r in zip(wave, self.rates, strict=True)])

    def _zip_windows(self, streams: list) -> Iterator[tuple[float, Wave]]:
        """One window per rate at each start; a rate whose rounding gives one window fewer gets silence there, as
        long as the other rates' window."""
        for items in zip_longest(*streams):
            start, seconds = next((item[0], item[1].size / rate) for item, rate in zip(items, self.rates, strict=True)
                                  if item is not None)
            yield start, tuple(item[1] if item is not None else np.zeros(round(seconds * rate), np.float32)
                               for item, rate in zip(items, self.rates, strict=True))

    def _each(self, wave: Wave, change: Callable[[np.ndarray, int], np.ndarray]) -> Wave:
        if not self.multirate:
            return change(wave, self.sample_rate)
        return tuple(change(w, rate) for w, rate in zip(wave, self.rates, strict=True))

    def _policy_at(self, rate: int) -> InputPolicy:
        own = getattr(self.model, "input_policy", None)
        return own(rate) if callable(own) else self.policy

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return probabilities(logits, self.task)

    @torch.inference_mode()
    def __call__(self, waves: np.ndarray, frames: bool = True) -> Scores:
        """Score a (B, S) batch of equal-length waveforms (S >= policy.min_samples).

        frames=False skips the (B, T, C) frame probabilities of frame-level models when nobody reads them.
        """
        if self.multirate:
            wave = tuple(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(self.device) for w in waves)
        else:
            wave = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
        with self._autocast():
            out = self._forward(wave)
        wanted = frames and out.frame_logits is not None
        frames = self.probabilities(out.frame_logits).cpu().numpy() if wanted else None
        logits = out.logits.float()
        return Scores(logits.cpu().numpy(), self.probabilities(logits).cpu().numpy(),
                      out.embedding.float().cpu().numpy(), frames)

    def _forward(self, wave: torch.Tensor):
        if self._fast is None:
            return self.model(wave)
        shape = tuple(wave.shape) if isinstance(wave, torch.Tensor) else tuple(tuple(w.shape) for w in wave)
        self._shape_uses[shape] += 1
        if self._shape_uses[shape] < _FAST_AFTER:
            return self.model(wave)
        return self._fast(wave)

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def _fast_runner(model) -> Callable | None:
    """FastInference for a CNN family, or an ensemble running its CNN members through it; None if it would not
    pay off."""
    from tagger.models.inference import FastInference

    if model.family in _FAST_FAMILIES:
        return FastInference(model)
    members = getattr(model, "members", None)
    if members is None or not any(m.family in _FAST_FAMILIES for m in members):
        return None
    runners = [FastInference(m) if m.family in _FAST_FAMILIES else m for m in members]
    return partial(model, runners=runners)


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise TaggerError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TaggerError("--device cuda: no CUDA device is available here; use --device cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def model_path(model: str | Path) -> Path:
    """A checkpoint path as given, or the cached checkpoint of a release `tagger pull` fetched ("efficientat-mn10")."""
    path = Path(model)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    from tagger.models.releases import find_release, pulled_path

    try:
        release = find_release(str(model))
    except TaggerError:
        return path  # not a release name either: the loader says the file is missing
    pulled = pulled_path(release.name)
    if not pulled.is_file():
        raise TaggerError(f"{model}: the release {release.name} is not downloaded yet; "
                          f"run `tagger pull {release.name}`")
    return pulled


def store_event_rule(model: str | Path, rule: EventRule | str | os.PathLike | None) -> Path:
    """Store an event rule in a checkpoint or ensemble file (or a pulled release's, by name), in place and
    atomically; `predict --events`, `evaluate --strong` and `Tagger.predict(events=True)` then use it when no
    event option is given. `rule`: an EventRule (one threshold, or one per class of the model), a rule file from
    `evaluate --strong --tune-rule`, or None to remove a stored rule. Returns the file written."""
    from datetime import datetime, timezone

    from tagger.checkpoint import update_checkpoint

    if rule is not None and not isinstance(rule, (EventRule, str, os.PathLike)):
        raise TaggerError(f"event rule {rule!r}: give an EventRule, a rule file's path, or None (to remove one)")
    path = model_path(model)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    given = None if rule is None or isinstance(rule, EventRule) else {**read_record(rule), "file": str(rule)}

    def change(payload: dict) -> dict:
        if rule is None:
            return {RULE_KEY: None}
        names = LabelSet.from_list_of_dicts(payload["labels"]).names
        if given is None:
            record = rule_record(rule, names, {"date": when})
        else:
            record = {"date": when, **given}
        rule_from_record(record, names, EventRule(), f"{rule} for {path}")  # fits this model, or a one-line error
        return {RULE_KEY: record}

    return update_checkpoint(path, change)


def default_checkpoint() -> Path:
    """$TAGGER_MODEL, else the model `tagger pull` made the default, else checkpoints/default.pt beside the
    package; a message naming the command to run when there is none."""
    from tagger.models.releases import default_model, default_name, pulled_path

    named = os.environ.get(DEFAULT_CHECKPOINT_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise TaggerError(f"${DEFAULT_CHECKPOINT_ENV}={named}: checkpoint not found; fix or unset it")
        return path
    pulled = default_model()
    if pulled is not None:
        return pulled
    shipped = Path(__file__).resolve().parents[2] / "checkpoints" / "default.pt"
    if shipped.is_file():
        return shipped
    gone = default_name()
    if gone is not None:
        raise TaggerError(f"the default model {gone} is gone ({pulled_path(gone)}); run `tagger pull {gone}` again, "
                          "or pass --model")
    raise TaggerError(
        f"no --model given and no default model yet: run `tagger pull {SUGGESTED_RELEASE}` (the official EfficientAT "
        "mn10, AudioSet mAP 0.471, 5 M parameters; it becomes the default), or pass --model ckpt.pt (a checkpoint "
        f"from `tagger train` or `tagger import-checkpoint`; ${DEFAULT_CHECKPOINT_ENV} works too)"
    )
