"""Timeline PNGs: size, row choice, event outlines, time ticks, tiny and hour-long inputs, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tagger.errors import TaggerError
from tagger.inference.events import Event
from tagger.inference.timeline import (
    EVENT_COLOUR,
    LEFT,
    PLOT_WIDTH,
    TOP,
    _clock,
    _tick_step,
    plot_timeline,
    timeline_size,
)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_writes_png_of_the_expected_size_with_rows_by_peak_and_events(tmp_path):
    scores = np.zeros((500, 6), dtype=np.float32)
    scores[100:200, 4] = 0.95  # highest peak -> top row
    scores[300:310, 1] = 0.6
    scores[:, 2] = 0.3
    events = [Event(4, 1.0, 2.0, 0.95), Event(0, 0.0, 5.0, 0.1)]  # class 0 is not shown: skipped
    path = plot_timeline(scores, 0.01, [f"class {i}" for i in range(6)], tmp_path / "t.png", events, top=3, title="x")
    assert path == tmp_path / "t.png"
    image = pixels(path)
    assert image.shape[1::-1] == timeline_size(3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.png"]  # no temporary file left behind

    height = (timeline_size(3)[1] - TOP - 46) // 3
    row_mid = [TOP + height * r + height // 2 for r in range(3)]
    # Row 0 is class 4: bright (yellow) in the middle of its event, dark outside it.
    assert image[row_mid[0], LEFT + int(PLOT_WIDTH * 0.3)].tolist()[0] > 200
    assert image[row_mid[0], LEFT + int(PLOT_WIDTH * 0.8)].tolist()[0] < 100
    # The event outline sits on row 0 only, from 1 s to 2 s of 5 s.
    red = np.all(image == EVENT_COLOUR, axis=-1)
    ys, xs = np.nonzero(red)
    assert ys.min() >= TOP and ys.max() < TOP + height
    assert abs(xs.min() - (LEFT + PLOT_WIDTH * 0.2)) <= 2 and abs(xs.max() - (LEFT + PLOT_WIDTH * 0.4)) <= 2
    # Row 1 is class 1 (peak 0.6), row 2 is class 2 (flat 0.3): a short blip survives the time pooling.
    assert image[row_mid[1], LEFT + int(PLOT_WIDTH * 0.61)].tolist() != image[row_mid[1], LEFT + 5].tolist()
    assert image[row_mid[2], LEFT + 5].tolist() == image[row_mid[2], LEFT + PLOT_WIDTH - 5].tolist()


@pytest.mark.parametrize("shape, top", [((1, 1), 10), ((1, 3), 2), ((7, 1), 1)])
def test_tiny_inputs(tmp_path, shape, top):
    scores = np.full(shape, 0.7)
    names = ["a", "b", "c"][: shape[1]]
    path = plot_timeline(scores, 0.02, names, tmp_path / "tiny.png", [Event(0, 0.0, 0.02, 0.7)], top)
    assert pixels(path).shape[1::-1] == timeline_size(min(top, shape[1]))


def test_an_hour_at_100_frames_per_second_with_527_classes(tmp_path):
    scores = np.full((360_000, 527), 0.01, dtype=np.float32)  # written out, so every page is really there
    scores[64_000, 42] = 1.0  # a single frame at 640 s: pooling by max keeps it
    scores[100_000:200_000, 7] = 0.6
    events = [Event(42, 640.0, 640.01, 1.0)]
    path = plot_timeline(scores, 0.01, [f"c{i}" for i in range(527)], tmp_path / "hour.png", events, title="hour")
    image = pixels(path)
    assert image.shape[1::-1] == timeline_size(10)
    x = LEFT + round(640 / 3600 * PLOT_WIDTH)
    top_row = image[TOP + 2 : TOP + 20, x - 3 : x + 4]
    assert (top_row == EVENT_COLOUR).all(axis=-1).any()  # the event's outline on the top row (class 42)
    assert (top_row[..., 0] > 200).any()  # and the yellow of its one-frame peak beside it


def test_long_class_names_are_shortened(tmp_path):
    path = plot_timeline(np.ones((3, 1)), 1.0, ["a very long class name " * 10], tmp_path / "n.png")
    image = pixels(path)
    assert image[:, :6].min() == 255  # shortened to fit its margin: nothing reaches the image's left edge
    assert image[:, 6 : LEFT - 6].min() < 100


@pytest.mark.parametrize(
    "total, step, first, last",
    [(0.05, 0.005, "0.000", "0.050"), (1.0, 0.1, "0.0", "1.0"), (59.0, 10, "0", "50"), (600.0, 60, "0:00", "10:00"),
     (3600.0, 600, "0:00:00", "1:00:00"), (7.5 * 3600, 3600, "0:00:00", "7:00:00")],
)
def test_time_ticks_are_round_and_read_as_clock_times(total, step, first, last):
    assert _tick_step(total) == pytest.approx(step)
    assert _clock(0.0, total, step) == first
    assert _clock(int(total / step + 1e-9) * step, total, step) == last


def test_bad_inputs_raise_one_line_errors(tmp_path):
    scores = np.zeros((10, 2))
    with pytest.raises(TaggerError, match="does not exist") as info:
        plot_timeline(scores, 0.1, ["a", "b"], tmp_path / "missing" / "t.png")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(TaggerError, match="3 class names for 2"):
        plot_timeline(scores, 0.1, ["a", "b", "c"], tmp_path / "t.png")
    with pytest.raises(TaggerError, match="shape"):
        plot_timeline(np.zeros((0, 2)), 0.1, ["a", "b"], tmp_path / "t.png")
    with pytest.raises(TaggerError, match="top"):
        plot_timeline(scores, 0.1, ["a", "b"], tmp_path / "t.png", top=0)
    with pytest.raises(TaggerError, match="frame_seconds"):
        plot_timeline(scores, 0.0, ["a", "b"], tmp_path / "t.png")
