"""The HEAR 2021 API (https://hearbenchmark.com/hear-api.html) for tagger checkpoints and ensembles.

hear-eval-kit embeds its tasks through three functions of a module: `load_model`, `get_scene_embeddings` and
`get_timestamp_embeddings`; this module is that module for tagger (`python3 -m heareval.embeddings.runner
tagger.hear --model model.pt`, docs/hear.md). Scene embeddings are the clip embeddings `Tagger.embed` gives;
timestamp embeddings are the clip embeddings of short windows centred on evenly spaced timestamps. All audio is
scored by `inference.predict.predict_arrays`, as files of the same audio would be.

It may import tagger.api, tagger.inference and tagger.errors (it needs only the last two), never the CLI.
"""

from __future__ import annotations

import math
from itertools import chain

import numpy as np
import torch

from tagger.errors import TaggerError
from tagger.inference.predict import PredictOptions, predict_arrays
from tagger.inference.runtime import Scorer

__all__ = ["HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]

# HEAR asks for timestamps at most 50 ms apart: its event and onset tasks are scored with a 50 ms tolerance.
DEFAULT_HOP_MS = 50.0
# 1 s windows: longer than every family's shortest input (0.64 s at most, PANNs Res1dNet), so no window is padded
# up to the minimum and its centre stays the timestamp; short enough that an embedding says what sounds near its
# timestamp (a sound event, a note onset); far below every family's longest input (10 s).
DEFAULT_WINDOW_MS = 1000.0
DEFAULT_BATCH_SIZE = 16  # clips or windows per forward pass; raise it on a GPU


class HearModel(torch.nn.Module):
    """A tagger checkpoint or ensemble behind the HEAR API; make one with `load_model`.

    sample_rate: the rate HEAR must give audio at (the model's). scene_embedding_size and timestamp_embedding_size:
    D, the model's clip embedding size (both the same). hop_ms / window_ms: the timestamp grid and the window
    embedded at each timestamp. A torch Module holding the network, so `.to(device)` (which hear-eval-kit calls
    after load_model) moves it; it never trains (`train()` keeps it in eval mode).
    """

    def __init__(self, scorer: Scorer, hop_ms: float, window_ms: float, batch_size: int):
        super().__init__()
        rate = scorer.sample_rate
        for name, value in (("hop_ms", hop_ms), ("window_ms", window_ms)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise TaggerError(f"{name} must be a positive number of milliseconds, got {value!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TaggerError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.net = scorer.model
        self._scorer = scorer
        self.sample_rate = int(rate)
        self.hop_samples = round(hop_ms * rate / 1000)
        self.window_samples = 2 * round(window_ms * rate / 2000)  # even, so each window's centre is a sample
        self.batch_size = batch_size
        if self.hop_samples < 1:
            raise TaggerError(f"hop_ms={hop_ms:g} is shorter than one sample at {rate} Hz")
        if self.hop_samples > self.window_samples:
            raise TaggerError(f"hop_ms={hop_ms:g} is longer than window_ms={window_ms:g}: windows would skip audio")
        policy = scorer.policy
        if self.window_samples < policy.min_samples:
            raise TaggerError(f"window_ms={window_ms:g} is shorter than the model's shortest input "
                              f"({1000 * policy.min_samples / rate:.0f} ms)")
        if policy.window_samples is not None and self.window_samples > policy.window_samples:
            raise TaggerError(f"window_ms={window_ms:g} is longer than the model's input "
                              f"({1000 * policy.window_samples / rate:.0f} ms)")
        silence = np.zeros(self.window_samples, np.float32)
        size = int(next(predict_arrays(scorer, [silence], rate)).embedding.shape[-1])
        self.scene_embedding_size = self.timestamp_embedding_size = size
        self.eval()

    @property
    def hop_ms(self) -> float:
        """Spacing of the timestamps: hop_ms as asked, rounded to whole samples."""
        return 1000 * self.hop_samples / self.sample_rate

    @property
    def window_ms(self) -> float:
        return 1000 * self.window_samples / self.sample_rate

    def scorer(self) -> Scorer:
        """The scorer, on the device the network is on now (rebuilt there after a `.to(device)`)."""
        first = next(chain(self.net.parameters(), self.net.buffers()), None)
        old = self._scorer
        if first is not None and first.device.type != old.device.type:
            self._scorer = Scorer(self.net, old.labels, old.task, first.device.type, old.precision, source=old.source)
        return self._scorer

    def train(self, mode: bool = True) -> HearModel:
        return super().train(False)

    def __repr__(self) -> str:  # one line: hear-validator prints the model
        return (f"HearModel({self._scorer.source!r}: {self.net.arch or 'ensemble'}, {self.sample_rate} Hz, "
                f"D={self.scene_embedding_size}, hop {self.hop_ms:g} ms, window {self.window_ms:g} ms)")


def load_model(model_file_path: str = "", *, device: str = "auto", precision: str = "fp32",
               hop_ms: float = DEFAULT_HOP_MS, window_ms: float = DEFAULT_WINDOW_MS,
               batch_size: int = DEFAULT_BATCH_SIZE) -> HearModel:
    """Load a tagger checkpoint or ensemble (.pt) for HEAR; "" loads the default model, as `tagger.load(None)`.

    device: auto (CUDA when there is one), cpu or cuda. precision: fp32, bf16 or fp16 (autocast).
    hop_ms: timestamp spacing (50 ms, HEAR's recommended maximum). window_ms: the audio embedded at each
    timestamp (1000 ms: longer than every family's shortest input, short enough to stay local).
    batch_size: clips or windows per forward pass (16). hear-eval-kit passes these with --model-options.
    """
    path = None if model_file_path in ("", None) else str(model_file_path)
    return HearModel(Scorer.load(path, device=device, precision=precision), hop_ms, window_ms, batch_size)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """(n_sounds, D) float32 on the audio's device: each clip's embedding, as `Tagger.embed` gives it (the whole
    clip in one pass, or the mean over the model's own windows for clips longer than its input).

    audio: (n_sounds, n_samples) float samples in [-1, 1] at `model.sample_rate`.
    """
    waves = _waves(audio)
    results = predict_arrays(model.scorer(), list(waves), model.sample_rate,
                             PredictOptions(batch_size=model.batch_size))
    rows = [result.embedding for result in results]
    embeddings = np.stack(rows) if rows else np.zeros((0, model.scene_embedding_size), np.float32)
    return _tensor(embeddings, audio.device)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """((n_sounds, T, D) embeddings, (n_sounds, T) timestamps in ms), float32 on the audio's device.

    Timestamps are 0, hop, 2 hop, ... up to the clip's end: T = n_samples // hop_samples + 1, the same for every
    clip. The embedding at a timestamp is the model's clip embedding of a `window_ms` window centred on it; the
    clip is zero-padded by half a window at both ends, so windows at the edges are centred too. No tagger family
    gives frame-level embeddings (HTS-AT and PANNs' decision-level models have frame scores only), so a window's
    clip embedding is the finest there is. Windows are scored `batch_size` at a time.

    audio: (n_sounds, n_samples) float samples in [-1, 1] at `model.sample_rate`.
    """
    waves = _waves(audio)
    sounds, samples = waves.shape
    rate, hop, window = model.sample_rate, model.hop_samples, model.window_samples
    count = samples // hop + 1
    length = (count - 1) * hop + window  # exactly `count` full windows, the k-th centred on sample k * hop
    half = window // 2
    kept = min(samples, length - half)  # a hop over half a window leaves a tail no window reaches
    padded = np.zeros((sounds, length), np.float32)
    padded[:, half:half + kept] = waves[:, :kept]
    options = PredictOptions(window=window / rate, hop=hop / rate, per_window=True, batch_size=model.batch_size)
    rows = [np.stack([w.embedding for w in result.windows[:count]])
            for result in predict_arrays(model.scorer(), list(padded), rate, options)]
    embeddings = np.stack(rows) if rows else np.zeros((0, count, model.timestamp_embedding_size), np.float32)
    timestamps = np.tile(np.arange(count) * (1000 * hop / rate), (sounds, 1))
    return _tensor(embeddings, audio.device), _tensor(timestamps, audio.device)


def _waves(audio) -> np.ndarray:
    """(n_sounds, n_samples) float32 on the CPU, or a one-line TaggerError saying what is wrong."""
    if not isinstance(audio, torch.Tensor):
        raise TaggerError(f"audio must be a torch.Tensor of shape (n_sounds, n_samples), got {type(audio).__name__}")
    if audio.ndim != 2:
        raise TaggerError(f"audio must have shape (n_sounds, n_samples), got {tuple(audio.shape)}")
    if not audio.is_floating_point():
        raise TaggerError(f"audio must hold float samples in [-1, 1], got {audio.dtype}")
    if audio.shape[1] == 0:
        raise TaggerError("audio has no samples (n_samples is 0)")
    waves = audio.detach().to("cpu", torch.float32).numpy()
    if not np.isfinite(waves).all():
        raise TaggerError("audio holds NaN or infinite samples")
    return waves


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
