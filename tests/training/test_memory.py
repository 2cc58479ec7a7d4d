"""The memory check before training: what a step keeps per clip, and how a batch is split when it cannot fit."""

from __future__ import annotations

import pytest
import torch

from tagger.errors import TaggerError
from tagger.training.memory import HEADROOM, plan_batch, saved_bytes_per_clip


def test_saved_bytes_count_what_backward_keeps():
    """A linear layer keeps its input for the weight gradient: 64 x 10 floats per clip (the flattened view
    shares the input's storage, so it is counted once; parameters are counted apart, by optimizer_bytes)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(640, 3, bias=False))
    assert saved_bytes_per_clip(net, torch.zeros(64, 10)) == 640 * 4
    conv = torch.nn.Sequential(torch.nn.Conv1d(64, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv1d(32, 8, 3))
    short, long = (saved_bytes_per_clip(conv, torch.zeros(64, frames)) for frames in (100, 200))
    assert short == (64 + 32) * 100 * 4 and long == 2 * short  # each conv's input, the ReLU's output shared


@pytest.mark.parametrize(("free_clips", "even", "micro"), [
    (40, False, 32),  # fits: one pass
    (11, False, 8),  # the largest divisor of 32 that fits
    (1.5, False, 1),
    (7, True, 4),
])
def test_plan_splits_into_the_largest_micro_batch_that_fits(free_clips, even, micro):
    per_clip, fixed = 1e9, 2e9
    fit = plan_batch(32, per_clip, fixed, (fixed + free_clips * per_clip) / HEADROOM, even=even)
    assert fit.micro == micro and fit.split == 32 // micro and fit.needed == fixed + 32 * per_clip


def test_unknown_memory_is_not_checked_and_too_little_is_one_line():
    assert plan_batch(32, 1e12, 0, None).split == 1
    with pytest.raises(TaggerError, match="one training clip needs about 3.0 GB and 2.0 GB are free"):
        plan_batch(32, 1e9, 2e9, 2e9)
