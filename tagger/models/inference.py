"""Fast inference: per input shape, a frozen TorchScript graph of the network with conv+BN+ReLU fused.

Why: convolution dominates CPU inference of the CNN taggers, and the official code runs each conv, BatchNorm
and ReLU as separate passes in PyTorch's default layout. Freezing folds the BatchNorms into the convolutions
and `torch.jit.optimize_for_inference` runs them in oneDNN's blocked layout with fused activations. The
outputs equal the eager model's to float32 rounding (BatchNorm folding reorders a few multiplications);
the tests bound the difference. Graphs are built lazily for each new input shape and kept.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from tagger.models.base import TaggerModel, TaggerOutput


class _Network(nn.Module):
    """forward_features as a function of tensors only (TorchScript cannot return None or dataclasses)."""

    def __init__(self, model: TaggerModel):
        super().__init__()
        self.model = model

    def forward(self, spec: Tensor) -> tuple[Tensor, ...]:
        out = self.model.forward_features(spec)
        if out.frame_logits is None:
            return out.logits, out.embedding
        return out.logits, out.embedding, out.frame_logits


class FastInference:
    """Call like the model: waveform (B, S) in, TaggerOutput out, eval mode only."""

    def __init__(self, model: TaggerModel):
        self.model = model.eval()
        self.network = _Network(model).eval()
        self._graphs: dict[tuple[int, ...], torch.jit.ScriptModule] = {}

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def graph(self, spec: Tensor) -> torch.jit.ScriptModule:
        key = (*spec.shape, spec.dtype)
        if key not in self._graphs:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about shape checks, which are constant here
                traced = torch.jit.trace(self.network, spec, check_trace=False)
                self._graphs[key] = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        return self._graphs[key]

    def forward_features(self, spec: Tensor) -> TaggerOutput:
        with torch.no_grad():
            outputs = self.graph(spec)(spec)
        frames = outputs[2] if len(outputs) == 3 else None
        return TaggerOutput(logits=outputs[0], frame_logits=frames, embedding=outputs[1])

    def __call__(self, wave: Tensor) -> TaggerOutput:
        with torch.no_grad():
            spec = self.model.frontend(wave)
        return self.forward_features(spec)
