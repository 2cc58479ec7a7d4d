"""safetensors export: the weights with the metadata to rebuild the model, and load_safetensors, which does."""

from __future__ import annotations

import os
from pathlib import Path

from tagger.errors import TaggerError
from tagger.export.checks import TOLERANCE, _diff, _fail, _reference
from tagger.export.describe import _frontend_name
from tagger.export.exporters import _require
from tagger.export.graph import OUTPUTS
from tagger.export.metadata import _decode, _metadata
from tagger.export.plan import _Plan, parity_waveform
from tagger.export.report import ExportReport
from tagger.export.shapes import INPUT_NAME
from tagger.fileio import atomic_path


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
