"""`tagger pack`: shards, index and errors; exact audio from FLAC packs; resume after a kill; --shard runs; CLI."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import soundfile as sf
from conftest import shared_path, tone, write_wav
from typer.testing import CliRunner

from tagger import audio
from tagger.cli import app
from tagger.data import pack_writer
from tagger.data.clips import open_clips
from tagger.data.manifests import read_manifest
from tagger.data.pack import shard_name
from tagger.errors import TaggerError

runner = CliRunner()


@pytest.fixture(scope="module")
def loose(tmp_path_factory):
    """Nine manifest rows: 16-bit, 24-bit, float and stereo files at four rates, one corrupt, one missing."""
    root = tmp_path_factory.mktemp("loose")
    files = [
        ("a.wav", 16000, 1, "PCM_16", "dog"), ("b.flac", 16000, 1, "PCM_16", "dog;cat"),
        ("c.flac", 22050, 1, "PCM_24", "cat"), ("bad.wav", None, 1, None, "dog"),
        ("d.wav", 32000, 2, "FLOAT", "bird;dog"), ("e.wav", 16000, 2, "PCM_16", "bird"),
        ("gone.wav", None, 1, None, "cat"), ("f.flac", 44100, 1, "PCM_16", "cat"), ("g.wav", 16000, 1, "PCM_16", ""),
    ]
    for k, (name, rate, channels, subtype, _) in enumerate(files):
        if name == "bad.wav":
            (root / name).write_bytes(b"RIFF\x10\x00\x00\x00WAVE" + b"\x07" * 200)
        elif rate is not None:
            wave = np.stack([tone(0.7 + 0.1 * k, rate, 300 + 50 * k + 40 * c, seed=k + c) for c in range(channels)])
            write_wav(root / name, wave.T if channels > 1 else wave[0], rate, subtype)
    manifest = root / "clips.csv"
    manifest.write_text("path,labels\n" + "".join(f"{name},{labels}\n" for name, *_, labels in files))
    return manifest


def _pack(manifest, out, **options):
    data = read_manifest(manifest)
    options.setdefault("shard_size", 3)
    options.setdefault("workers", 0)
    return pack_writer.pack(data.examples, out, source=manifest, missing=data.missing, **options)


def _good(manifest):
    """The manifest's clips that decode, as loose files."""
    clips = open_clips(manifest)
    keep = [i for i in range(len(clips)) if not clips.where(i).endswith("bad.wav")]
    return clips, keep


def test_flac_pack_is_bit_exact_and_self_describing(loose, tmp_path):
    out = tmp_path / "pack"
    result = _pack(loose, out)
    assert result.complete and result.written == [0, 1, 2] and result.total_clips == 7
    assert sorted(p.name for p in out.iterdir()) == ["errors.tsv", "index", "pack.json", *map(shard_name, range(3))]
    errors = (out / "errors.tsv").read_text().splitlines()
    assert errors[0] == "path\treason" and len(errors) == 3
    assert any("gone.wav\taudio file not found" in line for line in errors)
    assert any("bad.wav\t" in line and "cannot decode" in line for line in errors)
    meta = json.loads((out / "pack.json").read_text())
    assert (meta["clips"], meta["shards"], meta["unreadable"], meta["sample_rate"]) == (7, 3, 1, None)

    packed, (loose_clips, keep) = open_clips(out), _good(loose)
    assert packed.format == "pack" and packed.sample_rate is None  # rates differ per clip
    assert packed.ids.tolist() == [loose_clips.ids[i] for i in keep]
    assert packed.table.labels.tolists() == [loose_clips.table.labels.row(i) for i in keep]
    for row, i in enumerate(keep):
        path = loose_clips.where(i)
        own = audio.load_with_rate(path)
        if path.endswith("d.wav"):  # float samples: FLAC keeps 24 bits of them
            assert np.abs(packed.load(row, own[1]) - own[0]).max() <= 2.0 ** -24
            continue
        # 16- and 24-bit sources, and 16-bit stereo averaged to mono (17 bits), come back bit for bit
        assert np.array_equal(packed.load(row, own[1]), own[0])
        assert np.array_equal(packed.load(row, 16000), audio.load(path, 16000))
    assert packed.where(0) == f"{out / shard_name(0)} row 0"

    import h5py

    with h5py.File(out / shard_name(0), "r") as shard:  # the 16-bit mono sources stay 16-bit
        offsets = shard["audio_offsets"][()]
        subtypes = [sf.info(io.BytesIO(shard["audio"][offsets[r]:offsets[r + 1]].tobytes())).subtype
                    for r in range(2)]
        assert subtypes == ["PCM_16", "PCM_16"] and list(shard["clip"][()]) == [0, 1, 2]


def test_index_is_rebuilt_from_the_shards(loose, tmp_path):
    import shutil

    out = tmp_path / "pack"
    _pack(loose, out)
    before = open_clips(out)
    shutil.rmtree(out / "index")
    after = open_clips(out)
    assert (out / "index").is_dir() and after.ids.tolist() == before.ids.tolist()
    assert np.array_equal(after.load(3, 16000), before.load(3, 16000))


@pytest.mark.parametrize("codec", ["pcm16", "mp3"])
def test_lossy_codecs_are_close(loose, tmp_path, codec):
    rate = 32000 if codec == "mp3" else None
    packed = open_clips(_pack(loose, tmp_path / codec, codec=codec, sample_rate=rate).out)
    loose_clips, keep = _good(loose)
    assert packed.sample_rate == rate
    for row, i in enumerate(keep):
        reference = audio.load(loose_clips.where(i), 32000)
        wave = packed.load(row, 32000)
        assert wave.shape == reference.shape
        if codec == "pcm16":  # at most half a 16-bit step before resampling
            own = audio.load_with_rate(loose_clips.where(i))[0]
            back = packed.load(row, audio.info(loose_clips.where(i)).sample_rate)
            assert np.abs(back - own).max() <= 0.5 / 32768 + 1e-9
        else:
            assert np.corrcoef(wave, reference)[0, 1] > 0.95


def test_resampled_pack_equals_loose_loading(loose, tmp_path):
    packed = open_clips(_pack(loose, tmp_path / "p", sample_rate=32000).out)
    loose_clips, keep = _good(loose)
    assert packed.sample_rate == 32000
    for row, i in enumerate(keep):
        assert np.abs(packed.load(row, 32000) - audio.load(loose_clips.where(i), 32000)).max() <= 2.0 ** -24


def test_interrupted_run_resumes_without_touching_finished_shards(loose, tmp_path, monkeypatch):
    out = tmp_path / "pack"
    real, calls = pack_writer.encode_clip, []

    def dies_on_the_fifth_clip(*args):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(pack_writer, "encode_clip", dies_on_the_fifth_clip)
    with pytest.raises(KeyboardInterrupt):
        _pack(loose, out)
    assert (out / shard_name(0)).is_file() and not (out / shard_name(1)).exists()
    assert not (out / "index").exists() and not list(out.glob(".*tmp*"))
    with pytest.raises(TaggerError, match=r"incomplete: 2 of 3 shards missing \(1, 2\); finish it with `tagger pack"):
        open_clips(out)
    first = (out / shard_name(0)).stat().st_mtime_ns
    (out / ".shard-00001.h5.tmp-4242").write_bytes(b"half a shard from a killed run")
    monkeypatch.setattr(pack_writer, "encode_clip", real)
    result = _pack(loose, out)
    assert result.written == [1, 2] and result.already == 1 and result.complete
    assert (out / shard_name(0)).stat().st_mtime_ns == first
    assert not list(out.glob(".*tmp*"))
    assert len(open_clips(out)) == 7


def test_two_parts_make_the_same_pack_as_one_run(loose, tmp_path):
    whole = open_clips(_pack(loose, tmp_path / "whole").out)
    out = tmp_path / "parts"
    first = _pack(loose, out, part=(1, 2), workers=2)
    assert first.written == [0, 2] and not first.complete and "shards missing (1)" in first.remaining
    assert "--shard-size 3" in first.remaining
    second = _pack(loose, out, part=(2, 2))
    assert second.written == [1] and second.complete
    parts = open_clips(out)
    assert parts.ids.tolist() == whole.ids.tolist()
    assert parts.table.labels.tolists() == whole.table.labels.tolists()
    for i in range(len(whole)):
        assert np.array_equal(parts.load(i, 16000), whole.load(i, 16000))
    assert (out / "errors.tsv").read_text() == (tmp_path / "whole" / "errors.tsv").read_text()


def test_a_rerun_with_other_settings_is_refused(loose, tmp_path):
    out = tmp_path / "pack"
    _pack(loose, out)
    with pytest.raises(TaggerError, match="packed with --codec flac, not pcm16"):
        _pack(loose, out, codec="pcm16")
    data = read_manifest(loose)
    with pytest.raises(TaggerError, match="another clip list"):
        pack_writer.pack(data.examples[:4], out, source=loose, shard_size=3, workers=0)


def test_damaged_bytes_name_the_shard_and_row(loose, tmp_path):
    import h5py

    out = tmp_path / "pack"
    _pack(loose, out)
    clips = open_clips(out)
    with h5py.File(out / shard_name(1), "r+") as shard:  # the bytes of row 1 overwritten in place
        start, end = shard["audio_offsets"][1:3]
        shard["audio"][start:end] = np.frombuffer(b"not flac at all!" * ((end - start) // 16 + 1),
                                                  dtype=np.uint8)[: end - start]
    with pytest.raises(TaggerError, match=r"shard-00001.h5 row 1: cannot decode the stored flac audio"):
        clips.load(4, 16000)


def test_reader_pickles_without_its_columns(loose, tmp_path):
    import pickle

    clips = open_clips(_pack(loose, tmp_path / "pack").out)
    expected = clips.load(2, 16000)
    copy = pickle.loads(pickle.dumps(clips.audio))
    assert len(pickle.dumps(clips.audio)) < 400  # a path and a codec, not the arrays
    assert np.array_equal(copy.load(2, 16000), expected)
    assert isinstance(copy.columns["row"], np.memmap)


def test_cli_packs_and_reports(loose, tmp_path):
    out = tmp_path / "pack"
    result = runner.invoke(app, ["pack", str(loose), "--out", str(out), "--shard-size", "4", "--workers", "0",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert (row["shards_total"], row["clips_total"], row["unreadable"], row["complete"]) == (2, 7, 2, "yes")


@pytest.mark.parametrize(("args", "message"), [
    (["missing.csv"], "does not exist"),
    (["{m}", "--codec", "ogg"], "--codec 'ogg' is not one of flac, mp3, pcm16"),
    (["{m}", "--codec", "mp3", "--sample-rate", "96000"], "--codec mp3 cannot store 96000 Hz"),
    (["{m}", "--shard", "3/2"], "K must be between 1 and N"),
])
def test_cli_errors_are_one_line(loose, tmp_path, args, message):
    args = [a.replace("{m}", str(loose)) for a in args]
    result = runner.invoke(app, ["pack", *args, "--out", str(tmp_path / "pack")])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_out_must_be_new_or_a_pack(loose, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(TaggerError, match="exists and is not a pack"):
        _pack(loose, tmp_path / "taken")


def test_esc50_features_from_a_pack_equal_loose_files(tmp_path):
    import torch

    from tagger.frontends import build_frontend

    folder = shared_path("data", "esc50-folds1-4", "audio")
    names = sorted(p.name for p in folder.glob("*.flac"))[:8]
    manifest = tmp_path / "esc.csv"
    manifest.write_text("path,labels\n" + "".join(f"{folder / n},{n.split('-')[-1][:-5]}\n" for n in names))
    packed = open_clips(_pack(manifest, tmp_path / "pack", shard_size=5, workers=2).out)
    loose_clips = open_clips(manifest)
    for name, rate in (("passt-mel", 32000), ("kaldi-fbank", 16000)):
        frontend = build_frontend(name).eval()
        with torch.inference_mode():
            for i in range(len(names)):
                a = frontend(torch.from_numpy(packed.load(i, rate))[None])
                b = frontend(torch.from_numpy(loose_clips.load(i, rate))[None])
                assert torch.equal(a, b)
    assert os.path.getsize(tmp_path / "pack" / shard_name(0)) > 0


def test_mp3_stops_at_a_rate_it_cannot_store(tmp_path):
    write_wav(tmp_path / "odd.wav", tone(0.5, 7000), 7000)
    manifest = tmp_path / "odd.csv"
    manifest.write_text("path,labels\nodd.wav,dog\n")
    with pytest.raises(TaggerError, match="at 7000 Hz, which MP3 cannot store; pass --sample-rate 32000"):
        _pack(manifest, tmp_path / "pack", codec="mp3", workers=1)
    assert not list((tmp_path / "pack").glob("*.h5"))
