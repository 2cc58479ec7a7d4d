"""ONNX export: torch.export, then torch.onnx; as dynamic as the written graph proves in onnxruntime."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tagger.errors import TaggerError
from tagger.export.checks import TOLERANCE, _diff, _fail, _names, _reference
from tagger.export.describe import _describe, _frontend_name, _members
from tagger.export.exporters import _quiet
from tagger.export.graph import _Outputs, exportable
from tagger.export.metadata import _metadata
from tagger.export.plan import _Plan, parity_waveform
from tagger.export.report import ExportReport
from tagger.export.shapes import INPUT_NAME, _check_waves, _from_program, _Input, _merge
from tagger.fileio import atomic_path

# The front-ends' FFT becomes the ONNX DFT operator (opset 17 and later); torch.onnx writes opset 18 or later.
MIN_OPSET = 18
DEFAULT_OPSET = 18
FEATURES_NAME = "features"


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
