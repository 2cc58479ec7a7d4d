"""Model registry: every tagger architecture by name, built with `create_model`, listed by `list_models`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tagger.errors import TaggerError
from tagger.models.base import TaggerModel, TaggerOutput, logit_from_probability

__all__ = [
    "TaggerModel", "TaggerOutput", "logit_from_probability", "register_model", "create_model", "list_models",
    "model_entry", "ModelEntry", "ImportedWeights", "register_importer", "importer",
]

# Family modules register their models when imported; they are imported on first use of the registry.
_FAMILY_MODULES = ("tagger.models.panns", "tagger.models.psla", "tagger.models.efficientat")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: Callable[..., TaggerModel]
    frontend: str
    sample_rate: int
    frame_level: bool
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, family: str, frontend: str, sample_rate: int, frame_level: bool = False, description: str = ""
) -> Callable:
    """Decorator for a constructor `f(num_classes, **kwargs) -> TaggerModel`."""

    def decorate(builder: Callable[..., TaggerModel]) -> Callable[..., TaggerModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, family, builder, frontend, sample_rate, frame_level, description)
        return builder

    return decorate


def _load_families() -> None:
    for module in _FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:  # a family not built yet is simply absent from the registry
            if error.name != module:
                raise


def model_entry(name: str) -> ModelEntry:
    _load_families()
    if name not in _REGISTRY:
        close = [n for n in sorted(_REGISTRY) if name.split("-")[0] in n][:8] or sorted(_REGISTRY)[:8]
        raise TaggerError(f"unknown model {name!r}; e.g. {', '.join(close)} (see `tagger models`)")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 527, **kwargs: Any) -> TaggerModel:
    """Build a registered model; `arch` and `model_kwargs` are recorded on it for checkpoints."""
    entry = model_entry(name)
    if num_classes < 1:
        raise TaggerError(f"num_classes must be >= 1, got {num_classes}")
    try:
        model = entry.builder(num_classes=num_classes, **kwargs)
    except TypeError as error:
        raise TaggerError(f"{name}: {error}") from None
    model.arch = name
    model.model_kwargs = {"num_classes": num_classes, **kwargs}
    return model


def list_models() -> list[ModelEntry]:
    _load_families()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


@dataclass
class ImportedWeights:
    """An official checkpoint mapped to tagger naming: what `create_model` needs plus the state_dict."""

    arch: str
    model_kwargs: dict[str, Any]  # includes num_classes
    state_dict: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what was dropped or checked, shown to the user


_IMPORTERS: dict[str, Callable[[Any, str | None], ImportedWeights]] = {}


def register_importer(family: str) -> Callable:
    """Decorator for `f(raw_checkpoint, arch_or_None) -> ImportedWeights` converting a family's files."""

    def decorate(function: Callable) -> Callable:
        _IMPORTERS[family] = function
        return function

    return decorate


def importer(family: str) -> Callable[[Any, str | None], ImportedWeights]:
    _load_families()
    if family not in _IMPORTERS:
        raise TaggerError(f"unknown checkpoint family {family!r}; use one of {', '.join(sorted(_IMPORTERS))}")
    return _IMPORTERS[family]
