"""Audio in: decode files to float32 waveforms, resample, crop/pad, and stream long files in blocks/windows.

Decoding goes through libsndfile (``soundfile``: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...); other
containers (m4a, ...) fall back to ``librosa.load``/audioread, which needs a system decoder such as ffmpeg.
Resampling uses soxr at quality "HQ": it is properly band-limited (no aliasing into the bands a tagger
listens to), fast, and librosa's default backend, so our features match those made with librosa.
Streaming soxr (``soxr.ResampleStream``) gives exactly the samples of one-shot resampling, which lets
``iter_blocks``/``iter_windows`` handle hours of audio in bounded memory and still equal ``load``.
Every problem with an input file becomes a one-line ``TaggerError`` naming the file.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from tagger.errors import TaggerError

RESAMPLE_QUALITY = "HQ"
CROP_MODES = ("start", "centre", "random")

# Suffixes libsndfile decodes: a failure to open one of these means a broken file, not a missing decoder.
_SUFFIX_FORMAT = {
    ".wav": "WAV", ".wave": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".opus": "OGG",
    ".mp3": "MP3", ".aif": "AIFF", ".aiff": "AIFF", ".aifc": "AIFF", ".au": "AU", ".snd": "AU",
    ".caf": "CAF", ".w64": "W64", ".rf64": "RF64",
}
_SOUNDFILE_SUFFIXES = {s for s, fmt in _SUFFIX_FORMAT.items() if fmt in sf.available_formats()}

# libsndfile logs e.g. "data : 32000 (should be 15978)" when a header promises more audio than the file has.
_SHORT_DATA_CHUNK = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMED_SIZE = 0xFFFFFFFF  # writers that stream (e.g. ffmpeg to a pipe) leave this placeholder size

_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, EOFError, OSError, ValueError)


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, read from its header without decoding the audio (when libsndfile reads it)."""

    path: Path
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


# ----------------------------------------------------------------------------------------------------------
# Opening files and turning every failure into a TaggerError


def _checked_path(path) -> Path:
    """Catch the common mistakes before a decoder gives a cryptic message about them."""
    path = Path(path)
    if not path.exists():
        raise TaggerError(f"{path}: audio file not found; check the path")
    if path.is_dir():
        raise TaggerError(f"{path}: is a directory, not an audio file; pass a file inside it")
    if path.stat().st_size == 0:
        raise TaggerError(f"{path}: file is empty (0 bytes); re-export or re-download it")
    return path


def _corrupt(path: Path) -> TaggerError:
    return TaggerError(f"{path}: cannot decode audio (corrupt, truncated or not a {path.suffix} file); "
                       "re-export it, e.g. as WAV or FLAC")


def _open_soundfile(path: Path) -> sf.SoundFile | None:
    """An open, sane SoundFile, or None when libsndfile does not know the format (try another decoder)."""
    try:
        handle = sf.SoundFile(path)
    except _DECODE_ERRORS:
        if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
            raise _corrupt(path) from None
        return None
    try:
        _check_header(handle, path)
    except TaggerError:
        handle.close()
        raise
    return handle


def _check_header(handle: sf.SoundFile, path: Path) -> None:
    """libsndfile quietly reads what is there of a truncated WAV/AIFF; a half file must not pass as whole."""
    match = _SHORT_DATA_CHUNK.search(handle.extra_info)
    if match:
        declared, actual = int(match[1]), int(match[2])
        if actual < declared < _STREAMED_SIZE:
            raise TaggerError(f"{path}: file is truncated (header promises {declared} bytes of audio, "
                              f"only {actual} are there); re-export or re-download it")
    if handle.frames <= 0:
        raise TaggerError(f"{path}: contains no audio samples; use a recording that is not empty")


def _check_finite(wave: np.ndarray, path: Path) -> np.ndarray:
    """NaN/Inf would silently poison every score computed from the file."""
    if not np.isfinite(wave).all():
        raise TaggerError(f"{path}: contains NaN/Inf samples; fix or re-export the file")
    return wave


def _read(handle: sf.SoundFile, path: Path, frames: int = -1) -> np.ndarray:
    """Up to `frames` frames (all with -1) as float32 (C, S); decode errors mid-file become TaggerError."""
    try:
        data = handle.read(frames, dtype="float32", always_2d=True)
    except _DECODE_ERRORS:
        raise _corrupt(path) from None
    return _check_finite(np.ascontiguousarray(data.T), path)


def _load_fallback(path: Path) -> tuple[np.ndarray, int]:
    """Containers libsndfile cannot read (m4a, ...) go through librosa/audioread and a system decoder."""
    import audioread
    import librosa

    kind = f"'{path.suffix}'" if path.suffix else "(no file extension)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns that it is falling back; that is the plan here
            wave, rate = librosa.load(path, sr=None, mono=False, dtype=np.float32)
    except audioread.NoBackendError:
        raise TaggerError(f"{path}: unsupported audio format {kind} and no decoder for it; "
                          "install ffmpeg or convert the file to WAV/FLAC") from None
    except (audioread.DecodeError, *_DECODE_ERRORS):
        raise TaggerError(f"{path}: cannot decode audio (corrupt, or unsupported format {kind}); "
                          "convert the file to WAV/FLAC") from None
    wave = np.atleast_2d(wave)
    if wave.shape[-1] == 0:
        raise TaggerError(f"{path}: contains no audio samples; use a recording that is not empty")
    return _check_finite(np.ascontiguousarray(wave, dtype=np.float32), path), int(rate)


def _load_native(path) -> tuple[np.ndarray, int]:
    """The whole file as float32 (C, S) at its own rate."""
    path = _checked_path(path)
    handle = _open_soundfile(path)
    if handle is None:
        return _load_fallback(path)
    with handle:
        return _read(handle, path), handle.samplerate


def _downmix(wave: np.ndarray, mono: bool) -> np.ndarray:
    """(C, S) -> (S,) by averaging channels when mono, else unchanged."""
    return wave.mean(axis=0, dtype=np.float32) if mono else wave


# ----------------------------------------------------------------------------------------------------------
# Whole files


def info(path) -> AudioInfo:
    """Rate, length and channels; for fallback formats (no libsndfile support) this decodes the file."""
    path = _checked_path(path)
    handle = _open_soundfile(path)
    if handle is None:
        wave, rate = _load_fallback(path)
        return AudioInfo(path, rate, wave.shape[1], wave.shape[0])
    with handle:
        return AudioInfo(path, handle.samplerate, handle.frames, handle.channels)


def load(path, sample_rate: int | None = None, mono: bool = True) -> np.ndarray:
    """float32 (S,) if mono else (C, S), resampled to `sample_rate` if given (None keeps the file's rate)."""
    if sample_rate is not None:
        _check_rate(sample_rate, "sample_rate")
    wave, rate = load_with_rate(path, mono=mono)
    if sample_rate is None:
        return wave
    return resample(wave, rate, sample_rate)


def load_with_rate(path, mono: bool = True) -> tuple[np.ndarray, int]:
    """The waveform at the file's own rate, and that rate."""
    wave, rate = _load_native(path)
    return _downmix(wave, mono), rate


# ----------------------------------------------------------------------------------------------------------
# Array helpers


def _check_rate(rate, name: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise TaggerError(f"{name} must be a positive integer number of Hz, got {rate!r}")


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited soxr resampling of (S,) or (C, S) along the last axis; float32 out."""
    _check_rate(orig_sr, "orig_sr")
    _check_rate(target_sr, "target_sr")
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    # soxr wants (frames, channels); our layout is (channels, frames).
    out = soxr.resample(np.ascontiguousarray(wave.T), orig_sr, target_sr, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(out.T, dtype=np.float32)


def crop_or_pad(wave: np.ndarray, length: int, mode: str = "start",
                generator: np.random.Generator | None = None) -> np.ndarray:
    """Fix the last axis to `length` samples; "start" keeps the head / pads the end as AST and PANNs do."""
    return crop_or_pad_from(wave, length, mode, generator)[0]


def crop_or_pad_from(wave: np.ndarray, length: int, mode: str = "start",
                     generator: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """`crop_or_pad` and the sample of `wave` the result starts at (negative: that many zeros come first), so
    that strong labels can follow the crop. Draws the same random numbers as `crop_or_pad`."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0:
        raise TaggerError(f"length must be a positive integer number of samples, got {length!r}")
    if mode not in CROP_MODES:
        raise TaggerError(f"unknown crop mode {mode!r}; use one of {', '.join(CROP_MODES)}")
    if mode == "random" and generator is None:
        raise TaggerError("crop mode 'random' needs a generator, e.g. np.random.default_rng(seed), "
                          "so that crops are reproducible")
    wave = np.asarray(wave)
    size = wave.shape[-1]
    offset = _offset(abs(size - length), mode, generator)
    if size >= length:
        return wave[..., offset:offset + length].copy(), offset
    pad = [(0, 0)] * (wave.ndim - 1) + [(offset, length - size - offset)]
    return np.pad(wave, pad), -offset


def _offset(slack: int, mode: str, generator: np.random.Generator | None) -> int:
    """Where the crop starts (or how much padding goes first), given `slack` spare samples."""
    if mode == "start":
        return 0
    if mode == "centre":
        return slack // 2
    return int(generator.integers(0, slack + 1))


# ----------------------------------------------------------------------------------------------------------
# Streaming long files


def iter_blocks(path, sample_rate: int, block_seconds: float = 30.0,
                mono: bool = True) -> Iterator[np.ndarray]:
    """Consecutive float32 blocks at `sample_rate` whose concatenation equals `load(path, sample_rate, mono)`.

    Only one block of input is decoded at a time and the streaming resampler carries its filter state
    across blocks, so hours of audio fit in memory. Blocks are about `block_seconds` long; the resampler's
    delay makes some shorter, and a short last one flushes it. Formats libsndfile cannot read are loaded
    whole and sliced.
    """
    _check_rate(sample_rate, "sample_rate")
    if not block_seconds > 0:
        raise TaggerError(f"block_seconds must be positive, got {block_seconds!r}")
    path = _checked_path(path)
    handle = _open_soundfile(path)
    if handle is None:
        yield from _slice_blocks(load(path, sample_rate, mono), max(1, round(block_seconds * sample_rate)))
        return
    with handle:
        yield from _stream_blocks(handle, path, sample_rate, block_seconds, mono)


def _slice_blocks(wave: np.ndarray, block: int) -> Iterator[np.ndarray]:
    for start in range(0, wave.shape[-1], block):
        yield wave[..., start:start + block]


def _stream_blocks(handle: sf.SoundFile, path: Path, sample_rate: int, block_seconds: float,
                   mono: bool) -> Iterator[np.ndarray]:
    block = max(1, round(block_seconds * handle.samplerate))
    channels = 1 if mono else handle.channels
    stream = None
    if handle.samplerate != sample_rate:
        stream = soxr.ResampleStream(handle.samplerate, sample_rate, channels, dtype="float32",
                                     quality=RESAMPLE_QUALITY)
    while True:
        wave = _downmix(_read(handle, path, block), mono)
        last = wave.shape[-1] < block  # a short (or empty) read means the file is done
        if stream is not None:
            wave = np.ascontiguousarray(stream.resample_chunk(np.ascontiguousarray(wave.T), last=last).T)
        if wave.shape[-1]:
            yield wave
        if last:
            return


LAST_WINDOWS = ("pad", "short", "none")


def iter_windows(path, sample_rate: int, window_seconds: float, hop_seconds: float,
                 block_seconds: float = 30.0, last: str = "pad") -> Iterator[tuple[float, np.ndarray]]:
    """(start seconds, mono float32 window) every hop, equal to slicing `load(path, sample_rate)`.

    Built on `iter_blocks` with a buffer of at most a window plus a block. A final window covers the tail the
    full windows miss (a file shorter than a window gives one): zero-padded to the window with last="pad", the
    audio that is left with "short" (so a model can take it as the short clip it is), none with "none".
    """
    _check_rate(sample_rate, "sample_rate")
    window = _seconds_to_samples(window_seconds, sample_rate, "window_seconds")
    hop = _seconds_to_samples(hop_seconds, sample_rate, "hop_seconds")
    yield from _windows(iter_blocks(path, sample_rate, block_seconds, mono=True), sample_rate, window, hop, last)


def array_windows(wave: np.ndarray, sample_rate: int, window_seconds: float, hop_seconds: float,
                  last: str = "pad") -> Iterator[tuple[float, np.ndarray]]:
    """`iter_windows` over a mono waveform already in memory (e.g. a clip cropped to a fixed length)."""
    _check_rate(sample_rate, "sample_rate")
    window = _seconds_to_samples(window_seconds, sample_rate, "window_seconds")
    hop = _seconds_to_samples(hop_seconds, sample_rate, "hop_seconds")
    yield from _windows(_slice_blocks(np.asarray(wave, dtype=np.float32), max(window, hop)), sample_rate, window,
                        hop, last)


def _windows(blocks: Iterator[np.ndarray], sample_rate: int, window: int, hop: int,
             last: str) -> Iterator[tuple[float, np.ndarray]]:
    if last not in LAST_WINDOWS:
        raise TaggerError(f"last window {last!r} is not one of {', '.join(LAST_WINDOWS)}")
    buffer = np.zeros(0, dtype=np.float32)
    start = 0  # sample index of buffer[0] in the whole file
    skip = 0  # samples still to drop when the hop is longer than the window
    emitted = False
    for block in blocks:
        dropped = min(skip, block.size)
        skip -= dropped
        buffer = np.concatenate([buffer, block[dropped:]])
        while buffer.size >= window:
            yield start / sample_rate, buffer[:window].copy()
            emitted = True
            step = min(hop, buffer.size)
            buffer, start, skip = buffer[step:], start + hop, hop - step
    # Anything left in the buffer lies past the last full window's end (or there was no full window).
    if last != "none" and buffer.size and (not emitted or hop + buffer.size > window):
        yield start / sample_rate, crop_or_pad(buffer, window) if last == "pad" else buffer[:window].copy()


def _seconds_to_samples(seconds: float, sample_rate: int, name: str) -> int:
    if not seconds > 0 or round(seconds * sample_rate) <= 0:
        raise TaggerError(f"{name} must be positive and at least one sample long, got {seconds!r}")
    return round(seconds * sample_rate)
