"""`tagger pack`: decode a manifest's clips in worker processes and write them into HDF5 shards, resumably.

Shard i holds the manifest's clips [i*S, (i+1)*S) (those whose audio exists, in order), so any number of runs,
on one machine after a kill or on N machines with --shard K/N, fill the same folder without coordinating. A
shard is written to a temporary file and renamed when whole: a kill loses at most the shards in flight.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf

from tagger import audio, console
from tagger.data.manifests import Example
from tagger.data.pack import (
    CODECS,
    FORMAT,
    MP3_RATES,
    VERSION,
    build_index,
    incomplete_message,
    missing_shards,
    read_meta,
    read_shard_columns,
    shard_name,
)
from tagger.data.table import LabelColumn, StringColumn
from tagger.errors import TaggerError
from tagger.fileio import atomic_path, atomic_write_json, atomic_write_text
from tagger.jobs import sigterm_as_interrupt

MP3_LEVEL = 0.65  # libsndfile's constant-bitrate level that gives 128 kbit/s, ffmpeg's default (PaSST's AudioSet)
_CHUNK = 8  # clips per task handed to a worker: few round trips, yet an even spread over workers


@dataclass
class PackResult:
    out: Path
    shards: int
    written: list[int] = field(default_factory=list)  # shards written by this run
    already: int = 0  # shards of this run's part that an earlier run finished
    clips: int = 0  # clips stored by this run
    unreadable: int = 0  # clips of this run's shards that could not be read
    missing_files: int = 0  # manifest rows without audio (all runs list them)
    complete: bool = False
    total_clips: int | None = None
    remaining: str = ""  # the one-line note on what is left, when incomplete


class _Unstorable(TaggerError):
    """A clip the settings cannot store (not a bad file): stops the run instead of being skipped."""


def check_settings(codec: str, sample_rate: int | None, shard_size: int, workers: int) -> None:
    if codec not in CODECS:
        raise TaggerError(f"--codec {codec!r} is not one of {', '.join(CODECS)}")
    if sample_rate is not None and sample_rate <= 0:
        raise TaggerError(f"--sample-rate {sample_rate} must be a positive number of Hz")
    if codec == "mp3" and sample_rate is not None and sample_rate not in MP3_RATES:
        raise TaggerError(f"--codec mp3 cannot store {sample_rate} Hz; use --sample-rate "
                          f"{' or '.join(str(r) for r in MP3_RATES[-3:])} (MP3 also takes {MP3_RATES[:-3]})")
    if shard_size < 1 or workers < 0:
        raise TaggerError("--shard-size must be >= 1 and --workers >= 0")


def encode_clip(path: str, codec: str, sample_rate: int | None) -> tuple[bytes, int, int]:
    """(encoded bytes, rate, samples) of one file, decoded exactly as tagger.audio loads loose files."""
    if codec != "mp3":
        own = _int16_samples(path, sample_rate)
        if own is not None:  # a mono 16-bit file kept at its rate: its samples as they are (the common case)
            samples, rate = own
            if codec == "pcm16":
                return samples.astype("<i2").tobytes(), rate, len(samples)
            buffer = io.BytesIO()
            sf.write(buffer, samples, rate, format="FLAC", subtype="PCM_16")
            return buffer.getvalue(), rate, len(samples)
    wave, rate = audio.load_with_rate(path)
    if sample_rate is not None and sample_rate != rate:
        wave, rate = audio.resample(wave, rate, sample_rate), sample_rate
    if codec == "pcm16":
        return _int16(wave).astype("<i2").tobytes(), rate, len(wave)
    buffer = io.BytesIO()
    if codec == "mp3":
        if rate not in MP3_RATES:
            raise _Unstorable(f"{path} is at {rate} Hz, which MP3 cannot store; pass --sample-rate 32000 "
                              "(or 44100, 48000)")
        sf.write(buffer, np.clip(wave, -1, 1), rate, format="MP3", bitrate_mode="CONSTANT",
                 compression_level=MP3_LEVEL)
    elif _on_grid(wave, 16):
        # A 16-bit source, not resampled: stored bit-identical, and at its own size, not 24 bits.
        sf.write(buffer, _int16(wave), rate, format="FLAC", subtype="PCM_16")
    else:
        scaled = np.clip(np.round(wave * np.float64(2 ** 23)), -2 ** 23, 2 ** 23 - 1).astype(np.int32)
        sf.write(buffer, scaled << 8, rate, format="FLAC", subtype="PCM_24")  # int32 input: the top 24 bits
    return buffer.getvalue(), rate, len(wave)


def _int16_samples(path: str, sample_rate: int | None) -> tuple[np.ndarray, int] | None:
    """A mono 16-bit PCM file's samples as int16 when they are stored unchanged (no resampling); None otherwise,
    and for anything unusual, which then goes through tagger.audio (and its one-line errors)."""
    try:
        with sf.SoundFile(path) as handle:
            if handle.channels != 1 or handle.subtype != "PCM_16" or sample_rate not in (None, handle.samplerate):
                return None
            samples = handle.read(dtype="int16")
            rate = handle.samplerate
    except (sf.SoundFileError, RuntimeError, OSError, ValueError):
        return None
    return (samples, rate) if len(samples) else None


def _on_grid(wave: np.ndarray, bits: int) -> bool:
    """Whether every sample is exactly a `bits`-bit integer sample (read as float by libsndfile)."""
    scaled = wave.astype(np.float64) * 2 ** (bits - 1)
    return bool(np.all(scaled == np.round(scaled)) and scaled.min(initial=0) >= -2 ** (bits - 1)
                and scaled.max(initial=0) < 2 ** (bits - 1))


def _int16(wave: np.ndarray) -> np.ndarray:
    return np.clip(np.round(wave.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)


def _encode_task(item: tuple[int, str], codec: str, sample_rate: int | None) -> tuple:
    """Worker side: (position, bytes, rate, samples, None) or (position, None, 0, 0, reason)."""
    position, path = item
    try:
        return (position, *encode_clip(path, codec, sample_rate), None)
    except _Unstorable:
        raise
    except TaggerError as error:
        return position, None, 0, 0, str(error)


def _ignore_interrupts() -> None:
    """Pool workers leave Ctrl-C to the main process, which stops them (no traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def clip_digest(examples: Sequence[Example]) -> str:
    """Fingerprint of the clip list the shards slice: a rerun on another list would mix two data sets."""
    return hashlib.sha256("\n".join(e.id for e in examples).encode("utf-8")).hexdigest()


def _meta(examples: Sequence[Example], source: Path, manifest_format: str, manifest_options: dict, codec: str,
          sample_rate: int | None, shard_size: int) -> dict:
    return {
        "format": FORMAT, "version": VERSION, "codec": codec, "sample_rate": sample_rate, "shard_size": shard_size,
        "shards": -(-len(examples) // shard_size), "source": str(source), "clips": None,
        "manifest_clips": len(examples), "manifest_digest": clip_digest(examples),
        "manifest_options": {"manifest_format": None if manifest_format == "auto" else manifest_format,
                             **manifest_options},
    }


def _start(out: Path, meta: dict) -> None:
    """Create the pack, or check that the one there was made with the same settings from the same clips."""
    if not (out / "pack.json").exists():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise TaggerError(f"{out} exists and is not a pack; choose a new or empty folder for --out")
        atomic_write_json(out / "pack.json", meta)
        return
    old = read_meta(out)
    for key, option in (("codec", "--codec"), ("sample_rate", "--sample-rate"), ("shard_size", "--shard-size")):
        if old[key] != meta[key]:
            raise TaggerError(f"{out} was packed with {option} {old[key]}, not {meta[key]}; rerun with the same "
                              "settings or choose a new --out")
    if old["manifest_digest"] != meta["manifest_digest"]:
        raise TaggerError(f"{out} was packed from another clip list ({old['manifest_clips']} clips of "
                          f"{old['source']}; now {meta['manifest_clips']} with audio); pack into a new --out")


def _write_shard(out: Path, shard: int, start: int, stop: int, examples: Sequence[Example], results: list,
                 codec: str) -> tuple[int, int]:
    """Write one whole shard atomically; returns (clips stored, clips unreadable)."""
    import h5py

    kept = [r for r in results if r[1] is not None]
    failed = [r for r in results if r[1] is None]
    ids = StringColumn.from_strings(examples[r[0]].id for r in kept)
    labels = LabelColumn.from_lists(examples[r[0]].labels for r in kept)
    strings = h5py.string_dtype("utf-8")
    with atomic_path(out / shard_name(shard)) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs.update({"format": FORMAT, "version": VERSION, "codec": codec, "shard": shard,
                             "first_clip": start, "end_clip": stop})
        # One contiguous byte array plus offsets (not a variable-length dataset): a clip's bytes then sit at a
        # fixed place in the file, which readers fetch with one pread instead of going through the HDF5 library.
        sizes = np.array([len(r[1]) for r in kept], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        handle.create_dataset("audio", data=np.frombuffer(b"".join(r[1] for r in kept), dtype=np.uint8))
        handle["audio_offsets"] = offsets
        handle["sample_rate"] = np.array([r[2] for r in kept], dtype=np.int32)
        handle["num_samples"] = np.array([r[3] for r in kept], dtype=np.int64)
        handle["clip"] = np.array([r[0] for r in kept], dtype=np.int64)  # position in the manifest's clips
        handle["ids_data"], handle["ids_offsets"] = ids.data, ids.offsets
        handle["labels_indptr"], handle["labels_indices"] = labels.indptr, labels.indices
        handle.create_dataset("labels_vocabulary", data=labels.vocabulary, dtype=strings)
        handle.create_dataset("errors_path", data=[str(examples[r[0]].path) for r in failed], dtype=strings)
        handle.create_dataset("errors_reason", data=[r[4] for r in failed], dtype=strings)
    return len(kept), len(failed)


def write_errors(out: Path, meta: dict, missing: Sequence[Example]) -> int:
    """errors.tsv from the manifest's missing files and every finished shard's unreadable clips."""
    rows = [(str(e.path), "audio file not found") for e in missing]
    for shard in range(meta["shards"]):
        if (out / shard_name(shard)).is_file():
            rows.extend(read_shard_columns(out / shard_name(shard))["errors"])
    clean = [(p.replace("\t", " ").replace("\n", " "), r.replace("\t", " ").replace("\n", " ")) for p, r in rows]
    atomic_write_text(out / "errors.tsv", "path\treason\n" + "".join(f"{p}\t{r}\n" for p, r in clean))
    return len(rows)


def _bounds(shard: int, shard_size: int, examples: Sequence[Example]) -> tuple[int, int]:
    return shard * shard_size, min((shard + 1) * shard_size, len(examples))


def _fill_shards(out: Path, todo: list[int], stream, total: int, examples: Sequence[Example], meta: dict,
                 result: PackResult, on_progress: Callable[[int, int], None] | None) -> None:
    """Collect the encoded clips (in order) and write each shard as soon as its last clip is in."""
    pending = iter(todo)
    shard = next(pending, None)
    results: list = []
    for done, item in enumerate(stream, 1):
        results.append(item)
        if on_progress:
            on_progress(done, total)
        start, stop = _bounds(shard, meta["shard_size"], examples)
        if len(results) == stop - start:
            stored, failed = _write_shard(out, shard, start, stop, examples, results, meta["codec"])
            result.written.append(shard)
            result.clips += stored
            result.unreadable += failed
            results, shard = [], next(pending, None)


def pack(
    examples: Sequence[Example],
    out: str | Path,
    *,
    source: str | Path,
    missing: Sequence[Example] = (),
    codec: str = "flac",
    sample_rate: int | None = None,
    shard_size: int = 1000,
    part: tuple[int, int] | None = None,
    workers: int = 2,
    manifest_format: str = "auto",
    manifest_options: dict | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PackResult:
    """Pack the shards of `part` (all by default) that are not there yet; build the index once all are."""
    check_settings(codec, sample_rate, shard_size, workers)
    out = Path(out)
    meta = _meta(examples, Path(source), manifest_format, manifest_options or {}, codec, sample_rate, shard_size)
    _start(out, meta)
    meta = read_meta(out)
    ours = [i for i in range(meta["shards"]) if part is None or i % part[1] == part[0] - 1]
    todo = [i for i in ours if not (out / shard_name(i)).is_file()]
    for stale in out.glob(".shard-*.h5.tmp*"):  # left by a killed run; atomic_path names them .NAME.tmp-PID
        number = re.fullmatch(r"\.shard-(\d+)\.h5\.tmp.*", stale.name)
        if number and int(number[1]) in todo:
            stale.unlink(missing_ok=True)
    result = PackResult(out, meta["shards"], already=len(ours) - len(todo), missing_files=len(missing))

    items = [(p, str(examples[p].path)) for shard in todo for p in range(*_bounds(shard, shard_size, examples))]
    task = partial(_encode_task, codec=codec, sample_rate=sample_rate)
    pool = multiprocessing.get_context().Pool(workers, _ignore_interrupts) if workers > 0 else None
    try:
        with sigterm_as_interrupt():
            stream = pool.imap(task, items, chunksize=_CHUNK) if pool else map(task, items)
            _fill_shards(out, todo, stream, len(items), examples, meta, result, on_progress)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        write_errors(out, meta, missing)
    left = missing_shards(out, meta)
    if left:
        result.remaining = incomplete_message(out, meta, left)
    else:
        result.complete = True
        if result.written or not (out / "index").is_dir():
            result.total_clips = build_index(out, meta)
        else:
            result.total_clips = read_meta(out)["clips"]
    return result


def pack_with_progress(examples: Sequence[Example], out: str | Path, **options) -> PackResult:
    """`pack` under a rich progress bar showing clips/s."""
    with console.counting("packing", "clips") as progress:
        return pack(examples, out, on_progress=progress, **options)
