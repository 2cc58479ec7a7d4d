"""Whether a training batch fits in memory, measured before training: a batch that does not is split into
micro-batches whose gradients are accumulated (data.micro_batches), instead of the process being killed halfway
through an epoch.

The measure is the size of every tensor autograd keeps for the backward pass during one forward of two clips
(the activations), plus parameters, gradients and two optimizer moments. Checked against runs on this machine:
AST-base at 1024 frames keeps 0.89 GB per clip, and a batch of 12 peaked at 10.7 GB of the 24 GB; a batch of 32
was killed by the kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tagger.errors import TaggerError

HEADROOM = 0.9  # share of the free memory a step may plan to use


@dataclass(frozen=True)
class Fit:
    """How a batch of `batch` clips per process is run: micro-batches of `micro`, `split` of them per batch."""

    batch: int
    micro: int
    needed: float  # bytes for the whole batch at once
    free: float

    @property
    def split(self) -> int:
        return self.batch // self.micro


def saved_bytes_per_clip(net: nn.Module, spec: torch.Tensor) -> float:
    """Bytes autograd keeps per clip: one forward of a batch of two clips shaped like `spec` (F, T); parameters
    it keeps are left out (optimizer_bytes counts them), and a storage seen twice counts once."""
    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    x = torch.randn(2, *spec.shape, device=spec.device, dtype=spec.dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(x)
    return sum(storages.values()) / 2


def free_bytes(device: torch.device, processes_here: int = 1) -> float | None:
    """Memory a process on `device` may still use: the GPU's free memory, or the machine's available memory
    shared by the processes on it; None where it cannot be read (then nothing is checked)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) * 1024 / max(1, processes_here)
    return None


def plan_batch(batch: int, per_clip: float, fixed: float, free: float | None, even: bool = False) -> Fit:
    """The largest micro-batch dividing `batch` (an even one with `even`) whose step fits in HEADROOM of `free`."""
    needed = fixed + per_clip * batch
    if free is None or needed <= HEADROOM * free:
        return Fit(batch, batch, needed, free or math.inf)
    for micro in sorted((m for m in range(1, batch + 1) if batch % m == 0 and not (even and m % 2)), reverse=True):
        if fixed + per_clip * micro <= HEADROOM * free:
            return Fit(batch, micro, needed, free)
    raise TaggerError(f"one training clip needs about {(fixed + per_clip) / 1e9:.1f} GB and {free / 1e9:.1f} GB are "
                      "free: use shorter clips (data.clip_seconds), a smaller model, or a machine with more memory")


def optimizer_bytes(model: nn.Module) -> float:
    """Parameters, their gradients and two optimizer moments (Adam/AdamW), in bytes."""
    return 4.0 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
