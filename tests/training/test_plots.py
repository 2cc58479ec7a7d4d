"""Training-curve PNGs: valid images, drawn series in their panels, tolerant of CSV strings and gaps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from tagger.training.plots import COLOURS, HEIGHT, PLOT_BOTTOM, PLOT_TOP, WIDTH, plot_curves


def csv_rows(epochs: int = 6) -> list[dict[str, str]]:
    """Rows as csv.DictReader gives them: strings, empty where a train-only row has no evaluation."""
    rows = []
    for i in range(1, 4 * epochs + 1):
        epoch = i / 4
        row = {"epoch": str(epoch), "step": str(100 * i), "train_loss": str(0.7 * math.exp(-epoch / 3)), "lr": "1e-4"}
        row.update(valid_loss="", mAP="", mAUC="", d_prime="")
        if i % 4 == 0:
            row.update(valid_loss=str(0.6 * math.exp(-epoch / 4)), mAP=str(0.1 * epoch), mAUC=str(0.5 + 0.05 * epoch))
            row["d_prime"] = "1.2"
        rows.append(row)
    return rows


def colour_pixels(image: Image.Image, colour: tuple[int, int, int], panel: int) -> int:
    """How many pixels of `colour` lie inside the plotting area of panel 0 (left) or 1 (right)."""
    pixels = np.asarray(image.convert("RGB"))[PLOT_TOP:PLOT_BOTTOM, panel * WIDTH // 2 : (panel + 1) * WIDTH // 2]
    return int(np.all(pixels == colour, axis=-1).sum())


def test_writes_png_with_each_series_in_its_panel(tmp_path):
    path = plot_curves(csv_rows(), tmp_path / "run" / "curves.png")
    assert path == tmp_path / "run" / "curves.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
        for name in ("train_loss", "valid_loss"):
            assert colour_pixels(image, COLOURS[name], panel=0) > 500  # lines, not just markers
            assert colour_pixels(image, COLOURS[name], panel=1) == 0
        for name in ("mAP", "mAUC"):
            assert colour_pixels(image, COLOURS[name], panel=1) > 500
            assert colour_pixels(image, COLOURS[name], panel=0) == 0
        # No accuracy or lwlrap column: neither line nor legend entry anywhere.
        assert not np.all(np.asarray(image) == COLOURS["accuracy"], axis=-1).any()
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]  # no temp file left behind


def test_single_row_shows_a_marker(tmp_path):
    path = plot_curves([{"epoch": 1.0, "train_loss": 0.5, "valid_loss": 0.6, "mAP": 0.3}], tmp_path / "one.png")
    with Image.open(path) as image:
        assert colour_pixels(image, COLOURS["train_loss"], panel=0) >= 9
        assert colour_pixels(image, COLOURS["valid_loss"], panel=0) >= 9
        assert colour_pixels(image, COLOURS["mAP"], panel=1) >= 9


def test_skips_nan_inf_and_junk_and_handles_missing_columns(tmp_path):
    rows = [
        {"step": "10", "train_loss": "0.9", "accuracy": "nan", "lwlrap": "nan"},
        {"step": "20", "train_loss": "inf", "accuracy": "0.4", "lwlrap": ""},
        {"step": "30", "train_loss": "oops", "accuracy": "0.6"},
        {"step": "", "train_loss": "0.1", "accuracy": "0.9"},  # no x: the row cannot be placed
        {"step": "40", "train_loss": float("nan"), "accuracy": 0.7},
    ]
    path = plot_curves(rows, tmp_path / "curves.png", x_key="step")
    with Image.open(path) as image:
        assert colour_pixels(image, COLOURS["train_loss"], panel=0) >= 9
        assert colour_pixels(image, COLOURS["accuracy"], panel=1) > 300  # three markers alone would be about 110
        assert not np.all(np.asarray(image) == COLOURS["lwlrap"], axis=-1).any()
        assert colour_pixels(image, COLOURS["valid_loss"], panel=0) == 0


def test_no_rows_still_writes_an_image_and_replaces_the_old_one(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"stale")
    plot_curves([], path)
    with Image.open(path) as image:
        assert image.size == (WIDTH, HEIGHT)
        assert not any(colour_pixels(image, colour, panel) for colour in COLOURS.values() for panel in (0, 1))
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


@pytest.mark.parametrize(("low", "high", "expected"), [
    (1, 10, [2, 4, 6, 8, 10]),  # whole epochs, never 3.25 or 5.5
    (1, 4, [1, 2, 3, 4]),
    (0, 1.5, [0, 0.5, 1, 1.5]),  # fractions only when the run is shorter than two epochs
    (100, 5000, [1000, 2000, 3000, 4000, 5000]),  # steps
])
def test_x_ticks_are_round(low, high, expected):
    from tagger.training.plots import _ticks

    assert _ticks(low, high) == pytest.approx(expected)
