"""The tagger metadata every export carries: written as flat strings, read back from a file of any format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from tagger.errors import TaggerError
from tagger.export.describe import _members
from tagger.export.exporters import _require
from tagger.version import __version__

_TORCHSCRIPT_META = "tagger.json"


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
        **({"tagger.source": meta["source"]} if meta.get("source") else {}),  # provenance and licences (tagger info)
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
