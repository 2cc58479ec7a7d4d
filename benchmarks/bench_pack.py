"""`tagger pack` on ESC-50: disk per 10 s clip for each codec at 32 and 44.1 kHz, packing speed, and random reads
of clips (a balanced sampler's access pattern) from a pack shard against a tar of the same bytes.

The tar is read the fastest way tarfile allows: one scan for a member index (name -> TarInfo), then
`extractfile` per draw. Reading and decoding are timed apart, so the container's cost is seen next to the codec's.

    python benchmarks/bench_pack.py --esc50 ../shared/data/esc50-folds1-4 --work /tmp/bench-pack
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np

from tagger.data.clips import open_clips
from tagger.data.manifests import read_manifest
from tagger.data.pack import decode, shard_name
from tagger.data.pack_writer import pack


def disk_and_speed(examples, work: Path, codec: str, rate: int, workers: int) -> dict:
    out = work / f"{codec}-{rate}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = pack(examples, out, source="esc50.csv", codec=codec, sample_rate=rate, shard_size=1000,
                  workers=workers)
    seconds = time.perf_counter() - started
    clips = open_clips(out)
    audio_seconds = float(np.sum(clips.audio.columns["num_samples"]) / rate)
    size = sum((out / shard_name(i)).stat().st_size for i in range(result.shards))
    return {"codec": codec, "rate": rate, "clips": len(clips),
            "KB_per_10s_clip": round(size / audio_seconds * 10 / 1e3, 1),
            "pack_clips_per_s": round(len(clips) / seconds, 1)}


def random_reads(folder: Path, work: Path, reads: int, seed: int) -> list[dict]:
    clips = open_clips(folder)
    reader = clips.audio
    draws = np.random.default_rng(seed).integers(0, len(clips), reads)  # with replacement, as the sampler
    blobs = [reader.encoded(i) for i in range(len(clips))]

    tar_path = work / "clips.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i, blob in enumerate(blobs):
            info = tarfile.TarInfo(f"{clips.ids[i]}.flac")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

    rows = []
    fresh = type(reader)(reader.folder, reader.codec)  # no handles open yet: opening counts
    started = time.perf_counter()
    for i in draws:
        fresh.encoded(int(i))
    rows.append({"read": "pack shard (pread at the indexed offset)",
                 "clips_per_s": round(reads / (time.perf_counter() - started))})

    started = time.perf_counter()
    with tarfile.open(tar_path, "r") as tar:
        members = {m.name: m for m in tar.getmembers()}
        indexed = time.perf_counter()
        names = [f"{clips.ids[int(i)]}.flac" for i in draws]
        for name in names:
            tar.extractfile(members[name]).read()
    done = time.perf_counter()
    rows.append({"read": "tar (tarfile, member index)", "clips_per_s": round(reads / (done - started)),
                 "index_scan_ms": round((indexed - started) * 1e3, 1)})

    started = time.perf_counter()
    for i in draws:
        decode("flac", blobs[int(i)])
    rows.append({"read": "FLAC decode alone (soundfile)",
                 "clips_per_s": round(reads / (time.perf_counter() - started))})

    started = time.perf_counter()
    for i in draws:
        clips.load(int(i), clips.sample_rate)
    rows.append({"read": "pack read + decode (PackAudio.load)",
                 "clips_per_s": round(reads / (time.perf_counter() - started))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--esc50", type=Path, default=Path("../shared/data/esc50-folds1-4"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-pack"))
    parser.add_argument("--size-clips", type=int, default=400, help="clips packed per codec and rate")
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    examples = read_manifest(args.esc50 / "esc50.csv").examples
    sizes = [disk_and_speed(examples[:args.size_clips], args.work, codec, rate, args.workers)
             for rate in (32000, 44100) for codec in ("flac", "mp3", "pcm16")]
    loose = sum(e.path.stat().st_size for e in examples[:args.size_clips]) / (5.0 * args.size_clips) * 10 / 1e3
    shutil.rmtree(args.work / "all", ignore_errors=True)
    pack(examples, args.work / "all", source="esc50.csv", sample_rate=32000, shard_size=2000, workers=args.workers)
    reads = random_reads(args.work / "all", args.work, args.reads, seed=0)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                      "loose_flac_KB_per_10s_clip": round(loose, 1), "sizes": sizes, "random_reads": reads},
                     indent=1))


if __name__ == "__main__":
    main()
