"""PNG of the training curves, drawn with Pillow (already installed through torchvision; no matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tagger.fileio import atomic_path

WIDTH, HEIGHT = 1000, 420
PLOT_TOP, PLOT_BOTTOM = 34, 330  # the y span of both plotting areas; tick labels and the legend sit below it
LOSSES = ("train_loss", "valid_loss")
QUALITY = ("mAP", "mAUC", "accuracy", "lwlrap")  # all lie in [0, 1]; d_prime does not, so it is left out
COLOURS = {  # one fixed colour per column, so every run's plot reads the same way
    "train_loss": (31, 119, 180),
    "valid_loss": (255, 127, 14),
    "mAP": (44, 160, 44),
    "mAUC": (214, 39, 40),
    "accuracy": (148, 103, 189),
    "lwlrap": (140, 86, 75),
}
_AXIS, _GRID, _TEXT = (90, 90, 90), (228, 228, 228), (30, 30, 30)

Point = tuple[float, float]


def plot_curves(rows: Sequence[Mapping[str, float | str]], path: str | Path, x_key: str = "epoch") -> Path:
    """Draw losses (left) and quality metrics on a 0–1 scale (right) against `x_key`, and write a PNG atomically.

    `rows` are metrics.csv rows: values may be numbers or the strings read back from the CSV; empty, unparsable and
    non-finite values are skipped, so train-only and evaluation rows can share one table.
    """
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    half = WIDTH // 2
    _panel(draw, font, (0, half), "loss", _series(rows, x_key, LOSSES), x_key, None)
    _panel(draw, font, (half, WIDTH), "quality", _series(rows, x_key, QUALITY), x_key, (0.0, 1.0))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def _number(value: object) -> float | None:
    """A finite float from a number or a CSV string, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _series(rows: Iterable[Mapping[str, object]], x_key: str, names: Sequence[str]) -> dict[str, list[Point]]:
    """(x, y) points per column, in row order; columns without a single finite value are dropped."""
    series: dict[str, list[Point]] = {name: [] for name in names}
    for row in rows:
        x = _number(row.get(x_key))
        if x is None:
            continue
        for name in names:
            y = _number(row.get(name))
            if y is not None:
                series[name].append((x, y))
    return {name: points for name, points in series.items() if points}


def _ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round positions for the x axis: whole epochs (or steps) every 1, 2, 5, 10, ... so that at most `most`
    fit; halves and quarters only when the run spans less than two."""
    steps = [0.25, 0.5] if high - low < 2 else []
    steps += [m * 10**k for k in range(9) for m in (1, 2, 5)]
    step = next(s for s in steps if (high - low) / s <= most - 1)
    first = math.ceil(low / step - 1e-9) * step
    return [first + k * step for k in range(int((high - first) / step + 1e-9) + 1)]


def _span(low: float, high: float) -> tuple[float, float]:
    """Give a single value (one point, or a flat curve) some room either side."""
    if high - low < 1e-12:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    return low, high


def _panel(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    columns: tuple[int, int],
    title: str,
    series: dict[str, list[Point]],
    x_label: str,
    y_range: tuple[float, float] | None,
) -> None:
    left, right = columns[0] + 64, columns[1] - 24
    top, bottom = PLOT_TOP, PLOT_BOTTOM
    _text(draw, font, ((left + right) / 2, 10), title, "centre")
    draw.rectangle((left, top, right, bottom), outline=_AXIS)
    if not series:
        _text(draw, font, ((left + right) / 2, (top + bottom) / 2), "no data", "centre")
        return

    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x_low, x_high = _span(min(xs), max(xs))
    y_low, y_high = y_range or _span(min(ys), max(ys))
    inset = 8  # the data range stops short of the frame, so markers at the ends stay whole

    def to_pixel(x: float, y: float) -> Point:
        return (
            left + inset + (x - x_low) / (x_high - x_low) * (right - left - 2 * inset),
            bottom - inset - (y - y_low) / (y_high - y_low) * (bottom - top - 2 * inset),
        )

    for x in _ticks(x_low, x_high):
        px, _ = to_pixel(x, y_low)
        draw.line((px, top + 1, px, bottom - 1), fill=_GRID)
        _text(draw, font, (px, bottom + 6), f"{x:g}", "centre")
    for i in range(5):
        _, py = to_pixel(x_low, y_low + (y_high - y_low) * i / 4)
        draw.line((left + 1, py, right - 1, py), fill=_GRID)
        _text(draw, font, (left - 6, py - 5), f"{y_low + (y_high - y_low) * i / 4:.3g}", "right")
    _text(draw, font, ((left + right) / 2, bottom + 24), x_label, "centre")

    for name, points in series.items():
        colour = COLOURS[name]
        pixels = [to_pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2, joint="curve")
        for px, py in pixels:  # markers keep a lone point (one evaluation so far) visible
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)

    x = left
    for name in series:  # legend: a swatch and the column name, in one row under the axis label
        draw.rectangle((x, bottom + 50, x + 14, bottom + 60), fill=COLOURS[name])
        x = _text(draw, font, (x + 20, bottom + 49), name, "left") + 16


def _text(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    xy: Point,
    text: str,
    align: str,
) -> float:
    """Draw `text` left-, centre- or right-aligned on x (positioned by hand: bitmap fonts have no anchors);
    return its right edge."""
    box = draw.textbbox((0, 0), text, font=font)
    width = box[2] - box[0]
    x = xy[0] - {"left": 0, "centre": width / 2, "right": width}[align]
    draw.text((x, xy[1]), text, fill=_TEXT, font=font)
    return x + width
