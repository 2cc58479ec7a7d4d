"""Heat-map PNG of class scores over time, with detected events outlined on their rows (Pillow, no matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tagger.errors import TaggerError
from tagger.fileio import atomic_path
from tagger.inference.events import Event

LEFT, PLOT_WIDTH, RIGHT = 180, 1200, 80  # class names | heat map (one pixel column per time bin) | colour scale
TOP, BOTTOM = 30, 46  # title above, time axis below
ROW_HEIGHT, MIN_PLOT_HEIGHT = 22, 110  # a few rows still leave room for the colour scale's labels
WIDTH = LEFT + PLOT_WIDTH + RIGHT
EVENT_COLOUR = (255, 40, 40)  # no viridis colour is near red, so outlines stand out on any score
_TEXT, _AXIS = (30, 30, 30), (90, 90, 90)
# Five points of the viridis scale (dark blue -> green -> yellow): readable in greyscale and by most colour-blind eyes.
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, i]) for i in range(3)], axis=1
).round().astype(np.uint8)
_STEPS = [m * 10.0**e for e in range(-3, 1) for m in (1, 2, 5)] + [10, 15, 20, 30, 60, 120, 300, 600, 900, 1800]
_STEPS += [3600, 7200, 10800, 21600, 43200, 86400]


def timeline_size(rows: int) -> tuple[int, int]:
    """(width, height) in pixels of a timeline showing `rows` classes."""
    return WIDTH, TOP + max(rows * ROW_HEIGHT, MIN_PLOT_HEIGHT) + BOTTOM


def plot_timeline(
    scores: np.ndarray,
    frame_seconds: float,
    names: Sequence[str],
    path: str | Path,
    events: Sequence[Event] = (),
    top: int = 10,
    title: str = "",
) -> Path:
    """Draw the `top` classes by peak score (highest first) over time and write a PNG atomically.

    Time is max-pooled into PLOT_WIDTH pixel columns (short inputs repeat frames instead), so a short blip in an hour
    still shows and an hour at 100 frames/s costs one pass over the scores. Events of classes not shown are skipped.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or 0 in scores.shape:
        raise TaggerError(f"scores have shape {scores.shape}; expected (frames, classes) with at least one of each")
    if not (isinstance(frame_seconds, Real) and math.isfinite(frame_seconds) and frame_seconds > 0):
        raise TaggerError(f"frame_seconds={frame_seconds!r} is invalid; it must be a number of seconds > 0")
    if len(names) != scores.shape[1]:
        raise TaggerError(f"{len(names)} class names for {scores.shape[1]} score columns; give one name per class")
    if isinstance(top, bool) or not isinstance(top, Integral) or top < 1:
        raise TaggerError(f"top={top!r} is invalid; it must be a whole number >= 1")
    path = Path(path)
    if not path.parent.is_dir():
        raise TaggerError(f"cannot write {path}: folder {path.parent} does not exist")

    peaks = np.nan_to_num(np.fmax.reduce(scores, axis=0).astype(np.float64), nan=-np.inf)
    shown = np.argsort(-peaks, kind="stable")[:top]
    frames = scores.shape[0]
    pooled = np.fmax.reduceat(scores[:, shown], np.arange(PLOT_WIDTH) * frames // PLOT_WIDTH, axis=0)
    width, height = timeline_size(len(shown))
    edges = [TOP + round(r * (height - TOP - BOTTOM) / len(shown)) for r in range(len(shown) + 1)]

    image = Image.new("RGB", (width, height), "white")
    heat = _LUT[np.round(np.clip(np.nan_to_num(pooled.T, nan=0.0), 0, 1) * 255).astype(np.uint8)]
    image.paste(Image.fromarray(np.repeat(heat, np.diff(edges), axis=0)), (LEFT, TOP))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    bottom = edges[-1]
    draw.rectangle((LEFT - 1, TOP - 1, LEFT + PLOT_WIDTH, bottom), outline=_AXIS)
    if title:
        draw.text((LEFT, 9), title, fill=_TEXT, font=font)
    for row, label in enumerate(shown.tolist()):
        name = _fit(draw, font, str(names[label]), LEFT - 14)
        _text(draw, font, (LEFT - 7, (edges[row] + edges[row + 1]) / 2 - 6), name, "right")

    total = frames * frame_seconds
    rows = {label: row for row, label in enumerate(shown.tolist())}
    for event in events:
        row = rows.get(event.label)
        if row is None:
            continue
        x0 = LEFT + min(max(event.onset / total, 0.0), 1.0) * PLOT_WIDTH
        x1 = max(LEFT + min(max(event.offset / total, 0.0), 1.0) * PLOT_WIDTH, x0 + 2)
        draw.rectangle((x0, edges[row] + 2, x1, edges[row + 1] - 3), outline=EVENT_COLOUR, width=2)

    _time_axis(draw, font, total, bottom)
    _colour_scale(image, draw, font, bottom)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _tick_step(total: float, most: int = 10) -> float:
    """The first round step (1-2-5 below 10 s, clock-friendly above) giving at most `most` intervals."""
    for step in _STEPS:
        if total / step <= most:
            return step
    return 86400.0 * math.ceil(total / 86400 / most)


def _clock(seconds: float, total: float, step: float) -> str:
    """Seconds with as many decimals as the step needs under a minute; m:ss up to an hour; h:mm:ss beyond."""
    if total < 60:
        return f"{seconds:.{max(0, math.ceil(-math.log10(step) - 1e-9))}f}"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if total >= 3600 else f"{minutes}:{secs:02d}"


def _time_axis(draw: ImageDraw.ImageDraw, font, total: float, bottom: int) -> None:
    step = _tick_step(total)
    for i in range(int(total / step + 1e-9) + 1):
        x = LEFT + i * step / total * PLOT_WIDTH
        draw.line((x, bottom, x, bottom + 4), fill=_AXIS)
        _text(draw, font, (x, bottom + 7), _clock(i * step, total, step), "centre")
    unit = "s" if total < 60 else "m:ss" if total < 3600 else "h:mm:ss"
    _text(draw, font, (LEFT + PLOT_WIDTH / 2, bottom + 24), f"time ({unit})", "centre")


def _colour_scale(image: Image.Image, draw: ImageDraw.ImageDraw, font, bottom: int) -> None:
    x0, height = LEFT + PLOT_WIDTH + 14, bottom - TOP
    values = np.linspace(1, 0, height)[:, None].repeat(14, axis=1)
    image.paste(Image.fromarray(_LUT[np.round(values * 255).astype(np.uint8)]), (x0, TOP))
    draw.rectangle((x0 - 1, TOP - 1, x0 + 14, bottom), outline=_AXIS)
    for value in (1.0, 0.5, 0.0):
        _text(draw, font, (x0 + 20, TOP + (1 - value) * (height - 1) - 6), f"{value:g}", "left")


def _fit(draw: ImageDraw.ImageDraw, font, text: str, width: float) -> str:
    """Shorten `text` with '...' until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _text(draw: ImageDraw.ImageDraw, font, xy: tuple[float, float], text: str, align: str) -> None:
    width = draw.textlength(text, font=font)
    x = xy[0] - {"left": 0, "centre": width / 2, "right": width}[align]
    draw.text((x, xy[1]), text, fill=_TEXT, font=font)
