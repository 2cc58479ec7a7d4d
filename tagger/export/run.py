"""export_model: the request checked, the model loaded and its input planned, then the format's exporter."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from tagger.errors import TaggerError
from tagger.export.describe import _members
from tagger.export.exporters import _require
from tagger.export.graph import graph_frontend
from tagger.export.onnx import DEFAULT_OPSET, MIN_OPSET, _export_onnx
from tagger.export.plan import _plan
from tagger.export.report import ExportReport
from tagger.export.safetensors import _export_safetensors
from tagger.export.torchscript import _export_torchscript

FORMATS = ("onnx", "torchscript", "safetensors")
_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}


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
