"""The model a run starts from (random, ImageNet or a tagger checkpoint) and the cached-feature view it reads."""

from __future__ import annotations

import json
from typing import Any

from tagger.checkpoint import derived_source, load_checkpoint
from tagger.data.dataset import CachedFeatureDataset
from tagger.errors import TaggerError
from tagger.frontends import KaldiFbank, frontend_to_dict
from tagger.labels import LabelSet
from tagger.models import TaggerModel, create_model
from tagger.training.config import TrainConfig

# Settings that only scale or pad the features: a store keeps raw features and the run applies these.
_NORMALISATION_KEYS = {"mean", "std", "std_scale", "target_length"}


def build_model(config: TrainConfig, labels: LabelSet, saved_kwargs: dict[str, Any] | None = None,
                extra_kwargs: dict[str, Any] | None = None) -> tuple[TaggerModel, list[str]]:
    """(model, notes for the user). `saved_kwargs` rebuilds a resumed run's model without reading its init;
    `extra_kwargs` are what the run itself needs (frame output for strong labels), under the recipe's own."""
    arch, kwargs, init = config.model.arch, {**(extra_kwargs or {}), **config.model.kwargs}, config.model.init
    if saved_kwargs is not None:
        return create_model(arch, **saved_kwargs), []
    kwargs["num_classes"] = len(labels)
    if init.startswith("checkpoint:"):
        return from_checkpoint(init.partition(":")[2], arch, kwargs, labels)
    if init and not init.startswith("imagenet:"):
        raise TaggerError(f"model.init {init!r} must be imagenet:PATH or checkpoint:PATH (or empty for random)")
    model = create_model(arch, init=init or None, **kwargs)
    notes = [f"initialised {arch} from ImageNet weights {init.partition(':')[2]}"] if init else []
    return model, notes


def classifier_keys(arch: str, kwargs: dict[str, Any]) -> set[str]:
    """The state_dict keys whose shape depends on the number of classes, found by building two tiny variants."""
    two = create_model(arch, **{**kwargs, "num_classes": 2}).state_dict()
    three = create_model(arch, **{**kwargs, "num_classes": 3}).state_dict()
    return {k for k in two if two[k].shape != three[k].shape}


def from_checkpoint(path: str, arch: str, kwargs: dict[str, Any], labels: LabelSet) -> tuple[TaggerModel, list[str]]:
    """Everything of a tagger checkpoint loads; the classifier is re-initialised when the label set differs.

    The model carries `init_source`, the checkpoint's provenance with this run appended (`derived_source`), for
    the trainer to record in the checkpoints it writes: weights trained from imported ones keep their licence."""
    if not path:
        raise TaggerError("model.init=checkpoint: needs a path, e.g. checkpoint:mn04_as.pt")
    source, meta = load_checkpoint(path)
    if meta["arch"] != arch:
        raise TaggerError(f"{path} holds a {meta['arch']} model, not {arch}; pass --arch {meta['arch']}")
    kwargs = {**meta["model_kwargs"], **kwargs}
    model = create_model(arch, **kwargs)
    same_labels = meta["labels"] == labels
    fresh = set() if same_labels else classifier_keys(arch, kwargs)
    own, theirs = model.state_dict(), source.state_dict()
    loaded = {}
    for key, value in own.items():
        if key in fresh:
            continue
        if key not in theirs:
            raise TaggerError(f"{path} lacks {key}; it was saved by another version of {arch}")
        if theirs[key].shape != value.shape:
            raise TaggerError(f"{path}: {key} has shape {tuple(theirs[key].shape)} but this run's {arch} needs "
                              f"{tuple(value.shape)}; use the checkpoint's model settings ({meta['model_kwargs']})")
        loaded[key] = theirs[key]
    model.load_state_dict({**own, **loaded})
    model.init_source = derived_source([meta.get("source")], {"how": "trained", "from": str(path)})
    notes = [f"initialised from {path}: {len(loaded)} of {len(own)} tensors loaded"]
    if fresh:
        notes.append(f"the label set differs ({len(meta['labels'])} → {len(labels)} classes): classifier re-initialised"
                     f" ({', '.join(sorted(fresh))} skipped)")
    return model, notes


def cached_features(source, model: TaggerModel, labels: LabelSet, clip_seconds: float) -> CachedFeatureDataset:
    """A store's features as the model's front-end would give them: same front-end, then its padding/normalising."""
    wanted = json.loads(json.dumps(frontend_to_dict(model.frontend)))
    stored = source.store.frontend
    for key, value in wanted.items():
        if key not in _NORMALISATION_KEYS and stored.get(key) != value:
            raise TaggerError(f"{source.path} was extracted with {key}={stored.get(key)!r}, but {model.arch} needs "
                              f"{value!r}; re-run extract-features with the model's front-end")
    frontend = model.frontend
    if isinstance(frontend, KaldiFbank):
        c = frontend.config
        frames = c.target_length or frontend.num_frames(int(round(clip_seconds * frontend.sample_rate)))
        return CachedFeatureDataset(source.store, labels, target_frames=frames, mean=c.mean, std=c.std,
                                    std_scale=c.std_scale)
    frames = frontend.num_frames(int(round(clip_seconds * frontend.sample_rate)))
    return CachedFeatureDataset(source.store, labels, target_frames=frames)
