"""TorchScript export: a trace of the model, dynamic in an axis only where it still matches at another size."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from tagger.export.checks import TOLERANCE, _diff, _fail, _names, _reference
from tagger.export.describe import _frontend_name
from tagger.export.exporters import _quiet
from tagger.export.graph import _Outputs, exportable
from tagger.export.metadata import _TORCHSCRIPT_META, _metadata
from tagger.export.plan import _Plan, parity_waveform
from tagger.export.report import ExportReport
from tagger.export.shapes import INPUT_NAME, _check_waves, _Input, _other_lengths
from tagger.fileio import atomic_path


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
