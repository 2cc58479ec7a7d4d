"""Model registry: every tagger architecture by name, built with `create_model`, listed by `list_models`.

One file per family (ast, passt, htsat, psla, panns, panns_1d, efficientat, ced) registers its models and the importer
of its official checkpoints; base.py is the contract (waveform in, TaggerOutput out), policy.py what a model does
with clips of any length, heads.py the pooling heads, inference.py the fused CPU path, catalog.json the zoo listing
and releases.py the table of official weights `tagger pull` reads.

May import: errors, fileio, labels, frontends, torchfile; never checkpoint or anything above it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tagger.errors import TaggerError
from tagger.models.base import TaggerModel, TaggerOutput, logit_from_probability

__all__ = [
    "TaggerModel", "TaggerOutput", "logit_from_probability", "register_model", "create_model", "list_models",
    "model_entry", "has_frame_output", "ModelEntry", "ImportedWeights", "register_importer", "importer", "resolve_arch",
    "FAMILY_DEFAULTS",
]

# Family modules register their models when imported; they are imported on first use of the registry.
_FAMILY_MODULES = (
    "tagger.models.panns",
    "tagger.models.panns_1d",
    "tagger.models.psla",
    "tagger.models.efficientat",
    "tagger.models.passt",
    "tagger.models.ast",
    "tagger.models.htsat",
    "tagger.models.ced",
)

# What a family name means as an architecture (`--arch ast`): the paper's main AudioSet model of each family.
FAMILY_DEFAULTS = {
    "ast": "ast-base384",  # AST: DeiT-B at 384, 10/10 strides, 1024 frames (the AudioSet 0.459 model)
    "passt": "passt-s-p16-s10",  # PaSST-S, patch 16, stride 10 (the 0.476 SWA model)
    "htsat": "htsat-tiny",  # HTS-AT: Swin-T, window 8 (0.471)
    "psla": "psla-effnet-b2-att4",  # PSLA: EfficientNet-B2 with 4-head attention pooling (0.444)
    "panns": "panns-cnn14",  # PANNs: Cnn14 (0.431)
    "efficientat": "efficientat-mn10",  # EfficientAT: MobileNetV3 width 1.0 (0.471), the official inference default
    "ced": "ced-mini",  # CED-Mini (0.490, 9.6 M), the official inference default
}


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
        importlib.import_module(module)


def _load_family_of(name: str) -> None:
    """Import only the modules whose names start like `name` (panns-cnn14 -> panns, panns_1d): loading one
    checkpoint then skips timm's transformers, which take a second to import."""
    prefix = name.split("-")[0]
    for module in _FAMILY_MODULES:
        if module.rsplit(".", 1)[1].split("_")[0] == prefix:
            importlib.import_module(module)


def resolve_arch(name: str) -> str:
    """The registered name `name` stands for: itself, a family's default (`ast` -> `ast-base384`), or a name
    without its family prefix when only one family has it (`cnn14` -> `panns-cnn14`, `mn10` -> `efficientat-mn10`).
    """
    name = FAMILY_DEFAULTS.get(name, name)
    if name not in _REGISTRY:
        _load_family_of(name)
    if name not in _REGISTRY:
        _load_families()
    if name in _REGISTRY:
        return name
    short = [full for full, entry in _REGISTRY.items() if full == f"{entry.family}-{name}"]
    if len(short) == 1:
        return short[0]
    close = [n for n in sorted(_REGISTRY) if name.split("-")[0] in n][:8] or sorted(_REGISTRY)[:8]
    families = ", ".join(sorted(FAMILY_DEFAULTS))
    raise TaggerError(f"unknown model {name!r}; e.g. {', '.join(close)}, or a family name ({families}) for its "
                      "main AudioSet model (see `tagger models`)")


def model_entry(name: str) -> ModelEntry:
    return _REGISTRY[resolve_arch(name)]


def has_frame_output(model) -> bool:
    """Whether a model gives frame_logits: its own `frame_level` (an opt-in frame output, an ensemble), else the
    registry's answer for its arch."""
    own = getattr(model, "frame_level", None)
    if own is not None or not getattr(model, "arch", ""):
        return bool(own)
    return model_entry(model.arch).frame_level


def create_model(name: str, num_classes: int = 527, init: str | None = None, **kwargs: Any) -> TaggerModel:
    """Build a registered model; `arch` and `model_kwargs` are recorded on it for checkpoints.

    `name` may be a family name or a short name (see `resolve_arch`); the full name is what gets recorded.

    init="imagenet:/path/weights.pth" loads a local ImageNet checkpoint into the trunk, for families that
    implement `init_from_imagenet(state_dict) -> list[str]` (notes on what was adapted or skipped).
    """
    name = resolve_arch(name)
    entry = _REGISTRY[name]
    if num_classes < 1:
        raise TaggerError(f"num_classes must be >= 1, got {num_classes}")
    try:
        model = entry.builder(num_classes=num_classes, **kwargs)
    except TypeError as error:
        raise TaggerError(f"{name}: {error}") from None
    model.arch = name
    model.model_kwargs = {"num_classes": num_classes, **kwargs}
    if init is not None:
        _initialise(model, init)
    return model


def _initialise(model: TaggerModel, init: str) -> list[str]:
    from tagger.torchfile import read_torch_file

    kind, _, path = init.partition(":")
    if kind != "imagenet" or not path:
        raise TaggerError(f"init {init!r} must look like imagenet:/path/to/weights.pth")
    if not hasattr(model, "init_from_imagenet"):
        raise TaggerError(f"{model.arch} has no ImageNet initialisation (only trunks with an ImageNet model do)")
    state = read_torch_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TaggerError(f"{path}: expected a state_dict of ImageNet weights")
    return model.init_from_imagenet(state)


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

    def build_model(self, source: str) -> TaggerModel:
        """The model these weights describe, loaded strictly (a mismatch names `source` and the first bad key)."""
        from tagger.torchfile import load_state

        model = create_model(self.arch, **self.model_kwargs)
        load_state(model, self.state_dict, source=source)
        return model.eval()


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
