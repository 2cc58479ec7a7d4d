"""AudioSet-scale data layer: can tagger open, sample and load 2 M clips within a workstation's memory?

Builds, in --work (default /tmp/tagger-scale), a synthetic AudioSet-like set of --clips clips (2 M by default):
label sets copied from random rows of AudioSet's balanced_train_segments.csv (../shared/data/audioset, so the
class frequencies and co-occurrences are AudioSet's, as the balanced set has them), audio from a few short synthetic
clips reused (--clip-seconds), written once as an AST-style JSON manifest and once as a FLAC pack (`tagger pack`'s
writer, with the encoding of the few distinct clips cached so 2 M clips pack in minutes). Then, each measurement in
a fresh process:

open      seconds to open the pack with `open_clips` (index, memory-mapped columns) and to read the JSON manifest
          into columns (today's manifest path); resident memory after opening.
loader    the training input path as `tagger train` builds it (read_source, CSR targets, balanced sampler over all
          clips, TrainWaves, the training DataLoader with --workers workers, batch 32): time from process start to
          the first batch, clips/s over the next --batches batches, and the peak PSS of the whole process tree
          (main process and workers; PSS counts shared pages once, split between the processes sharing them);
          over the pack, and over the JSON manifest of loose files.
floor     decode-only floor of the same codec: the same number of worker processes decoding the same clips'
          bytes straight from memory (no file reads, no sampling, no augmentation, nothing sent back to the main
          process); loader / floor is the ratio. Both again on a second pack of --real-clips clips of 10 s (AudioSet's
          length), where decoding, not per-clip overhead, is most of the work.
legacy    the pre-columnar layout (one Python Example object per clip plus a dense float32 (N, 527) target
          matrix, read by the workers) at --legacy-clips clips, with the same loader: its peak PSS and time to
          the first batch, for comparison at the largest size that fits.
pack      `tagger pack` throughput (clips/s) on --pack-clips real files (ESC-50 from ../shared when present,
          else synthetic 5 s FLAC files) against a plain loop that decodes each file and writes its FLAC bytes to
          one file, with the same number of processes.

    python benchmarks/bench_scale.py                       # everything, 2 M clips (about 30 min on 2 cores)
    python benchmarks/bench_scale.py --clips 200000 --legacy-clips 100000 --quick
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RATE = 32000


# ---------------------------------------------------------------------------------------------- memory


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(c) for c in handle.read().split()]
    except OSError:
        pass
    return found


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_bytes(pid: int) -> int:
    """PSS of a process and all its descendants (shared pages counted once in total)."""
    todo, total, seen = [pid], 0, set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _pss_kb(p)
        todo += _children(p)
    return total * 1024


class PeakPss:
    """Samples the process tree's PSS every 0.2 s on a thread; `.peak` in bytes."""

    def __init__(self, pid: int | None = None):
        self.pid, self.peak, self._stop = pid or os.getpid(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_bytes(self.pid))
            self._stop.wait(0.2)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_pss_bytes(self.pid))


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------------------------- building


def audioset_label_rows() -> list[list[str]]:
    """Label sets of AudioSet's balanced training segments (real class frequencies and co-occurrences)."""
    path = SHARED / "audioset" / "balanced_train_segments.csv"
    if not path.is_file():
        raise SystemExit(f"{path} is absent: this benchmark draws AudioSet's label sets from ../shared")
    rows = []
    with open(path, newline="") as handle:
        for row in csv.reader(line for line in handle if not line.startswith("#")):
            if len(row) >= 4:
                rows.append([x.strip() for x in ",".join(row[3:]).strip().strip('"').split(",") if x.strip()])
    return rows


def write_clips(folder: Path, count: int, seconds: float) -> list[Path]:
    """A few distinct synthetic FLAC clips (tones in noise) that the large sets reuse."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    t = np.arange(int(seconds * RATE)) / RATE
    for i in range(count):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.002 * rng.standard_normal(len(t))
        path = folder / f"clip{i}.flac"
        sf.write(path, wave.astype(np.float32), RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def link_farm(work: Path, clips: int, seconds: float, tag: str = "") -> list[str]:
    """`clips` distinct file names (hard links, 64 distinct clips, 20 000 per folder): a manifest lists every
    clip once, as AudioSet's do."""
    audio = write_clips(work / f"audio{tag}", 64, seconds)
    paths = []
    for i in range(clips):
        path = work / f"links{tag}" / f"d{i // 20000:03d}" / f"c{i:07d}.flac"
        if i % 20000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.link(audio[i % len(audio)], path)
        paths.append(str(path))
    return paths


def build_manifest(work: Path, clips: int, seconds: float, tag: str = "") -> Path:
    path = work / f"manifest{tag}_{clips}.json"
    if path.is_file():
        return path
    rows = audioset_label_rows()
    started = time.perf_counter()
    paths = link_farm(work, clips, seconds, tag)
    rng = random.Random(0)
    with open(path.with_suffix(".tmp"), "w") as handle:
        handle.write('{"data": [\n')
        for i, wav in enumerate(paths):
            handle.write(("" if i == 0 else ",\n") + json.dumps({"wav": wav, "labels": ",".join(rng.choice(rows))}))
        handle.write("\n]}\n")
    os.replace(path.with_suffix(".tmp"), path)
    print(f"wrote {path} ({clips} clips) in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def build_pack(work: Path, manifest: Path) -> Path:
    """The manifest packed to FLAC; the few distinct files are encoded once (the shards still hold every clip)."""
    from tagger.data import pack_writer
    from tagger.data.manifests import read_manifest

    out = work / (manifest.stem + "_pack")
    if (out / "index").is_dir():
        return out
    started = time.perf_counter()
    encode, cache = pack_writer.encode_clip, {}

    def encode_once(path: str, codec: str, sample_rate: int | None):
        key = (os.stat(path).st_ino, codec, sample_rate)  # the hard links of one clip share an inode
        if key not in cache:
            cache[key] = encode(path, codec, sample_rate)
        return cache[key]

    pack_writer.encode_clip = encode_once
    data = read_manifest(manifest)
    pack_writer.pack(data.examples, out, source=manifest, workers=0)  # 1000 clips per shard: 2000 shards
    print(f"packed {len(data.examples)} clips into {out} in {time.perf_counter() - started:.0f} s", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- measurements


def measure_open(path: str) -> dict:
    from tagger.data.clips import open_clips

    before = rss_bytes()
    started = time.perf_counter()
    clips = open_clips(path)
    seconds = time.perf_counter() - started
    return {"path": path, "clips": len(clips), "open_s": round(seconds, 2),
            "rss_added_MB": round((rss_bytes() - before) / 1e6, 1)}


def time_loader(loader, batches: int, started: float) -> tuple[float, float]:
    """(seconds from process start to the first batch, steady clips/s over `batches` batches of 32). The batches
    the workers prefetched while the first one was made are drawn before the clock starts, or they would count
    as free."""
    warmup = 2 * max(loader.num_workers, 1) * (loader.prefetch_factor or 1)
    batches = max(1, min(batches, len(loader) - 1 - warmup))  # a small set has fewer batches in an epoch
    iterator = iter(loader)
    next(iterator)
    first = time.time() - started
    for _ in range(min(warmup, len(loader) - 2)):
        next(iterator)
    timed = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return first, batches * 32 / (time.perf_counter() - timed)


def measure_loader(path: str, workers: int, batches: int, started: float, seconds: float = 1.0) -> dict:
    import torch

    from tagger.labels import LabelSet
    from tagger.training.config import AugmentConfig, DataConfig
    from tagger.training.data import (
        PositionedSampler,
        Targets,
        TrainWaves,
        build_sampler,
        make_loader,
        read_source,
        source_labels,
    )

    torch.set_num_threads(1)
    with PeakPss() as peak:
        source = read_source(path, "training")
        labels = LabelSet.from_list(source_labels(source))
        targets = Targets(source.labels, labels)
        sampler = build_sampler(DataConfig(sampler="balanced"), targets, seed=0, rank=0, world_size=1)
        dataset = TrainWaves(source, targets, RATE, seconds, AugmentConfig(), seed=0)
        loader = make_loader(dataset, 32, workers, sampler=PositionedSampler(sampler), drop_last=True)
        first, rate = time_loader(loader, batches, started)
    return {"path": path, "clips": len(source), "workers": workers, "first_batch_s": round(first, 1),
            "clips_per_s": round(rate, 1), "peak_pss_GB": round(peak.peak / 1e9, 2)}


def _decode(data: bytes) -> int:
    import soundfile as sf

    return len(sf.read(io.BytesIO(data), dtype="float32")[0])


def measure_floor(pack: str, workers: int, clips: int) -> dict:
    """Decoding the same clips' FLAC bytes from memory in `workers` processes: what the loader cannot beat."""
    from tagger.data.clips import open_clips

    reader = open_clips(pack).audio
    rng = np.random.default_rng(0)
    blobs = [reader.encoded(int(i)) for i in rng.integers(0, len(reader.columns["row"]), 256)]
    items = [blobs[i % len(blobs)] for i in range(clips)]
    with multiprocessing.get_context("fork").Pool(max(workers, 1)) as pool:
        pool.map(_decode, items[:64])
        started = time.perf_counter()
        pool.map(_decode, items, chunksize=16)
        seconds = time.perf_counter() - started
    return {"workers": workers, "clips": clips, "clips_per_s": round(clips / seconds, 1)}


def measure_legacy(clips: int, workers: int, batches: int, work: str, started: float) -> dict:
    """The layout before the columnar data layer: Example objects and a dense float32 target matrix."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from tagger import audio
    from tagger.data.manifests import Example
    from tagger.data.sampling import WeightedSampler, balanced_weights
    from tagger.labels import LabelSet

    torch.set_num_threads(1)
    rows = audioset_label_rows()
    labels = LabelSet.from_list(sorted({x for r in rows for x in r}))
    rng = random.Random(0)

    class Legacy(Dataset):
        def __init__(self, examples, targets):
            self.examples, self.targets = examples, targets

        def __len__(self):
            return len(self.examples)

        def __getitem__(self, index):
            example = self.examples[index]
            wave = audio.crop_or_pad(audio.load(example.path, RATE), RATE, "random", np.random.default_rng(index))
            return {"wave": torch.from_numpy(wave), "target": torch.from_numpy(self.targets[index])}

    with PeakPss() as peak:
        examples = [Example(Path(work) / "links" / f"d{i // 20000:03d}" / f"c{i:07d}.flac", tuple(rng.choice(rows)),
                            f"c{i:07d}") for i in range(clips)]
        targets = labels.encode_many([e.labels for e in examples])
        sampler = WeightedSampler(balanced_weights(targets), clips, seed=0)
        loader = DataLoader(Legacy(examples, targets), batch_size=32, sampler=sampler, num_workers=workers)
        first, rate = time_loader(loader, batches, started)
    return {"clips": clips, "workers": workers, "first_batch_s": round(first, 1), "clips_per_s": round(rate, 1),
            "peak_pss_GB": round(peak.peak / 1e9, 2)}


def _plain_pack_one(path: str) -> bytes:
    import soundfile as sf

    from tagger import audio

    wave = audio.load(path, None)
    buffer = io.BytesIO()
    sf.write(buffer, wave, sf.info(path).samplerate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def measure_pack(work: Path, clips: int, workers: int) -> dict:
    """`tagger pack` against a plain decode + encode + append loop over the same files."""
    import shutil

    from tagger.data import pack_writer
    from tagger.data.manifests import Example

    esc = SHARED / "esc50-folds1-4" / "audio"
    files = sorted(esc.glob("*.flac"))[:clips] if esc.is_dir() else []
    if len(files) < clips:
        files = write_clips(work / "pack_audio", clips, 5.0)
    examples = [Example(path, ("x",), path.stem) for path in files]
    out = work / "pack_throughput"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    pack_writer.pack(examples, out, source=work / "pack_list", workers=workers, shard_size=250)
    ours = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(max(workers, 1)) as pool, open(work / "plain.bin", "wb") as handle:
        for blob in pool.imap(_plain_pack_one, [str(p) for p in files], chunksize=8):
            handle.write(blob)
    plain = time.perf_counter() - started
    os.remove(work / "plain.bin")
    import soundfile as sf

    info = sf.info(str(files[0]))
    return {"clips": len(files), "source": f"{'ESC-50' if esc.is_dir() else 'synthetic'} ({info.samplerate} Hz "
                                           f"{info.format}, {info.duration:g} s)",
            "workers": workers, "pack_clips_per_s": round(len(files) / ours, 1),
            "plain_clips_per_s": round(len(files) / plain, 1), "pack_over_plain": round(plain / ours, 2)}


def in_subprocess(kind: str, **kwargs) -> dict:
    """Run one measurement in a fresh interpreter (clean memory, its own PSS)."""
    code = (f"import json, sys, time; started = time.time(); sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            f"import bench_scale as b; kw = json.loads({json.dumps(json.dumps(kwargs))}); "
            f"kw.update({{'started': started}}) if {kind!r} in ('loader', 'legacy') else None; "
            f"print('RESULT ' + json.dumps(getattr(b, 'measure_' + {kind!r})(**kw)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"{kind} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def machine() -> str:
    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core {platform.machine()} {model}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2_000_000)
    parser.add_argument("--legacy-clips", type=int, default=500_000)
    parser.add_argument("--clip-seconds", type=float, default=0.25)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--pack-clips", type=int, default=400)
    parser.add_argument("--real-clips", type=int, default=2048, help="clips of the 10 s set (0: skip it)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tagger-scale"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="skip the legacy and pack-throughput measurements")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    manifest = build_manifest(args.work, args.clips, args.clip_seconds)
    pack = build_pack(args.work, manifest)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "clips": args.clips}
    results["open_pack"] = in_subprocess("open", path=str(pack))
    print("open pack", results["open_pack"], flush=True)
    results["open_manifest"] = in_subprocess("open", path=str(manifest))
    print("open manifest", results["open_manifest"], flush=True)
    results["loader_pack"] = in_subprocess("loader", path=str(pack), workers=args.workers, batches=args.batches)
    print("loader pack", results["loader_pack"], flush=True)
    results["loader_manifest"] = in_subprocess("loader", path=str(manifest), workers=args.workers,
                                               batches=args.batches)
    print("loader manifest", results["loader_manifest"], flush=True)
    results["floor"] = in_subprocess("floor", pack=str(pack), workers=args.workers, clips=args.batches * 32 * 4)
    print("decode floor", results["floor"], flush=True)
    results["loader_over_floor"] = round(results["loader_pack"]["clips_per_s"] / results["floor"]["clips_per_s"], 2)
    if args.real_clips:  # the same at AudioSet's clip length, where decoding dominates
        pack10 = build_pack(args.work, build_manifest(args.work, args.real_clips, 10.0, tag="10s"))
        results["loader_10s"] = in_subprocess("loader", path=str(pack10), workers=args.workers,
                                              batches=args.batches, seconds=10.0)
        print("loader 10 s", results["loader_10s"], flush=True)
        results["floor_10s"] = in_subprocess("floor", pack=str(pack10), workers=args.workers, clips=args.batches * 32)
        print("decode floor 10 s", results["floor_10s"], flush=True)
        results["loader_over_floor_10s"] = round(results["loader_10s"]["clips_per_s"]
                                                 / results["floor_10s"]["clips_per_s"], 2)
    if not args.quick:
        results["legacy"] = in_subprocess("legacy", clips=min(args.legacy_clips, args.clips), workers=args.workers,
                                          batches=args.batches, work=str(args.work))
        print("legacy", results["legacy"], flush=True)
        results["pack"] = measure_pack(args.work, args.pack_clips, min(2, os.cpu_count() or 1))
        print("pack", results["pack"], flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
