"""FastInference: fused, frozen graphs give the eager model's outputs, frame-level ones included."""

from __future__ import annotations

import pytest
import torch

from tagger.models import create_model
from tagger.models.inference import FastInference


@pytest.mark.parametrize(
    ("name", "seconds"),
    [("efficientat-mn01", 2.0), ("panns-cnn14-decisionlevel-max", 1.5), ("psla-effnet-b0-att4", 2.0),
     ("panns-leenet11", 1.0)],
)
def test_fast_path_equals_eager(name, seconds):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    wave = torch.randn(2, int(model.sample_rate * seconds)) * 0.1
    with torch.no_grad():
        eager = model(wave)
    fast = FastInference(model)
    with torch.inference_mode():  # the usual calling context of predict/evaluate
        out = fast(wave)
        again = fast(wave)  # the cached graph
    torch.testing.assert_close(out.logits, eager.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.embedding, eager.embedding, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again.logits, out.logits, rtol=0, atol=0)
    if eager.frame_logits is None:
        assert out.frame_logits is None
    else:
        torch.testing.assert_close(out.frame_logits, eager.frame_logits, rtol=1e-4, atol=1e-5)
    assert len(fast._graphs) == 1
    fast(wave[:1])  # a new shape builds a second graph
    assert len(fast._graphs) == 2
