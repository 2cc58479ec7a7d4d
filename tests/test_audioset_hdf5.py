"""AudioSet HDF5 files in the official layouts (PaSST/EfficientAT mp3, PANNs waveforms and indexes), built tiny."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from conftest import tone

from tagger.data.audioset_hdf5 import LABEL_URL, Mp3Audio, is_audioset_hdf5, open_audioset_hdf5
from tagger.data.clips import open_clips
from tagger.errors import TaggerError

CLASSES = 527
RATE = 32000
SECONDS = [1.0, 1.5, 2.0, 1.0, 1.25, 1.75]


def write_labels(folder: Path, classes: int = CLASSES) -> list[str]:
    """A class_labels_indices.csv with AudioSet's header and made-up rows."""
    mids = [f"/m/t{i:04d}" for i in range(classes)]
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["index,mid,display_name"] + [f'{i},{mid},"Class {i}, synthetic"' for i, mid in enumerate(mids)]
    (folder / "class_labels_indices.csv").write_text("\n".join(lines) + "\n")
    return mids


def random_targets(n: int, classes: int = CLASSES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    targets = rng.random((n, classes)) < 0.01
    targets[np.arange(n), rng.integers(0, classes, n)] = True  # every clip has a label
    return targets


def expected_rows(targets: np.ndarray, mids: list[str]) -> list[tuple[str, ...]]:
    return [tuple(mids[c] for c in np.flatnonzero(row)) for row in targets]


def mp3_bytes(wave: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    sf.write(buffer, wave, RATE, format="MP3")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def write_mp3_file(path: Path, names: list[str], waves: list[np.ndarray], targets: np.ndarray) -> Path:
    """As create_h5pymp3_dataset.py writes it: S20 names, vlen uint8 mp3 bytes, packbits targets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    packed = np.packbits(targets, axis=-1)
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([n.encode() for n in names], dtype="S20"))
        mp3 = f.create_dataset("mp3", shape=(len(waves),), dtype=h5py.vlen_dtype(np.dtype("uint8")))
        for i, wave in enumerate(waves):
            mp3[i] = wave if wave.dtype == np.uint8 else mp3_bytes(wave)
        f.create_dataset("target", data=packed, dtype=packed.dtype)
    return path


def write_waveform_file(path: Path, names: list[str], waves: np.ndarray, targets: np.ndarray) -> Path:
    """As pack_waveforms_to_hdf5 writes it: S20 names, int16 rows, bool targets, a sample_rate attribute."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([n.encode() for n in names], dtype="S20"))
        f.create_dataset("waveform", data=waves.astype(np.int16))
        f.create_dataset("target", data=targets.astype(bool))
        f.attrs.create("sample_rate", data=RATE, dtype=np.int32)
    return path


def write_index(path: Path, names: list[str], targets: np.ndarray, parts: list[str], rows: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([n.encode() for n in names], dtype="S20"))
        f.create_dataset("target", data=targets.astype(bool))
        f.create_dataset("hdf5_path", data=np.array([p.encode() for p in parts], dtype="S200"))
        f.create_dataset("index_in_hdf5", data=np.array(rows, dtype=np.int32))
    return path


def int16_waves(n: int, samples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-32768, 32768, (n, samples)).astype(np.int16)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture
def mp3_set(tmp_path):
    """PaSST's base_dir layout: base/mp3/balanced_train_segments_mp3.hdf, base/metadata/class_labels_indices.csv."""
    mids = write_labels(tmp_path / "metadata")
    waves = [tone(s, RATE, freq=300 + 100 * i, seed=i) for i, s in enumerate(SECONDS)]
    names = [f"Y-clip{i:07d}.mp3" for i in range(len(waves))]
    targets = random_targets(len(waves))
    path = write_mp3_file(tmp_path / "mp3" / "balanced_train_segments_mp3.hdf", names, waves, targets)
    return path, names, waves, expected_rows(targets, mids)


def test_mp3_layout_ids_labels_and_audio(mp3_set):
    path, names, waves, rows = mp3_set
    assert is_audioset_hdf5(path)
    clips = open_clips(path)
    assert clips.format == "PaSST mp3 HDF5" and clips.sample_rate == RATE
    assert clips.ids.tolist() == names
    assert clips.table.labels.tolists() == rows
    assert clips.table.labels.vocabulary[:2] == ["/m/t0000", "/m/t0001"]
    assert len(clips.table.labels.vocabulary) == CLASSES
    for i, wave in enumerate(waves):
        decoded = clips.load(i, RATE)
        assert decoded.dtype == np.float32 and decoded.shape == wave.shape  # libsndfile decodes gaplessly
        assert np.abs(decoded - wave).max() < 0.05  # mp3 is lossy; a wrong row or scale is far off
        assert len(clips.load(i, 16000)) == pytest.approx(len(wave) / 2, abs=2)
    assert clips.where(2) == f"{path} row 2"


def test_unbalanced_names_are_kept_as_written(tmp_path):
    mids = write_labels(tmp_path / "metadata")
    names = ["00/Y-clip0000000.mp3", "40/Y-clip0000001.mp3"]
    targets = random_targets(2, seed=1)
    path = write_mp3_file(tmp_path / "mp3" / "unbalanced_train_segments_mp3.hdf", names,
                          [tone(1.0, RATE, seed=i) for i in range(2)], targets)
    clips = open_clips(path)
    assert clips.ids.tolist() == names
    assert clips.table.labels.tolists() == expected_rows(targets, mids)


def test_waveform_layout_reads_int16_as_panns_does(tmp_path):
    """PANNs workspace: metadata three levels up; a row whose download failed is empty and skipped."""
    mids = write_labels(tmp_path / "metadata")
    waves = int16_waves(5, RATE)
    names = ["Yaaaaaaaaaaa.wav", "Ybbbbbbbbbbb.wav", "", "Ycccccccccc.wav", "Yddddddddddd.wav"]
    targets = random_targets(5, seed=2)
    targets[2] = False
    waves[2] = 0
    path = write_waveform_file(tmp_path / "hdf5s" / "waveforms" / "balanced_train.h5", names, waves, targets)
    clips = open_clips(path)
    assert clips.format == "PANNs waveform HDF5, 1 empty row skipped"
    kept = [0, 1, 3, 4]
    assert clips.ids.tolist() == [names[i] for i in kept]
    assert clips.table.labels.tolists() == [expected_rows(targets, mids)[i] for i in kept]
    for clip, row in enumerate(kept):
        loaded = clips.load(clip, RATE)
        np.testing.assert_array_equal(loaded, waves[row].astype(np.float32) / np.float32(32767.0))
        assert clips.where(clip) == f"{path} row {row}"
    assert len(clips.load(0, 16000)) == RATE // 2


def test_index_file_finds_moved_parts(tmp_path):
    """The index stores absolute paths of a workspace that has since moved; parts are found relative to it."""
    workspace = tmp_path / "moved" / "audioset_tagging"
    mids = write_labels(workspace / "metadata")
    old = "/gone/workspaces/audioset_tagging/hdf5s/waveforms"
    balanced = int16_waves(2, 1000, seed=3)
    part = int16_waves(3, 1000, seed=4)
    targets = random_targets(5, seed=5)
    write_waveform_file(workspace / "hdf5s/waveforms/balanced_train.h5", ["Ya.wav", "Yb.wav"], balanced,
                        targets[:2])
    write_waveform_file(workspace / "hdf5s/waveforms/unbalanced_train/unbalanced_train_part00.h5",
                        ["Yc.wav", "Yd.wav", "Ye.wav"], part, targets[2:])
    parts = [f"{old}/balanced_train.h5"] * 2 + [f"{old}/unbalanced_train/unbalanced_train_part00.h5"] * 3
    index = write_index(workspace / "hdf5s/indexes/full_train.h5", ["Ya.wav", "Yb.wav", "Yc.wav", "Yd.wav",
                        "Ye.wav"], targets, parts, [0, 1, 0, 1, 2])
    clips = open_clips(index)
    assert clips.format == "PANNs index HDF5"
    assert clips.ids.tolist() == ["Ya.wav", "Yb.wav", "Yc.wav", "Yd.wav", "Ye.wav"]
    assert clips.table.labels.tolists() == expected_rows(targets, mids)
    np.testing.assert_array_equal(clips.load(4, RATE), part[2].astype(np.float32) / np.float32(32767.0))
    np.testing.assert_array_equal(clips.load(1, RATE), balanced[1].astype(np.float32) / np.float32(32767.0))
    assert clips.where(3).endswith("unbalanced_train/unbalanced_train_part00.h5 row 1")


def test_index_names_a_part_it_cannot_find(tmp_path):
    write_labels(tmp_path / "metadata")
    index = write_index(tmp_path / "hdf5s/indexes/eval.h5", ["Ya.wav"], random_targets(1),
                        ["/gone/hdf5s/waveforms/eval.h5"], [0])
    with pytest.raises(TaggerError, match="/gone/hdf5s/waveforms/eval.h5") as error:
        open_clips(index)
    one_line(error)


def test_missing_label_file_says_where_to_get_it(tmp_path):
    path = write_waveform_file(tmp_path / "a" / "b" / "c" / "d" / "eval.h5", ["Ya.wav"], int16_waves(1, 100),
                               random_targets(1))
    with pytest.raises(TaggerError, match="class_labels_indices.csv") as error:
        open_clips(path)
    assert LABEL_URL in one_line(error)


def test_target_columns_must_match_the_label_file(tmp_path):
    write_labels(tmp_path, classes=10)
    path = write_waveform_file(tmp_path / "eval.h5", ["Ya.wav"], int16_waves(1, 100), random_targets(1))
    with pytest.raises(TaggerError, match="10 classes") as error:
        open_clips(path)
    one_line(error)


@pytest.mark.parametrize("payload", [b"", b"ID3 this is not an mp3 at all" * 10])
def test_corrupt_mp3_row_names_file_and_row(tmp_path, payload):
    write_labels(tmp_path)
    waves = [tone(1.0, RATE), np.frombuffer(payload, dtype=np.uint8)]
    path = write_mp3_file(tmp_path / "eval_segments_mp3.hdf", ["Ya.mp3", "Yb.mp3"], waves, random_targets(2))
    clips = open_clips(path)
    assert len(clips.load(0, RATE)) == RATE
    with pytest.raises(TaggerError, match=f"{path} row 1") as error:
        clips.load(1, RATE)
    one_line(error)


def test_other_files_are_not_taken_for_audioset(tmp_path):
    other = tmp_path / "features.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    not_hdf5 = tmp_path / "clips.hdf5"
    not_hdf5.write_text("audio_name,target\n")
    manifest = tmp_path / "eval.csv"
    manifest.write_text("path,labels\n")
    assert not any(is_audioset_hdf5(p) for p in (other, not_hdf5, manifest, tmp_path))
    with pytest.raises(TaggerError, match="not an AudioSet HDF5 file"):
        open_audioset_hdf5(other)


class _Loads:
    def __init__(self, clips):
        self.clips = clips

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, index):
        return self.clips.load(index, 16000)[:16000]


def test_reader_pickles_and_loads_in_forked_workers(mp3_set):
    torch = pytest.importorskip("torch")
    path, _, waves, _ = mp3_set
    clips = open_clips(path)
    first = clips.load(0, 16000)  # a handle is open in this process before the workers fork
    reader = pickle.loads(pickle.dumps(clips.audio))
    assert isinstance(reader, Mp3Audio)
    np.testing.assert_array_equal(reader.load(0, 16000), first)
    loader = torch.utils.data.DataLoader(_Loads(clips), batch_size=2, num_workers=2,
                                         multiprocessing_context="fork")
    batches = torch.cat(list(loader))
    assert batches.shape == (len(waves), 16000)
    np.testing.assert_array_equal(batches[0].numpy(), first[:16000])
