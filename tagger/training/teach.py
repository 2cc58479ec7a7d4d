"""`tagger teach`: run a teacher over N random draws (crop, gain) of every clip and store its top-K logits per draw,
resumably, for `tagger train --teacher-targets` to replay (CED's consistent teaching).

Shard i holds the data set's clips [i*S, (i+1)*S); its draws are made, batched and scored in a fixed order from
the shard's first clip, so a shard written after an interruption holds exactly what an uninterrupted run writes.
A shard is written to a temporary file and renamed when whole: Ctrl-C or `kill` loses at most the shard in
flight, and a rerun of the same command does only the shards that are missing. N machines (`--shard K/N`, as
`tagger pack`) fill one folder without coordinating: job K does the shards i with i % N == K-1, and whichever job
finds every shard there last writes the totals.
"""

from __future__ import annotations

import hashlib
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from tagger.data.clips import Clips
from tagger.errors import TaggerError
from tagger.fileio import atomic_write_json
from tagger.jobs import sigterm_as_interrupt
from tagger.training.teacher_targets import (
    FORMAT,
    META,
    SETTINGS,
    VERSION,
    choose_draw,
    draw_input,
    missing_shards,
    read_meta,
    shard_ids,
    shard_name,
    start_at,
    teacher_fingerprint,
    top_k,
    write_shard,
)

_OPTIONS = {"crops": "--crops", "top_k": "--top-k", "seed": "--seed", "clip_seconds": "--clip-seconds",
            "gain_db": "--gain-db", "shard_size": "--shard-size"}


@dataclass
class TeachResult:
    out: Path
    shards: int
    written: list[int] = field(default_factory=list)  # shards written by this run
    already: int = 0  # shards of this run's part that an earlier run finished
    clips: int = 0  # clips whose draws this run stored
    unreadable: int = 0  # clips of this run's shards that could not be read
    complete: bool = False
    total_clips: int | None = None  # clips stored in the whole folder, once complete
    seconds: float = 0.0


def check_settings(crops: int, k: int, clip_seconds: float, gain_db: int, shard_size: int, batch_size: int,
                   workers: int) -> None:
    for value, option in ((crops, "--crops"), (k, "--top-k"), (shard_size, "--shard-size"),
                          (batch_size, "--batch-size")):
        if value < 1:
            raise TaggerError(f"{option} {value} must be at least 1")
    if clip_seconds <= 0:
        raise TaggerError(f"--clip-seconds {clip_seconds} must be > 0")
    if not 0 <= gain_db <= 100:
        raise TaggerError(f"--gain-db {gain_db} must be between 0 (no gain) and 100")
    if workers < 0:
        raise TaggerError(f"--workers {workers} must be >= 0")


def clip_digest(ids: list[str]) -> str:
    """Fingerprint of the clip list the shards slice: a rerun on another list would mix two data sets."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def _check_same(out: Path, old: dict, new: dict) -> None:
    """Refuse, in one line, to add to a folder made with other settings."""
    for key in SETTINGS:
        if old.get(key) == new[key]:
            continue
        if key == "teacher_fingerprint":
            raise TaggerError(f"{out} holds targets of another teacher ({old.get('teacher')}, or that file changed "
                              "since); teach into a new --out")
        if key == "clip_digest":
            raise TaggerError(f"{out} was taught on another clip list ({old.get('source_clips')} clips of "
                              f"{old.get('source')}; now {new['source_clips']}); teach into a new --out")
        raise TaggerError(f"{out} was taught with {_OPTIONS[key]} {old.get(key)}, not {new[key]}; rerun with the same "
                          "settings or choose a new --out")


class _Draws(Dataset):
    """Worker side: clip `row` decoded at each of the teacher's rates and cut into its N draws."""

    def __init__(self, clips: Clips, rows: np.ndarray, meta: dict, rates: tuple[int, ...]):
        self.clips, self.rows, self.meta, self.rates = clips, rows, meta, rates

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple:
        """(row, draws (N, 3) or None, one (N, S) array per rate or None, error or None)."""
        row, meta = int(self.rows[k]), self.meta
        try:
            waves = [self.clips.load(row, rate) for rate in self.rates]
        except TaggerError as error:
            return row, None, None, str(error)
        reference = meta["sample_rate"]  # the draws are made at the teacher's (highest) rate
        length = len(waves[self.rates.index(reference)])
        crop = int(round(meta["clip_seconds"] * reference))
        draws = np.array([choose_draw(meta["seed"], row, d, length, crop, meta["gain_db"])
                          for d in range(meta["crops"])], dtype=np.int64)
        inputs = []
        for wave, rate in zip(waves, self.rates, strict=True):
            samples = int(round(meta["clip_seconds"] * rate))
            inputs.append(np.stack([draw_input(wave, samples, start_at(int(start), reference, rate), int(db))
                                    for start, db, _ in draws]))
        return row, draws, inputs, None


class _Shard:
    """One shard's clips as they arrive: crops are scored batch_size at a time, counted from the shard's start."""

    def __init__(self, scorer, batch_size: int, k: int):
        self.scorer, self.batch_size, self.k = scorer, batch_size, k
        self.ids: list[str] = []
        self.rows: list[int] = []
        self.draws: list[np.ndarray] = []
        self.errors: list[tuple[str, str]] = []
        self.queue: list[list[np.ndarray]] = []  # per rate, crops waiting for the teacher
        self.indices: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []

    def add(self, clip_id: str, item: tuple) -> None:
        row, draws, inputs, error = item
        if error is not None:
            self.errors.append((clip_id, error))
            return
        self.ids.append(clip_id)
        self.rows.append(row)
        self.draws.append(draws)
        if not self.queue:
            self.queue = [[] for _ in inputs]
        for waiting, crops in zip(self.queue, inputs, strict=True):
            waiting.extend(crops)
        while len(self.queue[0]) >= self.batch_size:
            self._score(self.batch_size)

    def _score(self, count: int) -> None:
        batch = [np.stack(waiting[:count]) for waiting in self.queue]
        self.queue = [waiting[count:] for waiting in self.queue]
        logits = self.scorer(tuple(batch) if len(batch) > 1 else batch[0], frames=False).logits
        index, values = top_k(logits, self.k)
        self.indices.append(index)
        self.logits.append(values)

    def arrays(self, crops: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(draws (n, N, 3), indices (n, N, K), logits (n, N, K)) once every clip has arrived."""
        if self.queue and self.queue[0]:
            self._score(len(self.queue[0]))
        k = min(self.k, classes)
        dtype = np.int16 if classes <= np.iinfo(np.int16).max else np.int32
        index = np.concatenate(self.indices) if self.indices else np.zeros((0, k), dtype)
        values = np.concatenate(self.logits) if self.logits else np.zeros((0, k), np.float16)
        n = len(self.ids)
        draws = np.stack(self.draws) if self.draws else np.zeros((0, crops, 3), np.int64)
        return draws, index.reshape(n, crops, k), values.reshape(n, crops, k)


def _as_is(item: tuple) -> tuple:
    """Items stay numpy (DataLoader would make tensors of them)."""
    return item


def _quiet_worker(_: int) -> None:
    """Ctrl-C goes to the whole process group; workers leave it to the main process, which stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def teach(teacher: str | Path, data: Clips, out: str | Path, *, crops: int = 10, k: int = 20, seed: int = 0,
          clip_seconds: float = 10.0, gain_db: int = 0, shard_size: int = 1000, batch_size: int = 32,
          workers: int = 2, device: str = "auto", precision: str = "fp32", part: tuple[int, int] | None = None,
          on_progress: Callable[[int, int], None] | None = None) -> TeachResult:
    """Store the teacher's top-k logits for `crops` draws of every clip of `data` in the folder `out`; the shards
    an earlier run finished are kept. `teacher`: a tagger checkpoint, an ensemble file or a pulled release name.
    `part` (K, N): only the shards i with i % N == K-1, for N jobs writing one folder."""
    from tagger.inference.runtime import Scorer, model_path

    started = time.perf_counter()
    check_settings(crops, k, clip_seconds, gain_db, shard_size, batch_size, workers)
    path = model_path(teacher)
    if not path.is_file():
        raise TaggerError(f"teacher {teacher} does not exist; pass a tagger checkpoint or ensemble (.pt) or a "
                          "pulled release's name")
    out = Path(out)
    ids = data.ids.tolist()
    if not ids:
        raise TaggerError(f"{data.source} has no clips to teach")
    meta = {"format": FORMAT, "version": VERSION, "teacher": str(path),
            "teacher_fingerprint": teacher_fingerprint(path), "crops": crops, "top_k": k, "seed": seed,
            "clip_seconds": float(clip_seconds), "gain_db": gain_db,
            "shard_size": shard_size, "shards": -(-len(ids) // shard_size), "source": str(data.source),
            "source_clips": len(ids), "clip_digest": clip_digest(ids)}
    old = read_meta(out) if out.is_dir() else None
    if old is not None:
        _check_same(out, old, meta)
    elif out.exists() and (not out.is_dir() or any(not f.name.startswith(".") for f in out.iterdir())):
        # (a dot file is another job's teach.json on its way in)
        raise TaggerError(f"{out} exists and holds no teacher targets; choose a new or empty folder for --out")

    scorer = Scorer.load(path, device=device, precision=precision, fast=False)  # one code path: reproducible shards
    if old is None:
        meta.update({"sample_rate": scorer.sample_rate, "rates": list(scorer.rates), "label_ids": scorer.labels.ids,
                     "label_names": scorer.labels.names, "shard_clips": None, "clips": None, "unreadable": None})
        atomic_write_json(out / META, meta)
    else:
        meta = old
    ours = [i for i in range(meta["shards"]) if part is None or i % part[1] == part[0] - 1]
    todo = [i for i in missing_shards(out, meta) if i in set(ours)]
    for stale in out.glob(".shard-*.h5.tmp*"):  # left by a killed run (atomic_path names them .NAME.tmp-PID)
        number = re.fullmatch(r"\.shard-(\d+)\.h5\.tmp.*", stale.name)
        if number and int(number[1]) in todo:
            stale.unlink(missing_ok=True)
    result = TeachResult(out, meta["shards"], already=len(ours) - len(todo))

    def bounds(shard: int) -> range:
        return range(shard * shard_size, min((shard + 1) * shard_size, len(ids)))

    rows = np.array([row for shard in todo for row in bounds(shard)], dtype=np.int64)
    loader = DataLoader(_Draws(data, rows, meta, scorer.rates), batch_size=None, num_workers=workers,
                        collate_fn=_as_is, worker_init_fn=_quiet_worker if workers else None)
    shards = iter(todo)
    shard, current = next(shards, None), _Shard(scorer, batch_size, k)
    with sigterm_as_interrupt():
        for done, item in enumerate(loader, 1):
            current.add(ids[item[0]], item)
            if on_progress is not None:
                on_progress(done, len(rows))
            if item[0] == bounds(shard)[-1]:
                draws, index, values = current.arrays(crops, scorer.num_classes)
                write_shard(out / shard_name(shard), meta, shard, current.ids, current.rows, draws, index, values,
                            current.errors)
                result.written.append(shard)
                result.clips += len(current.ids)
                result.unreadable += len(current.errors)
                shard, current = next(shards, None), _Shard(scorer, batch_size, k)
    if not missing_shards(out, meta):
        result.complete = True
        if meta.get("shard_clips") is None:
            counts = [len(shard_ids(out / shard_name(i))) for i in range(meta["shards"])]
            meta.update({"shard_clips": counts, "clips": sum(counts), "unreadable": len(ids) - sum(counts)})
            atomic_write_json(out / META, meta)
        result.total_clips = meta["clips"]
    result.seconds = time.perf_counter() - started
    return result
