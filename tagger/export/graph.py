"""Export forms of the front-ends (one vectorised expression, no block loops) and of a model's outputs."""

from __future__ import annotations

import math
from copy import deepcopy

import torch
from torch import Tensor, nn

from tagger.errors import TaggerError

OUTPUTS = ("logits", "probabilities", "embedding", "frame_logits")


def _frame(wave: Tensor, length: int, hop: int) -> Tensor:
    """(B, S) -> (B, T, length) frames every `hop` samples, as a gather: exportable with a symbolic S."""
    count = (wave.shape[-1] - length) // hop + 1
    index = torch.arange(count, device=wave.device).unsqueeze(1) * hop + torch.arange(length, device=wave.device)
    return wave[:, index]


def _power_spectrum(frames: Tensor) -> Tensor:
    """|rfft|^2 of the last axis; the FFT exports as ONNX DFT."""
    spec = torch.fft.rfft(frames)
    return spec.real.square() + spec.imag.square()


def _reflect(wave: Tensor, half: int) -> Tensor:
    """Reflect-pad both ends by `half` samples, as torch.stft(center=True) does."""
    return nn.functional.pad(wave.unsqueeze(1), (half, half), mode="reflect").squeeze(1)


class _GraphFrontend(nn.Module):
    """The arithmetic of a tagger front-end in eval mode as one vectorised expression of the waveform.

    The front-ends in tagger.frontends work on cache-sized blocks of frames with in-place kernels, so their
    Python control flow depends on the clip length and batch size; an exporter would freeze both. These
    modules compute the same features (to float32 rounding) with shape-independent ops.
    """

    def __init__(self, source: nn.Module):
        super().__init__()
        self.config = source.config
        self.name = source.name

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def raw_frames(self, samples: int) -> int:
        """Frames of a clip of `samples` before any crop or pad to a fixed length."""
        raise NotImplementedError

    def fixed_frames(self) -> int | None:
        """The frame count every clip is cropped or padded to (AST / PSLA), else None."""
        return None


class _KaldiGraph(_GraphFrontend):
    def __init__(self, source: nn.Module):
        super().__init__(source)
        self.frame_length, self.frame_shift, self.n_fft = source.frame_length, source.frame_shift, source.n_fft
        self.register_buffer("window", source.window.detach().clone(), persistent=False)
        self.register_buffer("mel_weight", source.mel_weight.detach().T.contiguous(), persistent=False)

    def raw_frames(self, samples: int) -> int:
        return 1 + (samples - self.frame_length) // self.frame_shift

    def fixed_frames(self) -> int | None:
        return self.config.target_length

    def forward(self, wave: Tensor) -> Tensor:
        c = self.config
        if c.subtract_mean:
            wave = wave - wave.mean(-1, keepdim=True)
        x = _frame(wave, self.frame_length, self.frame_shift)
        if c.remove_dc_offset:
            x = x - x.mean(-1, keepdim=True)
        previous = torch.cat([x[..., :1], x[..., :-1]], -1)
        x = (x - c.preemphasis * previous) * self.window
        x = nn.functional.pad(x, (0, self.n_fft - self.frame_length))
        mel = torch.matmul(_power_spectrum(x), self.mel_weight)
        spec = mel.clamp_min(float(torch.finfo(torch.float32).eps)).log().transpose(1, 2)
        if c.target_length is not None:  # pad with zeros past the end, then cut: no branch on the length
            spec = torch.cat([spec, spec.new_zeros(spec.shape[0], spec.shape[1], c.target_length)], -1)
            spec = spec[..., : c.target_length]
        if c.mean is not None:
            spec = (spec - c.mean) / (c.std * c.std_scale)
        return spec


class _PasstGraph(_GraphFrontend):
    def __init__(self, source: nn.Module):
        super().__init__(source)
        self.register_buffer("window", source.window.detach().clone(), persistent=False)
        self.register_buffer("mel_basis", source.mel_basis.detach().T.contiguous(), persistent=False)

    def raw_frames(self, samples: int) -> int:
        return 1 + (samples - 1) // self.config.hop_length

    def forward(self, wave: Tensor) -> Tensor:
        c = self.config
        x = wave[:, 1:] - c.preemphasis * wave[:, :-1]
        x = _frame(_reflect(x, c.n_fft // 2), c.n_fft, c.hop_length) * self.window
        mel = torch.matmul(_power_spectrum(x), self.mel_basis)
        return ((mel + c.log_offset).log() + c.norm_shift).div(c.norm_scale).transpose(1, 2)


class _LogMelGraph(_GraphFrontend):
    def __init__(self, source: nn.Module):
        super().__init__(source)
        self.register_buffer("window", source.window.detach().clone(), persistent=False)
        self.register_buffer("melW", source.melW.detach().clone(), persistent=False)

    def raw_frames(self, samples: int) -> int:
        return 1 + samples // self.config.hop_length

    def forward(self, wave: Tensor) -> Tensor:
        c = self.config
        x = _frame(_reflect(wave, c.n_fft // 2), c.n_fft, c.hop_length) * self.window
        db = 10.0 * torch.log10(torch.matmul(_power_spectrum(x), self.melW).clamp_min(c.amin))
        offset = 10.0 * math.log10(max(c.amin, c.ref))
        if offset != 0.0:
            db = db - offset
        db = db.transpose(1, 2)
        if c.top_db is not None:
            db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - c.top_db)
        return db


class _WaveformGraph(_GraphFrontend):
    def raw_frames(self, samples: int) -> int:
        return samples

    def forward(self, wave: Tensor) -> Tensor:
        return wave


_GRAPHS: dict[str, type[_GraphFrontend]] = {
    "kaldi-fbank": _KaldiGraph,
    "passt-mel": _PasstGraph,
    "panns-logmel": _LogMelGraph,
    "ced-mel": _LogMelGraph,  # the same STFT log-mel, with CED's HTK banks (held by the front-end) and top_db per clip
    "waveform": _WaveformGraph,
}


def graph_frontend(frontend: nn.Module) -> nn.Module:
    """An exportable module computing `frontend`'s eval-mode features (same buffers, no block loops)."""
    name = getattr(frontend, "name", type(frontend).__name__)
    if name not in _GRAPHS:
        raise TaggerError(f"front-end {name!r} has no exportable form; known: {', '.join(_GRAPHS)}")
    return _GRAPHS[name](frontend).eval()


# --------------------------------------------------------------------------------------------- graphs


def exportable(model: nn.Module) -> nn.Module:
    """A copy of `model` whose front-end, and any front-end module inside its network (the log-mel branch of
    Wavegram-Logmel-Cnn14), is replaced by its graph_frontend form. The original stays untouched."""
    from tagger.frontends import FRONTENDS

    copy = deepcopy(model).eval()
    kinds = tuple(FRONTENDS.values())
    swaps = [name for name, module in copy.named_modules() if name and isinstance(module, kinds)]
    for name in swaps:
        parent_name, _, attribute = name.rpartition(".")
        parent = copy.get_submodule(parent_name) if parent_name else copy
        setattr(parent, attribute, graph_frontend(getattr(parent, attribute)))
    return copy


class _Outputs(nn.Module):
    """waveform (or, with features=True, front-end features) -> (logits, probabilities, embedding
    [, frame_logits]) as a tuple of tensors, the form exporters take."""

    def __init__(self, model: nn.Module, task: str, features: bool = False):
        super().__init__()
        self.model, self.task, self.features = model, task, features

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.model.forward_features(x if self.features else self.model.frontend(x))
        scores = out.logits.softmax(-1) if self.task == "multiclass" else out.logits.sigmoid()
        outputs = (out.logits, scores, out.embedding)
        return outputs if out.frame_logits is None else (*outputs, out.frame_logits)
