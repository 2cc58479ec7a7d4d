"""--mode weights: choose checkpoints, average their parameters (re-estimating BatchNorm if asked), write one
ordinary checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from tagger.ensemble.members import (
    Candidate,
    EnsembleSettings,
    Hooks,
    member_rows,
    member_weights,
    model_tagger,
    score_tagger,
)
from tagger.ensemble.report import Report
from tagger.ensemble.selection import Selection, choose, metric_value
from tagger.errors import TaggerError
from tagger.labels import LabelSet

DEFAULT_CLIP_SECONDS = 10.0  # BatchNorm re-estimation clip length when the checkpoint does not record its own


def build_average(candidates: list[Candidate], pool: list[int], selection: Selection, labels: LabelSet, task: str,
                  validation, settings: EnsembleSettings, hooks: Hooks) -> Report:
    from tagger.checkpoint import model_from_payload, save_checkpoint
    from tagger.ensemble.averaging import average_payloads

    scored: dict[tuple[int, ...], float] = {}  # greedy's trial averages, so the final one is not scored twice
    chosen = choose(selection, pool, [c.value for c in candidates],
                    _soup_value(candidates, validation, settings, hooks, scored))
    members = [candidates[k] for k in chosen]
    weights = member_weights(members)
    averaged = average_payloads([m.payload for m in members], [m.source for m in members], weights)
    model, meta = model_from_payload(averaged, str(settings.out))
    bn_clips = None
    if settings.bn_recalibrate is not None:
        bn_clips = _recalibrate(model, averaged, settings, hooks)
    value = None
    if validation is not None:
        key = tuple(chosen)
        if bn_clips is None and key in scored and settings.weights is None:
            value = scored[key]
        else:
            value = _model_value(model, meta, str(settings.out), validation, settings, hooks)
    rows = member_rows(candidates, chosen, weights)
    report = Report("weights", settings.select, "parameters", str(settings.out), rows,
                    validation.metric if validation else None, str(settings.valid) if validation else None, value,
                    bn_clips)
    train = {**averaged.get("train", {}), "ensemble": report.to_dict()}
    save_checkpoint(settings.out, model, labels, task, normalization=averaged.get("normalization"), train=train,
                    source=averaged.get("source"))
    return report


def _soup_value(candidates: Sequence[Candidate], validation, settings: EnsembleSettings, hooks: Hooks,
                scored: dict):
    """Greedy selection over weight averages: each trial averages the subset uniformly and scores it."""
    from tagger.checkpoint import model_from_payload
    from tagger.ensemble.averaging import average_payloads

    def value(indices: list[int]) -> float:
        key = tuple(sorted(indices))
        if key not in scored:
            members = [candidates[k] for k in key]
            averaged = average_payloads([m.payload for m in members], [m.source for m in members])
            model, meta = model_from_payload(averaged, "average")
            scored[key] = _model_value(model, meta, f"average of {len(key)}", validation, settings, hooks)
        return scored[key]

    return value


def _model_value(model, meta, source: str, validation, settings: EnsembleSettings, hooks: Hooks) -> float:
    from tagger.ensemble.combine import probabilities

    tagger = model_tagger(model, meta, source, settings)
    result = score_tagger(tagger, f"validating {source}", validation, settings, hooks)
    value = metric_value(validation.metric, validation.targets, probabilities(result.logits, tagger.task))
    hooks.log(f"{source}: {validation.metric} {value:.4f}")
    return value


def _recalibrate(model, payload: dict, settings: EnsembleSettings, hooks: Hooks) -> int:
    """Re-estimate BatchNorm statistics on the --bn-recalibrate data (a manifest, pack or HDF5 file) at the
    training clip length."""
    from tagger.data.clips import open_clips
    from tagger.ensemble.averaging import recalibrate_batchnorm
    from tagger.inference.runtime import resolve_device

    clips = open_clips(settings.bn_recalibrate, settings.manifest_format, audio_dir=settings.audio_dir,
                          folds=settings.bn_folds)
    if not len(clips):
        raise TaggerError(f"--bn-recalibrate {settings.bn_recalibrate}: no readable clips listed")
    if clips.missing:
        hooks.log(f"note: {len(clips.missing)} clips of {settings.bn_recalibrate} are missing; they are skipped")
    config = (payload.get("train") or {}).get("config") or {}
    seconds = float((config.get("data") or {}).get("clip_seconds") or DEFAULT_CLIP_SECONDS)
    total, done = len(clips), 0

    def clip_done() -> None:
        nonlocal done
        done += 1
        hooks.progress("re-estimating BatchNorm", done, total)

    batches = waveform_batches(clips, model.sample_rate, seconds, settings.batch_size, clip_done)
    clips = recalibrate_batchnorm(model.to(resolve_device(settings.device)), batches)
    model.cpu()
    hooks.log(f"BatchNorm statistics re-estimated on {clips} clips of {seconds:g} s")
    return clips


def waveform_batches(clips, rate: int, seconds: float, batch_size: int,
                     on_clip: Callable[[], None] | None = None) -> Iterator[torch.Tensor]:
    """(B, S) float32 batches of the clips at `rate`, each cropped or zero-padded to `seconds`."""
    from tagger import audio

    length = round(seconds * rate)
    count = len(clips)
    starts = list(range(0, count, batch_size))
    if len(starts) > 1 and count - starts[-1] == 1:
        starts.pop()  # no batch of one clip at the end (BatchNorm needs two values per channel): join the last
    for begin, end in zip(starts, [*starts[1:], count], strict=True):
        batch = []
        for index in range(begin, end):
            batch.append(audio.crop_or_pad(clips.load(index, rate), length))
            if on_clip is not None:
                on_clip()
        yield torch.from_numpy(np.stack(batch))
