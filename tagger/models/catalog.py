"""What `tagger models` prints: each registered model with its size, input rate and front-end."""

from __future__ import annotations

import torch

from tagger.models import ModelEntry, list_models


def count_parameters(entry: ModelEntry, num_classes: int = 527) -> int:
    """Trainable parameters of the full-size model, built on the meta device so nothing is allocated."""
    try:
        with torch.device("meta"):
            model = entry.builder(num_classes=num_classes)
    except (NotImplementedError, RuntimeError):  # a constructor that needs real data: build it for real
        model = entry.builder(num_classes=num_classes)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def catalog(family: str | None = None) -> list[dict]:
    rows = []
    for entry in list_models():
        if family is not None and entry.family != family:
            continue
        rows.append(
            {
                "name": entry.name,
                "family": entry.family,
                "params_M": round(count_parameters(entry) / 1e6, 3),
                "sample_rate": entry.sample_rate,
                "frontend": entry.frontend,
                "frame_level": "yes" if entry.frame_level else "no",
                "description": entry.description,
            }
        )
    return rows
