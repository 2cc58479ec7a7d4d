"""Feature cache: float16 features in memory-mapped shards plus a JSON index per shard.

Why this layout: a shard becomes visible only when its index file is renamed into place, after its data
file, so a killed run never leaves a half-written shard that a reader would trust, and a rerun resumes by
skipping the clip ids of the committed shards. Several jobs (`--shard K/N`) write disjoint shard sets into
the same folder and every reader sees their union, so no merge step is needed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError
from tagger.fileio import atomic_path, atomic_write_csv, atomic_write_json
from tagger.version import __version__

STORE_FORMAT = "tagger-feature-store"
STORE_VERSION = 1
DTYPE = np.float16
_SHARD_NAME = re.compile(r"^part-(?P<tag>[A-Za-z0-9]+)-(?P<number>\d{5})\.json$")


@dataclass
class RunningStats:
    """Sums in float64 that combine exactly across shards and jobs: the dataset mean/std come from them."""

    bins: int
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    bin_sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    bin_sum_sq: np.ndarray = field(default=None)  # type: ignore[assignment]
    bin_count: int = 0

    def __post_init__(self) -> None:
        if self.bin_sum is None:
            self.bin_sum = np.zeros(self.bins)
            self.bin_sum_sq = np.zeros(self.bins)

    def add(self, features: np.ndarray) -> None:
        values = features.astype(np.float64)
        self.count += values.size
        self.total += float(values.sum())
        self.total_sq += float(np.square(values).sum())
        self.bin_sum += values.sum(axis=1)
        self.bin_sum_sq += np.square(values).sum(axis=1)
        self.bin_count += values.shape[1]

    def merge(self, other: RunningStats) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.bin_sum += other.bin_sum
        self.bin_sum_sq += other.bin_sum_sq
        self.bin_count += other.bin_count

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "sum": self.total,
            "sum_sq": self.total_sq,
            "bin_sum": self.bin_sum.tolist(),
            "bin_sum_sq": self.bin_sum_sq.tolist(),
            "bin_count": self.bin_count,
        }

    @classmethod
    def from_dict(cls, data: dict) -> RunningStats:
        return cls(
            bins=len(data["bin_sum"]),
            count=data["count"],
            total=data["sum"],
            total_sq=data["sum_sq"],
            bin_sum=np.asarray(data["bin_sum"], dtype=np.float64),
            bin_sum_sq=np.asarray(data["bin_sum_sq"], dtype=np.float64),
            bin_count=data["bin_count"],
        )

    def summary(self) -> dict:
        """Mean and std over every feature value (and per bin), as AST computes its normalisation constants."""
        if self.count == 0:
            return {"mean": None, "std": None, "bin_mean": [], "bin_std": []}
        mean = self.total / self.count
        var = max(self.total_sq / self.count - mean * mean, 0.0)
        bin_mean = self.bin_sum / max(self.bin_count, 1)
        bin_var = np.maximum(self.bin_sum_sq / max(self.bin_count, 1) - bin_mean**2, 0.0)
        return {
            "mean": mean,
            "std": var**0.5,
            "bin_mean": bin_mean.tolist(),
            "bin_std": np.sqrt(bin_var).tolist(),
        }


def shard_tag(part: tuple[int, int] | None) -> str:
    """File-name tag of a job's shard set: 'all' for a single job, 'k3of8' for part 3 of 8."""
    return "all" if part is None else f"k{part[0]}of{part[1]}"


class ShardWriter:
    """Buffers finished clips and commits them as one shard (data file, then index) every `clips_per_shard`."""

    def __init__(self, store_dir: Path, tag: str, bins: int, clips_per_shard: int = 256):
        self.dir = Path(store_dir) / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tag = tag
        self.bins = bins
        self.clips_per_shard = clips_per_shard
        self.number = 1 + max(
            (int(m["number"]) for p in self.dir.iterdir() if (m := _SHARD_NAME.match(p.name)) and m["tag"] == tag),
            default=-1,
        )
        self._reset()

    def _reset(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.clips: list[dict] = []
        self.errors: list[dict] = []
        self.stats = RunningStats(self.bins)
        self.offset = 0

    @property
    def pending(self) -> int:
        return len(self.clips) + len(self.errors)

    def add(self, clip_id: str, path: str, labels: list[str], features: np.ndarray) -> None:
        if features.ndim != 2 or features.shape[0] != self.bins:
            raise ValueError(f"features of {clip_id} have shape {features.shape}, expected ({self.bins}, T)")
        self.stats.add(features)
        stored = np.ascontiguousarray(features, dtype=DTYPE)
        self.arrays.append(stored)
        self.clips.append(
            {"id": clip_id, "path": path, "labels": list(labels), "frames": int(stored.shape[1]), "offset": self.offset}
        )
        self.offset += stored.size
        if self.pending >= self.clips_per_shard:
            self.commit()

    def add_error(self, clip_id: str, path: str, reason: str) -> None:
        self.errors.append({"id": clip_id, "path": path, "reason": reason})
        if self.pending >= self.clips_per_shard:
            self.commit()

    def commit(self) -> None:
        """Make the buffered clips durable: data file first, index last (the index is the commit marker)."""
        if not self.pending:
            return
        stem = f"part-{self.tag}-{self.number:05d}"
        data_path = self.dir / f"{stem}.f16"
        with atomic_path(data_path) as tmp, open(tmp, "wb") as handle:
            for array in self.arrays:
                handle.write(array.tobytes())
        index = {
            "data": data_path.name,
            "bins": self.bins,
            "clips": self.clips,
            "errors": self.errors,
            "stats": self.stats.to_dict(),
        }
        atomic_write_json(self.dir / f"{stem}.json", index)
        self.number += 1
        self._reset()


def committed_shards(store_dir: Path) -> list[Path]:
    shards = Path(store_dir) / "shards"
    if not shards.is_dir():
        return []
    return sorted(p for p in shards.iterdir() if _SHARD_NAME.match(p.name))


def _read_index(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TaggerError(
            f"feature store index {path} is unreadable ({error}); delete it and rerun extract-features"
        ) from None


def init_store(store_dir: Path, frontend: dict, bins: int, manifest: str) -> None:
    """Create the store's header, or check that an existing store was made with the same front-end."""
    store_dir.mkdir(parents=True, exist_ok=True)
    header_path = store_dir / "store.json"
    header = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "dtype": "float16",
        "bins": bins,
        "frontend": frontend,
        "manifest": manifest,
        "tagger_version": __version__,
    }
    if header_path.exists():
        existing = load_header(store_dir)
        if existing["frontend"] != frontend:
            raise TaggerError(
                f"{store_dir} holds features from another front-end ({existing['frontend'].get('name')}); "
                "choose a new --out folder"
            )
        return
    atomic_write_json(header_path, header)


def load_header(store_dir: Path) -> dict:
    header_path = Path(store_dir) / "store.json"
    if not header_path.is_file():
        raise TaggerError(
            f"{store_dir} is not a feature store (no store.json); make one with `tagger extract-features`"
        )
    header = _read_index(header_path)
    if header.get("format") != STORE_FORMAT or header.get("version") != STORE_VERSION:
        raise TaggerError(f"{header_path} is not a version {STORE_VERSION} tagger feature store")
    return header


def scan_store(store_dir: Path) -> tuple[list[dict], list[dict], RunningStats | None]:
    """All committed clips (with their shard's data file), errors and combined statistics."""
    clips: list[dict] = []
    errors: list[dict] = []
    stats: RunningStats | None = None
    for index_path in committed_shards(store_dir):
        index = _read_index(index_path)
        for clip in index["clips"]:
            clips.append({**clip, "data": index["data"]})
        errors.extend(index["errors"])
        shard_stats = RunningStats.from_dict(index["stats"])
        if stats is None:
            stats = shard_stats
        else:
            stats.merge(shard_stats)
    stored = {clip["id"] for clip in clips}
    # A clip that failed once and was stored by a later run is no error; report each failing clip once.
    errors = list({e["id"]: e for e in errors if e["id"] not in stored}.values())
    return clips, errors, stats


def finalize_store(store_dir: Path) -> dict:
    """Rewrite stats.json and errors.csv from every committed shard (all jobs); return the stats."""
    header = load_header(store_dir)
    clips, errors, stats = scan_store(store_dir)
    summary = stats.summary() if stats is not None else RunningStats(header["bins"]).summary()
    frames = [c["frames"] for c in clips]
    result = {
        "clips": len(clips),
        "errors": len(errors),
        "bins": header["bins"],
        "frames_total": int(sum(frames)),
        "frames_min": int(min(frames)) if frames else 0,
        "frames_max": int(max(frames)) if frames else 0,
        **summary,
        "frontend": header["frontend"],
        "note": "mean/std over every stored value (before float16 rounding); AST normalises with (x-mean)/(2*std)",
    }
    atomic_write_json(Path(store_dir) / "stats.json", result)
    errors_path = Path(store_dir) / "errors.csv"
    if errors:
        atomic_write_csv(errors_path, ["path", "id", "reason"], ([e["path"], e["id"], e["reason"]] for e in errors))
    elif errors_path.exists():
        errors_path.unlink()
    return result


def is_store(path: str | Path) -> bool:
    """Whether `path` is a feature store folder (extract-features' output)."""
    return Path(path).is_dir() and (Path(path) / "store.json").is_file()


class FeatureStore:
    """Random access to the clips of a store; memory maps are opened lazily, per process (worker-safe)."""

    def __init__(self, store_dir: str | Path):
        self.dir = Path(store_dir)
        self.header = load_header(self.dir)
        self.bins = int(self.header["bins"])
        self.clips, self.errors, _ = scan_store(self.dir)
        self._maps: dict[str, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def frontend(self) -> dict:
        return self.header["frontend"]

    @property
    def ids(self) -> list[str]:
        return [c["id"] for c in self.clips]

    @property
    def labels(self) -> list[list[str]]:
        return [c["labels"] for c in self.clips]

    def stats(self) -> dict:
        path = self.dir / "stats.json"
        return json.loads(path.read_text()) if path.exists() else finalize_store(self.dir)

    def features(self, index: int) -> np.ndarray:
        """The (bins, frames) float16 array of clip `index` (a read-only view into the memory map)."""
        clip = self.clips[index]
        data = self._maps.get(clip["data"])
        if data is None:
            data = np.memmap(self.dir / "shards" / clip["data"], dtype=DTYPE, mode="r")
            self._maps[clip["data"]] = data
        size = self.bins * clip["frames"]
        return data[clip["offset"] : clip["offset"] + size].reshape(self.bins, clip["frames"])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are reopened in each worker process, never pickled
        return state
