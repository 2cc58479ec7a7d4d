"""Tests for tagger.audio: decoding real files, resampling, crop/pad, streaming, and bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_wav

from tagger import audio
from tagger.errors import TaggerError


def peak_hz(wave: np.ndarray, sample_rate: int) -> float:
    """Frequency of the strongest FFT bin: a resampler that keeps the pitch keeps this."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / sample_rate)[spectrum.argmax()])


def stereo(seconds: float, sample_rate: int) -> np.ndarray:
    """(2, S): a 440 Hz left and an 880 Hz right channel, so averaging is visible."""
    return np.stack([tone(seconds, sample_rate, 440, seed=1), tone(seconds, sample_rate, 880, seed=2)])


def expect_error(path: Path, call=audio.load) -> str:
    with pytest.raises(TaggerError) as caught:
        call(path)
    message = str(caught.value)
    assert path.name in message
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_load_wav(tmp_path, subtype):
    wave = tone(1.0, 16000)
    path = write_wav(tmp_path / "a.wav", wave, 16000, subtype=subtype)
    loaded = audio.load(path)
    assert loaded.dtype == np.float32 and loaded.shape == wave.shape
    assert np.allclose(loaded, wave, atol=1e-4 if subtype == "PCM_16" else 0)


@pytest.mark.parametrize("suffix", [".flac", ".ogg"])
def test_load_compressed(tmp_path, suffix):
    wave = tone(1.0, 22050)
    path = tmp_path / f"a{suffix}"
    sf.write(path, wave, 22050)
    loaded, rate = audio.load_with_rate(path)
    assert rate == 22050 and loaded.dtype == np.float32
    assert abs(loaded.size - wave.size) < 0.01 * wave.size
    assert peak_hz(loaded, rate) == pytest.approx(440, abs=2)


def test_stereo_mono_average_and_channels_first(tmp_path):
    wave = stereo(0.5, 16000)
    path = write_wav(tmp_path / "s.wav", wave.T, 16000, subtype="FLOAT")
    assert np.allclose(audio.load(path), wave.mean(axis=0), atol=1e-7)
    both = audio.load(path, mono=False)
    assert both.shape == (2, wave.shape[1]) and both.dtype == np.float32
    assert np.array_equal(both, wave)


def test_info(tmp_path):
    path = write_wav(tmp_path / "s.wav", stereo(1.5, 8000).T, 8000)
    meta = audio.info(path)
    assert (meta.path, meta.sample_rate, meta.frames, meta.channels) == (path, 8000, 12000, 2)
    assert meta.duration == pytest.approx(1.5)


def test_fallback_decoder_path(tmp_path, monkeypatch):
    """Formats libsndfile cannot open go through librosa; forced here on a WAV since CI may lack ffmpeg."""
    wave = stereo(1.0, 8000)
    path = write_wav(tmp_path / "s.wav", wave.T, 8000, subtype="FLOAT")
    monkeypatch.setattr(audio, "_open_soundfile", lambda _path: None)
    assert np.allclose(audio.load(path, mono=False), wave)
    assert audio.info(path).frames == 8000 and audio.info(path).channels == 2
    blocks = list(audio.iter_blocks(path, 16000, 0.3))
    assert np.allclose(np.concatenate(blocks), audio.load(path, 16000), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Resampling


@pytest.mark.parametrize(("orig", "target"), [(44100, 16000), (16000, 32000)])
def test_load_resamples_length_and_pitch(tmp_path, orig, target):
    path = write_wav(tmp_path / "a.wav", tone(2.0, orig), orig)
    loaded = audio.load(path, sample_rate=target)
    assert loaded.dtype == np.float32
    assert loaded.size == 2 * target
    assert peak_hz(loaded, target) == pytest.approx(440, abs=1)


def test_resample_keeps_channels_and_same_rate(tmp_path):
    wave = stereo(1.0, 32000)
    out = audio.resample(wave, 32000, 16000)
    assert out.shape == (2, 16000) and out.dtype == np.float32
    assert peak_hz(out[1], 16000) == pytest.approx(880, abs=1)
    assert np.array_equal(audio.resample(wave, 32000, 32000), wave)


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, None])
def test_bad_sample_rate(tmp_path, rate):
    with pytest.raises(TaggerError, match="target_sr"):
        audio.resample(tone(0.1, 16000), 16000, rate)
    if rate is not None:
        path = write_wav(tmp_path / "a.wav", tone(0.1, 16000), 16000)
        with pytest.raises(TaggerError, match="sample_rate"):
            audio.load(path, sample_rate=rate)


# ---------------------------------------------------------------------------------------------------------
# crop_or_pad


def test_crop_or_pad_start():
    wave = np.arange(1, 11, dtype=np.float32)
    assert np.array_equal(audio.crop_or_pad(wave, 4), [1, 2, 3, 4])
    assert np.array_equal(audio.crop_or_pad(wave, 12), [*range(1, 11), 0, 0])
    assert np.array_equal(audio.crop_or_pad(wave, 10), wave)
    assert audio.crop_or_pad(wave, 12).dtype == np.float32


def test_crop_or_pad_centre():
    wave = np.arange(1, 11, dtype=np.float32)
    assert np.array_equal(audio.crop_or_pad(wave, 4, "centre"), [4, 5, 6, 7])
    assert np.array_equal(audio.crop_or_pad(wave, 14, "centre"), [0, 0, *range(1, 11), 0, 0])
    assert np.array_equal(audio.crop_or_pad(wave, 13, "centre"), [0, *range(1, 11), 0, 0])


def test_crop_or_pad_last_axis_of_2d():
    wave = np.arange(20, dtype=np.float32).reshape(2, 10)
    assert np.array_equal(audio.crop_or_pad(wave, 3, "centre"), wave[:, 3:6])
    padded = audio.crop_or_pad(wave, 12)
    assert padded.shape == (2, 12) and not padded[:, 10:].any()


def test_crop_or_pad_random_is_reproducible_and_in_range():
    wave = np.arange(100, dtype=np.float32)
    first = [audio.crop_or_pad(wave, 10, "random", np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(first[0], first[1])
    rng = np.random.default_rng(0)
    starts = {int(audio.crop_or_pad(wave, 10, "random", rng)[0]) for _ in range(50)}
    assert len(starts) > 1 and min(starts) >= 0 and max(starts) <= 90
    short = np.arange(1, 6, dtype=np.float32)
    offsets = set()
    for _ in range(20):
        padded = audio.crop_or_pad(short, 8, "random", rng)
        offset = int(np.flatnonzero(padded)[0])
        assert np.array_equal(padded, np.pad(short, (offset, 3 - offset)))
        offsets.add(offset)
    assert len(offsets) > 1


def test_crop_or_pad_errors():
    wave = np.zeros(10, dtype=np.float32)
    with pytest.raises(TaggerError, match="generator"):
        audio.crop_or_pad(wave, 4, "random")
    with pytest.raises(TaggerError, match="'middle'"):
        audio.crop_or_pad(wave, 4, "middle")
    for length in (0, -3, 2.5):
        with pytest.raises(TaggerError, match="length"):
            audio.crop_or_pad(wave, length)


# ---------------------------------------------------------------------------------------------------------
# Streaming


@pytest.mark.parametrize(("native", "target"), [(44100, 16000), (16000, 16000), (22050, 32000)])
@pytest.mark.parametrize("block_seconds", [0.3, 1.0, 2.7])
def test_iter_blocks_concatenate_to_load(tmp_path, native, target, block_seconds):
    path = write_wav(tmp_path / "a.wav", tone(2.345, native), native)
    blocks = list(audio.iter_blocks(path, target, block_seconds))
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    assert max(b.size for b in blocks) <= (block_seconds + 0.1) * target  # resampler delay shifts a little
    joined = np.concatenate(blocks)
    expected = audio.load(path, target)
    assert joined.shape == expected.shape
    assert np.allclose(joined, expected, atol=1e-5)


def test_iter_blocks_stereo(tmp_path):
    path = write_wav(tmp_path / "s.wav", stereo(1.1, 44100).T, 44100)
    joined = np.concatenate(list(audio.iter_blocks(path, 16000, 0.25, mono=False)), axis=-1)
    assert np.allclose(joined, audio.load(path, 16000, mono=False), atol=1e-5)


def expected_windows(wave: np.ndarray, window: int, hop: int, last: str) -> list[int]:
    """Window starts by the definition: every hop while a full window fits, then one for the tail if needed."""
    starts = list(range(0, wave.size - window + 1, hop))
    covered = starts[-1] + window if starts else 0
    following = starts[-1] + hop if starts else 0
    if last != "none" and covered < wave.size and following < wave.size:
        starts.append(following)
    return starts


@pytest.mark.parametrize(("window_s", "hop_s", "block_s"),
                         [(1.0, 0.5, 0.7), (1.0, 1.0, 3.0), (0.5, 0.8, 0.3), (2.0, 0.25, 0.1)])
@pytest.mark.parametrize("last", audio.LAST_WINDOWS)
def test_iter_windows_equal_slicing(tmp_path, window_s, hop_s, block_s, last):
    rate = 16000
    path = write_wav(tmp_path / "a.wav", tone(4.3, 44100), 44100)
    wave = audio.load(path, rate)
    window, hop = round(window_s * rate), round(hop_s * rate)
    starts = expected_windows(wave, window, hop, last)

    def expected(start: int) -> np.ndarray:
        return audio.crop_or_pad(wave[start:], window) if last == "pad" else wave[start:start + window]

    got = list(audio.iter_windows(path, rate, window_s, hop_s, block_s, last=last))
    assert [round(t * rate) for t, _ in got] == starts
    for (_, win), start in zip(got, starts, strict=True):
        assert win.shape == expected(start).shape and win.dtype == np.float32
        assert np.allclose(win, expected(start), atol=1e-5)
    in_memory = list(audio.array_windows(wave, rate, window_s, hop_s, last=last))
    assert [round(t * rate) for t, _ in in_memory] == starts
    for (_, win), start in zip(in_memory, starts, strict=True):
        assert np.array_equal(win, expected(start))


def test_iter_windows_last_window_padded_or_short(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(2.5, 8000), 8000)
    got = list(audio.iter_windows(path, 8000, 1.0, 1.0))
    assert [t for t, _ in got] == [0.0, 1.0, 2.0]
    assert got[-1][1][:4000].all() and not got[-1][1][4000:].any()
    short = list(audio.iter_windows(path, 8000, 1.0, 1.0, last="short"))
    assert [w.size for _, w in short] == [8000, 8000, 4000] and np.array_equal(short[-1][1], got[-1][1][:4000])
    assert len(list(audio.iter_windows(path, 8000, 1.0, 1.0, last="none"))) == 2
    with pytest.raises(TaggerError, match="last window 'keep'"):
        list(audio.iter_windows(path, 8000, 1.0, 1.0, last="keep"))


def test_iter_windows_short_file_gives_one_padded_window(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(0.3, 8000), 8000)
    (start, win), = audio.iter_windows(path, 8000, 1.0, 0.5)
    assert start == 0.0 and win.shape == (8000,)
    assert np.array_equal(win, audio.crop_or_pad(audio.load(path), 8000))
    assert list(audio.iter_windows(path, 8000, 1.0, 0.5, last="none")) == []
    (_, whole), = audio.iter_windows(path, 8000, 1.0, 0.5, last="short")
    assert np.array_equal(whole, audio.load(path))


def test_iter_windows_long_file(tmp_path):
    """Ten minutes at 8 kHz streams window by window; nothing holds the whole file at once."""
    rate, seconds = 8000, 600
    path = write_wav(tmp_path / "long.wav", np.zeros(rate * seconds, dtype=np.float32), rate)
    count = 0
    for start, win in audio.iter_windows(path, rate, 10.0, 5.0, block_seconds=20.0):
        assert win.size == 10 * rate and start == count * 5.0
        count += 1
    assert count == (seconds - 10) // 5 + 1


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"window_seconds": 0, "hop_seconds": 1}, "window_seconds"),
    ({"window_seconds": 1, "hop_seconds": 0}, "hop_seconds"),
    ({"window_seconds": 1, "hop_seconds": -1}, "hop_seconds"),
    ({"window_seconds": 1, "hop_seconds": 1, "block_seconds": 0}, "block_seconds"),
])
def test_iter_windows_bad_arguments(tmp_path, kwargs, word):
    path = write_wav(tmp_path / "a.wav", tone(1.0, 8000), 8000)
    with pytest.raises(TaggerError, match=word):
        list(audio.iter_windows(path, 8000, **kwargs))


# ---------------------------------------------------------------------------------------------------------
# Bad input files: one-line TaggerError naming the file, from every entry point


def all_entry_points(path: Path, with_info: bool = True) -> list[str]:
    """Every public reader fails the same way; info() reads only the header, so it cannot see bad samples."""
    calls = [
        audio.load,
        audio.load_with_rate,
        *([audio.info] if with_info else []),
        lambda p: list(audio.iter_blocks(p, 16000)),
        lambda p: list(audio.iter_windows(p, 16000, 1.0, 0.5)),
    ]
    return [expect_error(path, call) for call in calls]


def test_missing_file(tmp_path):
    assert all("not found" in m for m in all_entry_points(tmp_path / "nope.wav"))


def test_directory(tmp_path):
    folder = tmp_path / "clips.wav"
    folder.mkdir()
    assert all("directory" in m for m in all_entry_points(folder))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    assert all("empty" in m for m in all_entry_points(path))


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    all_entry_points(path)


@pytest.mark.parametrize("keep", [0.5, 30])
def test_truncated_wav(tmp_path, keep):
    """Cut in half (header intact, audio missing) and cut inside the 44-byte header."""
    path = write_wav(tmp_path / "cut.wav", tone(1.0, 16000), 16000)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    all_entry_points(path)


def test_truncated_flac(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, tone(2.0, 16000), 16000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    wave = tone(1.0, 16000)
    wave[1234] = bad
    path = write_wav(tmp_path / "bad.wav", wave, 16000, subtype="FLOAT")
    assert all("NaN/Inf" in m for m in all_entry_points(path, with_info=False))


def test_zero_samples(tmp_path):
    path = write_wav(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32), 16000)
    assert path.stat().st_size > 0
    assert all("no audio samples" in m for m in all_entry_points(path))


def test_unsupported_format(tmp_path):
    path = tmp_path / "clip.xyz"
    path.write_bytes(b"definitely not audio " * 50)
    all_entry_points(path)
