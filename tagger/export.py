"""Export a tagger checkpoint to ONNX, TorchScript or safetensors, each checked against the PyTorch model."""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tagger.errors import TaggerError
from tagger.fileio import atomic_path
from tagger.version import __version__

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "MIN_OPSET",
    "OUTPUTS",
    "TOLERANCE",
    "ExportReport",
    "export_model",
    "exportable",
    "graph_frontend",
    "load_safetensors",
    "parity_waveform",
    "read_metadata",
]

FORMATS = ("onnx", "torchscript", "safetensors")
# The front-ends' FFT becomes the ONNX DFT operator (opset 17 and later); torch.onnx writes opset 18 or later.
MIN_OPSET = 18
DEFAULT_OPSET = 18
TOLERANCE = 1e-4
DEFAULT_SECONDS = 10.0
INPUT_NAME = "waveform"
FEATURES_NAME = "features"
OUTPUTS = ("logits", "probabilities", "embedding", "frame_logits")
_INSTALL_HINT = "pip install 'tagger[export]'"
_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
_TORCHSCRIPT_META = "tagger.json"


@dataclass
class ExportReport:
    """What export_model wrote and how well the written artefact matches the PyTorch model."""

    path: Path
    format: str
    files: list[Path]  # everything written, `path` first (ONNX with a separate front-end writes two)
    size_bytes: int  # all files together
    input_name: str
    input_shape: list[int | str]  # "batch" / "samples" for dynamic axes, else the fixed size
    sample_rate: int
    seconds: float  # the export (and check) length
    min_samples: int | None  # the shortest (and longest) input the graph accepts; None: any
    max_samples: int | None
    outputs: list[str]
    frontend: str
    frontend_in_graph: bool  # False: `files[1]` holds the front-end, `path` takes features
    opset: int | None
    max_abs_diff: float | None  # None when check=False
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """One flat record for the CLI's table / JSON / CSV output."""
        if self.format == "safetensors":
            frontend = "weights only"
        else:
            frontend = "inside" if self.frontend_in_graph else f"separate ({self.files[1].name})"
        return {
            "path": str(self.path),
            "format": self.format,
            "size_MB": round(self.size_bytes / 1e6, 3),
            "input": f"{self.input_name} ({', '.join(map(str, self.input_shape))})",
            "sample_rate": self.sample_rate,
            "frontend": f"{self.frontend}: {frontend}",
            "opset": self.opset if self.opset is not None else "",
            "outputs": ", ".join(self.outputs),
            "max_abs_diff": "not checked" if self.max_abs_diff is None else float(f"{self.max_abs_diff:.3g}"),
        }


# --------------------------------------------------------------------------------------------- front-ends


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


def parity_waveform(sample_rate: int, samples: int, batch: int = 2, seed: int = 0) -> Tensor:
    """A deterministic (batch, samples) float32 test signal: a different chord plus quiet noise per clip."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    clips = []
    for index in range(batch):
        freqs = torch.tensor([220.0, 440.0 * 1.25, 880.0 * 1.5]) * (1 + 0.1 * index)
        chord = torch.sin(2 * math.pi * freqs[:, None] * t).sum(0) / 3
        noise = 0.02 * torch.randn(samples, generator=gen, dtype=torch.float64)
        clips.append(0.4 * chord + noise)
    return torch.stack(clips).float()


@dataclass
class _Plan:
    """The input lengths an export takes and is checked at."""

    samples: int
    min_samples: int
    max_samples: int | None
    fixed_frames: int | None


def _samples_for(frontend: _GraphFrontend, frames: int) -> int:
    """The fewest samples giving at least `frames` raw frames (binary search: raw_frames is monotonic)."""
    low, high = 1, max(2, frames)
    while frontend.raw_frames(high) < frames:
        high *= 2
    while low < high:
        middle = (low + high) // 2
        if frontend.raw_frames(middle) >= frames:
            high = middle
        else:
            low = middle + 1
    return low


def _plan(model: nn.Module, frontend: _GraphFrontend, seconds: float | None) -> _Plan:
    from tagger.models.policy import input_policy

    rate = model.sample_rate
    fixed = frontend.fixed_frames()
    # An ensemble's own front-end is the identity; a member that pads or crops to a fixed frame count sets
    # its natural length (the ensemble's policy window).
    padded = fixed is not None or any(graph_frontend(m.frontend).fixed_frames() is not None
                                      for m in _members(model))
    policy = input_policy(model)  # the same length limits predict and evaluate use
    min_samples, max_samples = max(policy.min_samples, 2), policy.max_samples
    if seconds is None:
        samples = int(round(DEFAULT_SECONDS * rate))
        if padded and policy.window_samples is not None:  # the model's natural length: the frames it pads to
            samples = policy.window_samples
        if max_samples is not None:
            samples = min(samples, max_samples)
    else:
        if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
            raise TaggerError(f"--seconds must be a positive number, got {seconds!r}")
        samples = int(round(seconds * rate))
    if samples < min_samples or (max_samples is not None and samples > max_samples):
        span = f"{min_samples / rate:.3f} s" + (f" to {max_samples / rate:.3f} s" if max_samples else " or more")
        raise TaggerError(f"--seconds {samples / rate:g} is outside what {_what(model)} accepts: {span}")
    return _Plan(samples, min_samples, max_samples, fixed)


# --------------------------------------------------------------------------------------------- metadata


def _metadata(meta: dict, model: nn.Module, fmt: str, extra: dict[str, Any]) -> dict[str, str]:
    """Flat string key/values (the form ONNX, safetensors and TorchScript extra files all hold)."""
    from tagger.frontends import frontend_to_dict

    values = {
        "tagger.format": fmt,
        "tagger.version": __version__,
        "tagger.arch": model.arch,
        "tagger.model_kwargs": model.model_kwargs,
        "tagger.task": meta.get("task", "multilabel"),
        "tagger.sample_rate": model.sample_rate,
        "tagger.labels": meta["labels"].to_list(),
        "tagger.frontend": frontend_to_dict(model.frontend),
        **_ensemble_metadata(meta, model),
        **extra,
    }
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in values.items()}


def _ensemble_metadata(meta: dict, model: nn.Module) -> dict[str, Any]:
    """What an ensemble is made of: its members (each with its own front-end, all inside the graph, fed the
    one waveform), how their outputs are combined and with which weights. Nothing for a single model."""
    from tagger.frontends import frontend_to_dict

    members = _members(model)
    if not members:
        return {}
    sources = list(meta.get("sources") or [None] * len(members))
    return {
        "tagger.members": [{"arch": m.arch, "model_kwargs": m.model_kwargs, "sample_rate": m.sample_rate,
                            "frontend": frontend_to_dict(m.frontend), "source": source}
                           for m, source in zip(members, sources, strict=True)],
        "tagger.combine": model.combine,
        "tagger.weights": [float(w) for w in model.weights],
    }


def _decode(values: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if not key.startswith("tagger."):
            continue
        try:
            out[key[len("tagger."):]] = json.loads(value)
        except json.JSONDecodeError:
            out[key[len("tagger."):]] = value
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The tagger metadata of an exported file (any format), decoded: labels, task, sample_rate, arch, ..."""
    path = Path(path)
    if not path.is_file():
        raise TaggerError(f"{path}: file not found; check the path")
    with open(path, "rb") as handle:
        head = handle.read(2)
    try:
        if path.suffix == ".safetensors":
            safetensors = _require("safetensors", "safetensors")
            with safetensors.safe_open(str(path), framework="pt") as handle:
                values = handle.metadata() or {}
        elif head == b"PK":  # a TorchScript zip archive: extra files sit in <archive>/extra/
            import zipfile

            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(f"/extra/{_TORCHSCRIPT_META}")]
                values = json.loads(archive.read(names[0])) if names else {}
        else:
            onnx = _require("onnx", "onnx")
            values = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except TaggerError:
        raise
    except Exception:  # each format's reader has its own error types for a damaged file
        raise TaggerError(f"{path}: not a readable ONNX, TorchScript or safetensors file") from None
    decoded = _decode(values)
    if not decoded:
        raise TaggerError(f"{path}: no tagger metadata; was it written by `tagger export`?")
    return decoded


# --------------------------------------------------------------------------------------------- export


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TaggerError(f"this export needs the {package} package: {_INSTALL_HINT}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter (progress prints, tracer and deprecation warnings); errors still raise."""
    import io
    import logging

    names = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch._guards", "torch.fx",
             "torch._subclasses", "torch.utils._sympy", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _check_out(out_path: Path, fmt: str) -> None:
    """Refuse a folder or an unwritable place before any work, so nothing is left behind."""
    if out_path.is_dir():
        example = out_path / f"model{_SUFFIXES[fmt]}"
        raise TaggerError(f"--out {out_path} is a folder; give a file name, e.g. {example}")
    existing = out_path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise TaggerError(f"--out {out_path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TaggerError(f"--out {out_path}: no permission to write in {existing}; pick another folder")


def export_model(
    checkpoint_path: str | Path,
    fmt: str,
    out_path: str | Path,
    seconds: float | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    separate_frontend: bool = False,
    input_settings: dict[str, str | None] | None = None,
) -> ExportReport:
    """Export a tagger checkpoint to `fmt` at `out_path`, atomically, after checking it against PyTorch.

    onnx: waveform (batch, samples) -> logits, probabilities, embedding[, frame_logits], with the front-end
    inside the graph; with separate_frontend (or when that export fails) the front-end goes to
    `<stem>.frontend.onnx` (waveform -> features) and `out_path` takes the features. torchscript: a traced
    waveform -> outputs module. safetensors: the weights plus what load_safetensors needs to rebuild the model.
    A prediction ensemble (tagger ensemble) exports as onnx or torchscript when its members share one sample
    rate: one graph with every member's front-end inside, their combination and the concatenated embedding.
    `seconds` sets the export and check length (default: 10 s, or the length the model pads or crops to).
    `input_settings` changes how the model takes clips of other lengths before export (HTS-AT's short_input).
    With check, the written files are run on test waveforms; a logit more than TOLERANCE from PyTorch
    removes them and raises TaggerError. Existing files at the output paths are replaced only on success.
    """
    from tagger.checkpoint import load_model

    if fmt not in FORMATS:
        raise TaggerError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    out_path = Path(out_path)
    _check_out(out_path, fmt)
    if fmt == "onnx":
        onnx = _require("onnx", "onnx")
        _require("onnxscript", "onnxscript")
        newest = onnx.defs.onnx_opset_version()
        if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
            raise TaggerError(f"--opset {opset} is not supported: torch.onnx writes opsets {MIN_OPSET} to {newest} "
                              f"(this onnx package's newest)")
        if check:
            _require("onnxruntime", "onnxruntime")
    if fmt == "safetensors":
        _require("safetensors", "safetensors")
    model, meta = load_model(checkpoint_path)
    if input_settings:
        model.configure_inputs(**input_settings)
    notes = _one_pass(model)
    if _members(model):
        _check_ensemble(model, fmt, separate_frontend)
    plan = _plan(model, graph_frontend(model.frontend), seconds)
    try:
        if fmt == "onnx":
            report = _export_onnx(model, meta, plan, out_path, opset, check, separate_frontend)
        elif fmt == "torchscript":
            report = _export_torchscript(model, meta, plan, out_path, check)
        else:
            report = _export_safetensors(model, meta, plan, out_path, check)
    except OSError as error:  # a full disk, a folder made read-only meanwhile: the temp files are gone
        raise TaggerError(f"--out {out_path}: cannot write ({error.strerror or error})") from None
    report.notes[:0] = notes
    return report


def _one_pass(model: nn.Module) -> list[str]:
    """A graph scores what the network takes in one pass: HTS-AT's official crops of long inputs (a loop whose
    length depends on the input) are left to the caller's windows instead."""
    notes = []
    for each in [model, *_members(model)]:
        if getattr(each, "long_input", None) == "crops":
            each.configure_inputs(long_input="windows")
            notes.append(f"{each.arch}: long_input=crops is not exported; the graph takes up to "
                         f"{each.max_input_frames} frames, so cut longer audio into windows")
    return notes


def _members(model: nn.Module) -> list[nn.Module]:
    """An ensemble's member models; [] for a single model."""
    return list(model.members) if getattr(model, "arch", None) == "ensemble" else []


def _describe(model: nn.Module) -> str:
    """The arch, or for an ensemble "ensemble of 2 (efficientat-mn01, panns-cnn6)"."""
    members = _members(model)
    if not members:
        return model.arch
    return f"ensemble of {len(members)} ({', '.join(m.arch for m in members)})"


def _what(model: nn.Module) -> str:
    """The model as a message names it: "panns-cnn6", "the ensemble of 2 (efficientat-mn01, panns-cnn6)"."""
    return f"the {_describe(model)}" if _members(model) else model.arch


def _check_ensemble(model: nn.Module, fmt: str, separate_frontend: bool) -> None:
    """Refuse what an ensemble cannot be exported as: several waveforms, one set of weights, one front-end."""
    rates = model.rates
    if len(rates) > 1:
        listed = ", ".join(map(str, rates[:-1])) + f" and {rates[-1]}"
        raise TaggerError(f"the members of this ensemble need sample rates {listed} Hz, but an exported graph takes "
                          "one waveform; export the members separately (or build the ensemble from members of "
                          "one sample rate)")
    if fmt == "safetensors":
        raise TaggerError("safetensors holds one model's weights, not an ensemble; export an ensemble as onnx or "
                          "torchscript (or export its members separately)")
    if separate_frontend and fmt == "onnx":
        raise TaggerError("--separate-frontend does not apply to an ensemble: each member has its own front-end, "
                          "all inside the one graph; drop the option")


@dataclass
class _Input:
    """The waveform input an artefact takes: None for a dynamic axis."""

    batch: int | None
    samples: int | None
    min_samples: int
    max_samples: int | None

    def pin(self, plan: _Plan) -> _Input:
        """Fixed length: the export length."""
        return _Input(self.batch, plan.samples, plan.samples, plan.samples)

    def shape(self) -> list[int | str]:
        return ["batch" if self.batch is None else self.batch, "samples" if self.samples is None else self.samples]

    def spec(self) -> dict[str, Any]:
        """The input as the metadata records it; a fixed length has min_samples = max_samples = that length."""
        return {"name": INPUT_NAME, "dtype": "float32", "shape": self.shape(), "min_samples": self.min_samples,
                "max_samples": self.max_samples}


def _from_program(plan: _Plan, program, frontend: _GraphFrontend | None = None, time_axis: int = 1) -> _Input:
    """The input a torch.export program accepts, within the plan's range; with `frontend`, the program takes
    features and its time range (frames) is turned into samples."""
    batch = None if _axis_range(program, 0) is not None else int(_input_shape(program)[0])
    found = _axis_range(program, time_axis)
    if found is None:
        return _Input(batch, plan.samples, plan.samples, plan.samples)
    low, high = found
    if frontend is not None:
        low = _samples_for(frontend, low)
        high = None if high is None else _samples_for(frontend, high + 1) - 1
    top = plan.max_samples if high is None else min(high, plan.max_samples or high)
    return _Input(batch, None, max(plan.min_samples, low), top)


def _merge(front: _Input, net: _Input, plan: _Plan) -> _Input:
    """What a front-end graph followed by a network graph accepts."""
    batch = front.batch if front.batch is not None else net.batch
    if front.samples is not None or net.samples is not None:
        return _Input(batch, plan.samples, plan.samples, plan.samples)
    tops = [t for t in (front.max_samples, net.max_samples) if t is not None]
    return _Input(batch, None, max(front.min_samples, net.min_samples), min(tops) if tops else None)


def _input_shape(program) -> tuple:
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.name == name)
    return tuple(node.meta["val"].shape)


def _axis_range(program, axis: int) -> tuple[int, int | None] | None:
    """(min, max or None) of the input's `axis` in an ExportedProgram, or None when it was fixed."""
    size = _input_shape(program)[axis]
    if isinstance(size, int):
        return None
    bounds = program.range_constraints.get(size.node.expr)
    if bounds is None:
        return 0, None
    upper = bounds.upper  # sympy: an Integer, or torch's int_oo (whose is_finite is True, so test is_Integer)
    return int(bounds.lower), (int(upper) if upper.is_Integer else None)


def _other_length(plan: _Plan, shape: _Input) -> int:
    """A second length to check a dynamic axis at: 1.5 times the export length, or 0.6 times when the input
    has a maximum (a time embedding's span) or would pass it. A quarter of the export length is checked too
    (`_other_lengths`): models that take short clips their own way (HTS-AT tiles them) run another path there."""
    longer = int(plan.samples * 1.5)
    if shape.max_samples is None or longer <= shape.max_samples:
        return longer
    return max(shape.min_samples, int(plan.samples * 0.6))


def _check_waves(rate: int, plan: _Plan, shape: _Input) -> list[Tensor]:
    """The export-length batch of 2, then batch 3 when the batch is dynamic, and when the length is, clips of the
    other lengths (a batch of one, the other size exporters are known to special-case)."""
    waves = [parity_waveform(rate, plan.samples, batch=2)]
    if shape.batch is None:
        waves.append(parity_waveform(rate, plan.samples, batch=3, seed=1))
    if shape.samples is None:
        waves += [parity_waveform(rate, other, batch=shape.batch or 1, seed=2) for other in _other_lengths(plan, shape)]
    return waves


def _other_lengths(plan: _Plan, shape: _Input) -> list[int]:
    """The lengths besides the export length that a dynamic length axis must also be right at."""
    lengths = dict.fromkeys((_other_length(plan, shape), max(shape.min_samples, plan.samples // 4)))
    return [length for length in lengths if length != plan.samples]


def _reference(model: nn.Module, task: str, wave: Tensor) -> tuple[Tensor, ...]:
    """What the PyTorch model itself gives: the standard every export is held to."""
    with torch.no_grad():
        return _Outputs(model, task)(wave)


def _diff(expected: tuple[Tensor, ...], got: Any) -> float:
    """Max |difference| over the scores (logits, and frame_logits when present): outputs 0 and 3. Embeddings
    have no common scale; probabilities follow the logits."""
    got = list(got)
    if len(got) != len(expected):
        return math.inf
    worst = 0.0
    for index in (0, 3):
        if index >= len(expected):
            continue
        value = torch.as_tensor(got[index])
        if tuple(value.shape) != tuple(expected[index].shape):
            return math.inf
        worst = max(worst, float((value.double() - expected[index].double()).abs().max()))
    return worst


def _fail(diff: float, fmt: str, model: nn.Module) -> TaggerError:
    members = _members(model)
    whose = f"the members' archs ({', '.join(m.arch for m in members)})" if members else "the checkpoint's arch"
    return TaggerError(
        f"the {fmt} export differs from PyTorch by {diff:.3g} in the logits (more than {TOLERANCE:g}), so "
        f"nothing was written; please report it with {whose} (--no-check writes it anyway)"
    )


def _names(model: nn.Module, task: str, plan: _Plan) -> list[str]:
    """The output names: frame_logits only for models with frame-level output."""
    return list(OUTPUTS[: len(_reference(model, task, parity_waveform(model.sample_rate, plan.samples, 1)))])


# ---- ONNX

# Dynamic axes to ask torch.export for, most general first: (batch, time), batch only, none.
_DYNAMIC = ((0, -1), (0,), ())


def _torch_export(module: nn.Module, sample: Tensor, dynamic: tuple[int, ...]):
    """torch.export with the given axes dynamic where the code allows (Dim.AUTO): a branch on a size narrows
    that axis's range, code that needs an exact size fixes it (read back with _axis_range)."""
    from torch.export import Dim

    dims = {axis % sample.ndim: Dim.AUTO for axis in dynamic}
    with _quiet(), torch.no_grad():
        return torch.export.export(module, (sample,), dynamic_shapes=(dims or None,), strict=False)


def _to_onnx(program, opset: int, input_name: str, outputs: list[str]):
    """An onnx.ModelProto of an ExportedProgram with our input / output names.

    Converted as it is, or else after torch's core ATen decompositions: on torch 2.14 the exporter's own
    decomposition step turns some reshapes of transposed tensors (HTS-AT's window attention) into invalid views.
    """
    first: Exception | None = None
    for decompose in (False, True):
        try:
            with _quiet():
                onnx_program = torch.onnx.export(
                    program.run_decompositions() if decompose else program, input_names=[input_name],
                    output_names=outputs, opset_version=opset, dynamo=True, external_data=False, optimize=True,
                    verbose=False,
                )
            return onnx_program.model_proto
        except Exception as error:  # the exporter fails in many ways; the second route may pass
            first = first or error
    assert first is not None
    raise first


def _frontend_path(out_path: Path) -> Path:
    """model.onnx -> model.frontend.onnx beside it."""
    return out_path.with_name(f"{out_path.stem}.frontend{out_path.suffix or '.onnx'}")


def _onnx_graphs(copy, task: str, plan: _Plan, out_path: Path, opset: int, names: list[str], inside: bool,
                 dynamic: tuple[int, ...]) -> tuple[list[tuple[Path, Any]], _Input]:
    """[(path, ModelProto)] (the network, then the front-end when separate) and the input they take."""
    sample = parity_waveform(copy.sample_rate, plan.samples)
    if inside:
        program = _torch_export(_Outputs(copy, task), sample, dynamic)
        return [(out_path, _to_onnx(program, opset, INPUT_NAME, names))], _from_program(plan, program)
    with torch.no_grad():
        features = copy.frontend(sample)
    front = _torch_export(copy.frontend, sample, dynamic)
    net = _torch_export(_Outputs(copy, task, features=True), features, dynamic)
    graphs = [(out_path, _to_onnx(net, opset, FEATURES_NAME, names)),
              (_frontend_path(out_path), _to_onnx(front, opset, INPUT_NAME, [FEATURES_NAME]))]
    net_shape = _from_program(plan, net, copy.frontend, features.ndim - 1)
    if plan.fixed_frames is not None:  # the network sees the same frame count whatever the clip length
        net_shape = _Input(net_shape.batch, None, plan.min_samples, plan.max_samples)
    return graphs, _merge(_from_program(plan, front), net_shape, plan)


def _export_onnx(model, meta, plan: _Plan, out_path: Path, opset: int, check: bool, separate: bool):
    """Export with the front-end inside when the exporter manages, as dynamic as the written graph proves."""
    task = meta.get("task", "multilabel")
    copy = exportable(model)
    names = _names(model, task, plan)
    notes: list[str] = []
    failure: Exception | None = None
    # An ensemble's own front-end is the identity: a separate front-end graph would be an empty one.
    routes = (False,) if separate else (True,) if _members(model) else (True, False)
    for inside in routes:
        for dynamic in _DYNAMIC:
            try:
                graphs, shape = _onnx_graphs(copy, task, plan, out_path, opset, names, inside, dynamic)
            except Exception as error:  # this variant does not export: try a less dynamic one
                failure = failure or error
                continue
            report = _write_onnx(model, meta, plan, graphs, shape, opset, check, names, notes)
            if report is not None:
                return report
            # The graph is right at the export shape but not at another: torch.export missed a size the
            # code depends on. Ask for fewer dynamic axes.
            notes.append(f"a graph with dynamic axes {_axes(dynamic)} failed the check at another input shape")
        if inside and len(routes) > 1:
            notes.append("the front-end did not export inside the graph"
                         + (f" ({type(failure).__name__}: {_first_line(failure)})" if failure else "")
                         + "; it is a separate graph")
    raise TaggerError(f"{_describe(model)}: torch.onnx cannot export this model"
                      + (f" ({type(failure).__name__}: {_first_line(failure)})" if failure else "")
                      + "; try --format torchscript")


def _frontend_name(model: nn.Module) -> str:
    """The report's front-end: its name, or for an ensemble what it is made of (each member's front-end)."""
    return _describe(model) if _members(model) else model.frontend.name


def _axes(dynamic: tuple[int, ...]) -> str:
    return "(batch, samples)" if len(dynamic) == 2 else "(batch)" if dynamic else "()"


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _write_onnx(model, meta, plan: _Plan, graphs, shape: _Input, opset: int, check: bool, names: list[str],
                notes: list[str]) -> ExportReport | None:
    """Write the graphs atomically with their metadata and check them; None when they fail only at shapes
    other than the export shape (the caller retries less dynamic)."""
    import onnx

    task = meta.get("task", "multilabel")
    in_graph = len(graphs) == 1
    written = max(i.version for i in graphs[0][1].opset_import if i.domain in ("", "ai.onnx"))
    if written != opset:
        notes.append(f"torch.onnx wrote opset {written}, not the {opset} asked for")
    extra = {"tagger.input": shape.spec(), "tagger.outputs": names, "tagger.frontend_in_graph": in_graph,
             "tagger.export_seconds": plan.samples / model.sample_rate, "tagger.opset": written}
    if not in_graph:
        extra["tagger.frontend_file"] = graphs[1][0].name
    props = _metadata(meta, model, "onnx", extra)
    for _, proto in graphs:
        del proto.metadata_props[:]
        for key, value in props.items():
            proto.metadata_props.add(key=key, value=value)
    diff = None
    try:
        with contextlib.ExitStack() as stack:
            temps = [stack.enter_context(atomic_path(path)) for path, _ in graphs]
            for temp, (_, proto) in zip(temps, graphs, strict=True):
                onnx.save_model(proto, str(temp))
            if check:
                diffs = _check_onnx(model, task, temps, plan, shape)
                if not diffs[0] <= TOLERANCE:
                    raise _fail(diffs[0], "ONNX", model)
                if not max(diffs) <= TOLERANCE:
                    raise _OtherShapes  # leaving the block removes the temporaries and keeps any old files
                diff = max(diffs)
    except _OtherShapes:
        return None
    files = [path for path, _ in graphs]
    return ExportReport(
        path=files[0], format="onnx", files=files, size_bytes=sum(p.stat().st_size for p in files),
        input_name=INPUT_NAME, input_shape=shape.shape(), sample_rate=model.sample_rate,
        seconds=plan.samples / model.sample_rate, min_samples=shape.min_samples, max_samples=shape.max_samples,
        outputs=names, frontend=_frontend_name(model), frontend_in_graph=in_graph, opset=written, max_abs_diff=diff,
        notes=notes,
    )


class _OtherShapes(Exception):
    """The written graph matches PyTorch at the export shape but not at another one."""


def _check_onnx(model, task: str, paths: list[Path], plan: _Plan, shape: _Input) -> list[float]:
    """The worst logit difference from PyTorch for each check waveform (the export shape first), running the
    written graph(s) with onnxruntime; another shape the graph cannot run counts as an infinite difference."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing run is reported by its exception, not on stderr
    diffs: list[float] = []
    try:
        sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]
        for wave in _check_waves(model.sample_rate, plan, shape):
            try:
                if len(sessions) == 1:
                    got = sessions[0].run(None, {INPUT_NAME: wave.numpy()})
                else:
                    (features,) = sessions[1].run(None, {INPUT_NAME: wave.numpy()})
                    got = sessions[0].run(None, {FEATURES_NAME: features})
            except Exception:  # onnxruntime's own error types: at another shape, a size frozen into the graph
                if not diffs:
                    raise
                diffs.append(math.inf)
                continue
            diffs.append(_diff(_reference(model, task, wave), got))
    except Exception as error:
        raise TaggerError(f"onnxruntime cannot run the exported graph ({type(error).__name__}: "
                          f"{_first_line(error)}); nothing was written; try --format torchscript") from None
    return diffs


# ---- TorchScript


def _export_torchscript(model, meta, plan: _Plan, out_path: Path, check: bool) -> ExportReport:
    task = meta.get("task", "multilabel")
    rate = model.sample_rate
    names = _names(model, task, plan)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(_Outputs(exportable(model), task), (parity_waveform(rate, plan.samples),),
                                 check_trace=False)
    # A trace freezes Python branches on sizes. An axis counts as dynamic only when the trace still matches
    # the eager model at another size.
    shape = _Input(None, None, plan.min_samples, plan.max_samples)
    if not _traced_matches(traced, model, task, parity_waveform(rate, plan.samples, batch=3, seed=1)):
        shape.batch = 2
    others = _other_lengths(plan, shape)
    if not others or not all(_traced_matches(traced, model, task, parity_waveform(rate, length, batch=shape.batch or 1,
                                                                                  seed=2)) for length in others):
        shape = shape.pin(plan)
    extra = {"tagger.input": shape.spec(), "tagger.outputs": names, "tagger.frontend_in_graph": True,
             "tagger.export_seconds": plan.samples / rate}
    props = _metadata(meta, model, "torchscript", extra)
    diff = None
    with atomic_path(out_path) as temp:
        with _quiet():
            torch.jit.save(traced, str(temp), _extra_files={_TORCHSCRIPT_META: json.dumps(props, indent=1)})
        if check:
            with _quiet():
                loaded = torch.jit.load(str(temp), map_location="cpu")
            worst = 0.0
            for wave in _check_waves(rate, plan, shape):
                with torch.no_grad():
                    worst = max(worst, _diff(_reference(model, task, wave), loaded(wave)))
            if not worst <= TOLERANCE:
                raise _fail(worst, "TorchScript", model)
            diff = worst
    return ExportReport(
        path=out_path, format="torchscript", files=[out_path], size_bytes=out_path.stat().st_size,
        input_name=INPUT_NAME, input_shape=shape.shape(), sample_rate=rate, seconds=plan.samples / rate,
        min_samples=shape.min_samples, max_samples=shape.max_samples, outputs=names, frontend=_frontend_name(model),
        frontend_in_graph=True, opset=None, max_abs_diff=diff,
    )


def _traced_matches(traced, model, task: str, wave: Tensor) -> bool:
    try:
        with _quiet(), torch.no_grad():
            return _diff(_reference(model, task, wave), traced(wave)) <= TOLERANCE
    except Exception:  # a shape baked into the trace no longer fits: the axis is fixed
        return False


# ---- safetensors


def _export_safetensors(model, meta, plan: _Plan, out_path: Path, check: bool) -> ExportReport:
    from safetensors.torch import save_file

    task = meta.get("task", "multilabel")
    # Own copies: safetensors refuses tensors that share storage (tied weights, views of one buffer).
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    extra = {"tagger.normalization": meta.get("normalization") or {}}
    props = {"format": "pt", **_metadata(meta, model, "safetensors", extra)}
    wave = parity_waveform(model.sample_rate, plan.samples)
    expected = _reference(model, task, wave)
    diff = None
    with atomic_path(out_path) as temp:
        save_file(state, str(temp), metadata=props)
        _usual_mode(temp)
        if check:
            loaded, _ = load_safetensors(temp)
            diff = _diff(expected, _reference(loaded, task, wave))
            if not diff <= TOLERANCE:
                raise _fail(diff, "safetensors", model)
    return ExportReport(
        path=out_path, format="safetensors", files=[out_path], size_bytes=out_path.stat().st_size,
        input_name=INPUT_NAME, input_shape=["batch", "samples"], sample_rate=model.sample_rate,
        seconds=plan.samples / model.sample_rate, min_samples=None, max_samples=None,
        outputs=list(OUTPUTS[: len(expected)]), frontend=_frontend_name(model), frontend_in_graph=False, opset=None,
        max_abs_diff=diff,
    )


def _usual_mode(path: Path) -> None:
    """The permissions a plain open() would give (safetensors creates its files readable by the owner only)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def load_safetensors(path: str | Path):
    """(model in eval mode, meta) from a `tagger export --format safetensors` file, as load_checkpoint gives.

    meta holds arch, model_kwargs, task, sample_rate, frontend, normalization and labels (a LabelSet).
    """
    from tagger.labels import LabelSet
    from tagger.models import create_model
    from tagger.torchfile import load_state

    safetensors = _require("safetensors", "safetensors")
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TaggerError(f"{path}: file not found; check the path")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            values = handle.metadata() or {}
        state = load_file(str(path), device="cpu")
    except Exception:  # safetensors raises its own error types for a bad header
        raise TaggerError(f"{path}: not a readable safetensors file (corrupt, truncated or another format)") from None
    meta = _decode(values)
    missing = [k for k in ("arch", "model_kwargs", "labels") if k not in meta]
    if missing:
        raise TaggerError(f"{path}: a safetensors file without tagger metadata ({', '.join(missing)}); "
                          "write one with `tagger export --format safetensors`")
    model = create_model(meta["arch"], **meta["model_kwargs"])
    load_state(model, state, source=str(path))
    meta["labels"] = LabelSet.from_list_of_dicts(meta["labels"])
    return model.eval(), meta
