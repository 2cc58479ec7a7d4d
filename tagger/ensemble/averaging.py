"""Weight averaging of one model's checkpoints (PSLA/AST uniform mean, PaSST-style SWA) and BatchNorm re-estimation."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tagger.checkpoint import FORMAT as CHECKPOINT_FORMAT
from tagger.checkpoint import derived_source
from tagger.ensemble.combine import check_weights
from tagger.ensemble.store import FORMAT as ENSEMBLE_FORMAT
from tagger.errors import TaggerError

_ADVICE = (
    "weight averaging needs checkpoints of one model (same arch, settings and labels) — "
    "use --mode predictions to combine different models"
)
_MISSING = object()  # a key absent from one settings dict
_SHOWN_CHARS = 60


# --------------------------------------------------------------------------------------------- compatibility


def check_compatible(payloads: Sequence[dict], sources: Sequence[str]) -> None:
    """Refuse, at the first difference, checkpoints whose parameters do not mean the same thing.

    A mean of two tensors is only meaningful when both sit at the same place in the same network, fed the same
    features and read out as the same classes, so every payload is compared with the first one.
    """
    if len(payloads) != len(sources):
        raise ValueError(f"{len(payloads)} payloads but {len(sources)} sources")
    if not payloads:
        raise TaggerError("weight averaging needs at least one checkpoint; give one or more checkpoint files")
    for payload, source in zip(payloads, sources, strict=True):
        _check_format(payload, source)
    first = payloads[0]
    for index in range(1, len(payloads)):
        difference = _first_difference(payloads[index], first)
        if difference is not None:
            raise TaggerError(f"{sources[index]}: differs from {sources[0]} in {difference}; {_ADVICE}")


def _check_format(payload: Any, source: str) -> None:
    kind = payload.get("format") if isinstance(payload, dict) else None
    if kind == ENSEMBLE_FORMAT:
        raise TaggerError(
            f"{source}: an ensemble checkpoint ({ENSEMBLE_FORMAT}) cannot be weight-averaged; give its member "
            "checkpoints instead, or use --mode predictions"
        )
    if kind != CHECKPOINT_FORMAT:
        raise TaggerError(
            f"{source}: not a tagger checkpoint, so it cannot be weight-averaged; convert official weights with "
            "`tagger import-checkpoint` first"
        )
    if not isinstance(payload.get("state_dict"), dict):
        raise TaggerError(f"{source}: the checkpoint holds no state_dict; re-save it with tagger")


def _first_difference(other: dict, first: dict) -> str | None:
    """'<what>: <other's value> vs <first's value>' for the first difference, in the documented order."""
    checks = (
        lambda: _differ("arch", other.get("arch"), first.get("arch"), quote=False),
        lambda: _dict_difference("model setting", other.get("model_kwargs"), first.get("model_kwargs")),
        lambda: _dict_difference("front-end setting", other.get("frontend"), first.get("frontend")),
        lambda: _label_difference(other.get("labels") or [], first.get("labels") or []),
        lambda: _differ("task", other.get("task"), first.get("task"), quote=False),
        lambda: _state_difference(other["state_dict"], first["state_dict"]),
    )
    for check in checks:
        found = check()
        if found is not None:
            return found
    return None


def _show(value: Any, quote: bool = True) -> str:
    """A short one-line rendering: long lists would otherwise push the advice off the screen."""
    text = repr(value) if quote else str(value)
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _differ(what: str, a: Any, b: Any, quote: bool = True) -> str | None:
    return None if a == b else f"{what}: {_show(a, quote)} vs {_show(b, quote)}"


def _dict_difference(what: str, other: dict | None, first: dict | None) -> str | None:
    other, first = other or {}, first or {}
    for key in [*first, *(k for k in other if k not in first)]:
        a, b = other.get(key, _MISSING), first.get(key, _MISSING)
        if a != b:
            return f"{what} {key}: {_show_setting(a)} vs {_show_setting(b)}"
    return None


def _show_setting(value: Any) -> str:
    return "(not set)" if value is _MISSING else _show(value)


def _label_id(item: Any) -> Any:
    return item.get("id") if isinstance(item, dict) else item


def _label_difference(other: list, first: list) -> str | None:
    """Class ids only: display names are cosmetic, and the averaged checkpoint keeps the first one's names."""
    if len(other) != len(first):
        return f"number of classes: {len(other)} vs {len(first)}"
    for position, (a, b) in enumerate(zip(other, first, strict=True)):
        if _label_id(a) != _label_id(b):
            return f"class id at position {position}: {_show(_label_id(a))} vs {_show(_label_id(b))}"
    return None


def _state_difference(other: dict, first: dict) -> str | None:
    missing = next((key for key in first if key not in other), None)
    if missing is not None:
        return f"weights: it lacks {missing}"
    extra = next((key for key in other if key not in first), None)
    if extra is not None:
        return f"weights: it has an extra {extra}"
    for key, value in first.items():
        if tuple(other[key].shape) != tuple(value.shape):
            return f"shape of {key}: {tuple(other[key].shape)} vs {tuple(value.shape)}"
    for key, value in first.items():
        if other[key].dtype != value.dtype:
            return f"dtype of {key}: {other[key].dtype} vs {value.dtype}"
    return None


# --------------------------------------------------------------------------------------------- averaging


def average_states(states: Sequence[dict[str, Tensor]], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """The (weighted) mean of state_dicts, key by key, as new contiguous CPU tensors.

    BatchNorm running_mean/running_var are averaged like any parameter, as PSLA's weight averaging does; call
    recalibrate_batchnorm afterwards to re-estimate them for the averaged weights instead (SWA's way).
    Floating tensors are summed in float64 so that many members in float16 lose nothing before the final cast.
    Integer tensors (num_batches_tracked) get the weighted mean rounded half up. Bool tensors (masks) cannot be
    averaged: the first state's is kept, which is exact when all members agree, as they do for fixed masks.
    """
    if not states:
        raise TaggerError("weight averaging needs at least one state_dict")
    shares = check_weights(weights, len(states))
    first = states[0]
    for position, state in enumerate(states[1:], start=2):
        if set(state) != set(first):
            raise TaggerError(f"state_dict {position} has other keys than state_dict 1; they cannot be averaged")
    return {key: _average_tensor([state[key] for state in states], shares, key) for key in first}


def _average_tensor(tensors: list[Tensor], shares: list[float], key: str) -> Tensor:
    tensors = [t.detach().to("cpu") for t in tensors]
    reference = tensors[0]
    if any(t.shape != reference.shape for t in tensors):
        raise TaggerError(f"{key}: tensors of different shapes cannot be averaged")
    dtype = reference.dtype
    if dtype == torch.bool:
        return reference.clone().contiguous()
    wide = torch.complex128 if dtype.is_complex else torch.float64
    total = torch.zeros(reference.shape, dtype=wide)
    for tensor, share in zip(tensors, shares, strict=True):
        total += share * tensor.to(wide)
    if not (dtype.is_floating_point or dtype.is_complex):
        total = torch.floor(total + 0.5)
    return total.to(dtype).contiguous()


def average_payloads(payloads: Sequence[dict], sources: Sequence[str],
                     weights: Sequence[float] | None = None) -> dict:
    """A new checkpoint payload holding the averaged weights of compatible checkpoints; the inputs are untouched.

    Everything but the weights and the training record comes from the first checkpoint (they are equal, or
    check_compatible would have refused). Per-epoch metrics are dropped: they describe a member, not the mean; so
    is an event rule stored with the first one, whose thresholds were tuned on that member's scores. The provenance
    ("source") is every member's, with the average appended (`derived_source`), so their licences stay with it.
    """
    check_compatible(payloads, sources)
    shares = check_weights(weights, len(payloads))
    first = payloads[0]
    result = {key: copy.deepcopy(value) for key, value in first.items()
              if key not in ("state_dict", "train", "event_rule")}
    result["state_dict"] = average_states([p["state_dict"] for p in payloads], shares)
    result["train"] = _averaged_train(payloads, sources, shares)
    step = {"how": "weight average", "from": [str(s) for s in sources]}
    origin = derived_source([p.get("source") for p in payloads], step)
    result.pop("source", None)
    if origin:
        result["source"] = origin  # the members' provenance and licences, kept for the average
    return result


def _averaged_train(payloads: Sequence[dict], sources: Sequence[str], shares: list[float]) -> dict:
    trains = [p.get("train") or {} for p in payloads]
    train = {key: copy.deepcopy(trains[0][key]) for key in ("config", "metric") if key in trains[0]}
    epochs = [t.get("epoch") for t in trains]
    known = [e for e in epochs if e is not None]
    train["epoch"] = max(known) if known else None
    train["averaged"] = {"sources": [str(s) for s in sources], "weights": list(shares), "epochs": epochs}
    return train


# --------------------------------------------------------------------------------------------- BatchNorm


def _batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model keeps BatchNorm running statistics, the only state that averaging weights can break."""
    return bool(_batchnorm_layers(model))


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor | tuple],
                          on_batch: Callable[[int], None] | None = None) -> int:
    """Re-estimate BatchNorm running statistics for the current (averaged) weights; returns the clips seen.

    The mean of the members' running statistics is not the statistics of the mean network, so SWA recomputes
    them with one pass over training audio. Only the BatchNorm layers run in training mode: dropout, front-end
    augmentation and the like stay off, so the statistics describe the inputs the model will see at inference.
    Momentum None makes every layer keep the plain average over batches. Each item of `batches` is a (B, S)
    waveform at the model's sample rate, or a tuple whose first element is one. On failure, or when `batches`
    is empty, the previous statistics are put back.
    """
    layers = _batchnorm_layers(model)
    if not layers:
        raise TaggerError(f"{getattr(model, 'arch', type(model).__name__)} has no BatchNorm layers; "
                          "drop --bn-recalibrate")
    saved = [(layer.momentum, {k: v.clone() for k, v in _bn_buffers(layer).items()}) for layer in layers]
    device = _device_of(model)
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    seen = 0
    try:
        seen = _run_batches(model, batches, device, on_batch)
        if seen == 0:
            raise TaggerError("the manifest gave no clips to re-estimate BatchNorm statistics with; "
                              "check the manifest given for --bn-recalibrate")
    except BaseException:
        for layer, (_, buffers) in zip(layers, saved, strict=True):
            for name, value in buffers.items():
                getattr(layer, name).copy_(value)
        raise
    finally:
        for layer, (momentum, _) in zip(layers, saved, strict=True):
            layer.momentum = momentum
        model.eval()
    return seen


def _bn_buffers(layer: _BatchNorm) -> dict[str, Tensor]:
    names = ("running_mean", "running_var", "num_batches_tracked")
    return {name: getattr(layer, name) for name in names if getattr(layer, name, None) is not None}


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _run_batches(model: nn.Module, batches: Iterable[Tensor | tuple], device: torch.device,
                 on_batch: Callable[[int], None] | None) -> int:
    seen = 0
    with torch.no_grad():
        for batch in batches:
            wave = batch[0] if isinstance(batch, (tuple, list)) else batch
            if wave.dim() != 2:
                raise TaggerError(f"BatchNorm re-estimation needs (batch, samples) waveforms, got shape "
                                  f"{tuple(wave.shape)}")
            try:
                model(wave.to(device=device, dtype=torch.float32))
            except ValueError as error:
                if "Expected more than 1 value per channel" not in str(error):
                    raise
                raise TaggerError(f"a batch of {wave.shape[0]} clip(s) is too small for BatchNorm statistics; "
                                  "use a larger batch size for --bn-recalibrate") from None
            seen += int(wave.shape[0])
            if on_batch is not None:
                on_batch(int(wave.shape[0]))
    return seen
