"""PNG summary of an evaluation, drawn with Pillow: per-class AP bars (best and worst) and a confusion matrix."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tagger.fileio import atomic_path

BARS_SHOWN = 12  # the best and the worst this many classes; all of them when there are at most twice as many
MATRIX_MAX_CLASSES = 50  # larger confusion matrices are unreadable at this size
ROW, NAME_CHARS = 18, 30
BAR_WIDTH, MATRIX_SIZE = 300, 360
_BAR, _BAR_LOW, _TEXT, _AXIS, _GRID = (44, 110, 180), (214, 96, 77), (30, 30, 30), (90, 90, 90), (228, 228, 228)
HEADLINE = ("accuracy", "top5_accuracy", "mAP", "mAUC", "d_prime", "lwlrap")


def plot_evaluation(metrics: Mapping[str, Any], per_class: Sequence[Mapping[str, Any]], path: str | Path,
                    confusion: np.ndarray | None = None, title: str = "") -> Path:
    """Draw the headline metrics, AP per class sorted (best and worst classes) and, when given, a row-normalised
    confusion matrix (single-label sets); write a PNG atomically."""
    font, small = _font(13), _font(11)
    rows = _bar_rows(per_class)
    bars_height = 96 + ROW * max(len(rows), 1) + 30  # title lines, then the bars, then the tick labels
    show_matrix = confusion is not None and 0 < len(confusion) <= MATRIX_MAX_CLASSES
    width = 40 + 8 * NAME_CHARS + BAR_WIDTH + 70 + (MATRIX_SIZE + 90 if show_matrix else 0)
    height = max(bars_height, 110 + MATRIX_SIZE + 50 if show_matrix else 0)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    head = "   ".join(f"{_short(k)} {_fmt(metrics[k])}" for k in HEADLINE if k in metrics)
    draw.text((12, 8), title or "evaluation", fill=_TEXT, font=font)
    draw.text((12, 28), head, fill=_TEXT, font=font)
    counts = f"{metrics.get('clips', '?')} clips, {metrics.get('classes_scored', '?')} of {len(per_class)} " \
             "classes with positives"
    if metrics.get("skipped"):
        counts += f", {metrics['skipped']} files skipped"
    draw.text((12, 46), counts, fill=_AXIS, font=small)
    _bars(draw, font, small, rows, top=72)
    if show_matrix:
        _matrix(draw, small, confusion, left=width - MATRIX_SIZE - 40, top=100)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def confusion_matrix(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C, C) counts: row = target class (argmax of the target row), column = top-scoring class."""
    classes = scores.shape[1]
    out = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(out, (np.argmax(targets, axis=1), np.argmax(scores, axis=1)), 1)
    return out


def _bar_rows(per_class: Sequence[Mapping[str, Any]]) -> list[tuple[str, float] | int]:
    """(name, AP) sorted best first; a number stands for that many classes left out between best and worst."""
    scored = [(str(r["name"]), float(r["AP"])) for r in per_class if math.isfinite(float(r["AP"]))]
    scored.sort(key=lambda item: -item[1])
    if len(scored) <= 2 * BARS_SHOWN:
        return list(scored)
    return [*scored[:BARS_SHOWN], len(scored) - 2 * BARS_SHOWN, *scored[-BARS_SHOWN:]]


def _bars(draw, font, small, rows, top: int) -> None:
    left = 20 + 8 * NAME_CHARS
    draw.text((12, top), "AP per class, best first", fill=_TEXT, font=font)
    top += 24
    if not rows:
        draw.text((left, top), "no class has a positive clip", fill=_AXIS, font=small)
        return
    bottom = top + ROW * len(rows)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * BAR_WIDTH
        draw.line((x, top - 2, x, bottom), fill=_GRID)
        draw.text((x - 8, bottom + 4), f"{tick:g}", fill=_AXIS, font=small)
    hidden = 0
    for i, row in enumerate(rows):
        y = top + i * ROW
        if isinstance(row, int):
            draw.text((left + 6, y + 3), f"... {row} more classes ...", fill=_AXIS, font=small)
            hidden = 1
            continue
        name, ap = row
        label = name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "~"
        box = draw.textbbox((0, 0), label, font=small)
        draw.text((left - 8 - (box[2] - box[0]), y + 3), label, fill=_TEXT, font=small)
        colour = _BAR_LOW if hidden else _BAR
        draw.rectangle((left, y + 3, left + max(1.0, ap * BAR_WIDTH), y + ROW - 3), fill=colour)
        draw.text((left + ap * BAR_WIDTH + 6, y + 3), f"{ap:.3f}", fill=_TEXT, font=small)
    draw.line((left, top - 2, left, bottom), fill=_AXIS)


def _matrix(draw, small, confusion: np.ndarray, left: int, top: int) -> None:
    classes = len(confusion)
    draw.text((left, top - 28), "confusion (row-normalised): true down, predicted across", fill=_TEXT, font=small)
    cell = MATRIX_SIZE / classes
    totals = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    for i in range(classes):
        for j in range(classes):
            shade = int(round(255 * (1 - share[i, j])))
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            x, y = left + j * cell, top + i * cell
            draw.rectangle((x, y, x + cell, y + cell), fill=colour)
    draw.rectangle((left, top, left + MATRIX_SIZE, top + MATRIX_SIZE), outline=_AXIS)
    step = max(1, math.ceil(classes / 10))  # class indices along both axes (names would not fit)
    for k in range(0, classes, step):
        centre = k * cell + cell / 2
        draw.text((left + centre - 3, top + MATRIX_SIZE + 4), str(k), fill=_AXIS, font=small)
        draw.text((left - 20, top + centre - 6), str(k), fill=_AXIS, font=small)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def _short(key: str) -> str:
    return {"d_prime": "d'", "top5_accuracy": "top-5", "accuracy": "acc"}.get(key, key)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
