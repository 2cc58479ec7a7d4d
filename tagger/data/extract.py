"""`tagger extract-features`: decode a data set in parallel, run a batched front-end, cache float16 features.

The data set is anything `open_clips` opens (a manifest, a pack, an AudioSet HDF5 file); ids and labels come from
its table, audio from `clips.load`, and a clip is named by `clips.where` in errors.csv and messages.

Decoding and resampling run in DataLoader workers; the front-end runs batched in the main process on clips
of equal length (so every clip's features equal a per-clip computation exactly). Finished clips are committed
in shards (see data/store.py), which makes the job resumable and safe to interrupt.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tagger import audio, console
from tagger.data.clips import Clips, from_examples
from tagger.data.manifests import Example
from tagger.data.store import ShardWriter, finalize_store, init_store, scan_store, shard_tag
from tagger.errors import TaggerError
from tagger.frontends import build_frontend, frontend_to_dict
from tagger.jobs import parse_part, sigterm_as_interrupt  # noqa: F401 (parse_part: the old import path)
from tagger.labels import LabelSet

ON_ERROR = ("fail", "skip")


@dataclass
class ExtractResult:
    out_dir: Path
    processed: int
    already_done: int
    failed: int
    stats: dict


def _in_part(clip_id: str, part: tuple[int, int]) -> bool:
    k, n = part
    return zlib.crc32(clip_id.encode()) % n == k - 1


def select_part(examples: Sequence[Example], part: tuple[int, int] | None) -> list[Example]:
    """The clips of part K of N, chosen by a hash of the clip id so parts are disjoint whatever the row order."""
    if part is None:
        return list(examples)
    return [e for e in examples if _in_part(e.id, part)]


class _DecodeDataset(Dataset):
    """Worker-side decoding: returns the waveform or the one-line reason it could not be read."""

    def __init__(self, clips: Clips, rows: Sequence[int], sample_rate: int, num_samples: int | None):
        self.clips = clips
        self.rows = rows
        self.sample_rate = sample_rate
        self.num_samples = num_samples

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        row = int(self.rows[index])
        try:
            wave = self.clips.load(row, self.sample_rate)
            if self.num_samples is not None:
                wave = audio.crop_or_pad(wave, self.num_samples, mode="start")
            return index, wave, None
        except TaggerError as error:
            where, reason = self.clips.where(row), str(error)
            return index, None, reason if where in reason else f"{where}: {reason}"


def extract_features(
    data: Clips | Sequence[Example],
    out_dir: str | Path,
    frontend: dict | str,
    *,
    missing: Sequence[Example] = (),
    labels: LabelSet | None = None,
    workers: int = 2,
    batch_size: int = 16,
    on_error: str = "fail",
    part: tuple[int, int] | None = None,
    duration: float | None = None,
    clips_per_shard: int = 256,
    manifest_name: str = "",
    show_progress: bool = True,
) -> ExtractResult:
    """Extract features for the clips of `data` (opened Clips, or a manifest's Examples with their `missing`)
    into the store at `out_dir`, skipping clips already stored there."""
    if on_error not in ON_ERROR:
        raise TaggerError(f"--on-error {on_error!r} must be one of {', '.join(ON_ERROR)}")
    if workers < 0 or batch_size < 1 or clips_per_shard < 1:
        raise TaggerError("--workers must be >= 0, --batch-size and --shard-size >= 1")
    if duration is not None and duration <= 0:
        raise TaggerError(f"--duration {duration} must be positive")
    clips = data if isinstance(data, Clips) else from_examples(data)
    missing = list(clips.missing) if isinstance(data, Clips) else list(missing)
    table = clips.table
    if labels is not None:
        table.labels.column_map(labels)  # unknown labels fail before any work starts
    missing = select_part(missing, part)
    if missing and on_error == "fail":
        raise TaggerError(
            f"{len(missing)} audio files of the manifest are missing, e.g. {missing[0].path}; "
            "fix the paths or pass --on-error skip"
        )

    module = build_frontend(frontend).eval()
    spec = frontend_to_dict(module)
    out = Path(out_dir)
    bins = int(module(torch.zeros(1, module.sample_rate)).shape[1])
    init_store(out, spec, bins, manifest_name)
    if labels is not None:
        labels.write_csv(out / "labels.csv")

    done = {clip["id"] for clip in scan_store(out)[0]}
    ids = table.ids.tolist()
    mine = [row for row, clip_id in enumerate(ids) if part is None or _in_part(clip_id, part)]
    todo = np.asarray([row for row in mine if ids[row] not in done], dtype=np.int64)
    already = len(mine) - len(todo)
    writer = ShardWriter(out, shard_tag(part), bins, clips_per_shard)
    for example in missing:
        if example.id not in done:
            writer.add_error(example.id, str(example.path), "file not found")

    num_samples = None if duration is None else int(round(duration * module.sample_rate))
    loader = DataLoader(
        _DecodeDataset(clips, todo, module.sample_rate, num_samples),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        persistent_workers=False,
    )
    processed = failed = 0
    started = time.perf_counter()
    with console.progress() as bar, sigterm_as_interrupt():
        task = bar.add_task("extracting", total=len(todo), rate="", visible=show_progress)
        try:
            for batch in loader:
                failed += _extract_batch(batch, clips, todo, module, writer, on_error)
                processed += len(batch)
                rate = processed / max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=len(batch), rate=f"{rate:.1f} clips/s")
        except BaseException:  # Ctrl-C, kill or a bad file: keep every finished clip, then stop
            writer.commit()
            finalize_store(out)
            raise
    writer.commit()
    stats = finalize_store(out)
    return ExtractResult(out, processed - failed, already, failed + len(missing), stats)


def _extract_batch(batch, clips: Clips, todo: np.ndarray, module, writer: ShardWriter, on_error: str) -> int:
    """Store the features of a decoded batch, then deal with its failures (so good clips are never lost)."""
    failures: list[tuple[int, str]] = []
    groups: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for index, wave, reason in batch:
        if reason is None:
            groups[wave.shape[-1]].append((index, wave))
        else:
            failures.append((index, reason))
    for items in groups.values():  # equal lengths batch exactly: no padding changes any clip's features
        waves = torch.from_numpy(np.stack([wave for _, wave in items]))
        try:
            with torch.inference_mode():
                features = module(waves).float().numpy()
        except TaggerError as error:
            failures.extend((index, f"{clips.where(int(todo[index]))}: {error}") for index, _ in items)
            continue
        for row, (index, _) in enumerate(items):
            problem = _check_finite(features[row])
            clip = int(todo[index])
            if problem is None:
                writer.add(clips.ids[clip], clips.where(clip), list(clips.table.labels.row(clip)), features[row])
            else:
                failures.append((index, f"{clips.where(clip)}: {problem}"))
    if failures and on_error == "fail":
        raise TaggerError(f"{failures[0][1]} (pass --on-error skip to record bad files in errors.csv and go on)")
    for index, reason in failures:
        clip = int(todo[index])
        writer.add_error(clips.ids[clip], clips.where(clip), reason)
    return len(failures)


def _check_finite(features: np.ndarray) -> str | None:
    if not np.isfinite(features).all():
        return "features contain NaN or Inf"
    if np.abs(features).max() > np.finfo(np.float16).max:
        return "features exceed the float16 range"
    return None
