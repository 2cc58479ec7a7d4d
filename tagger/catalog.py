"""The model zoo as `tagger models` lists it, read from models/catalog.json: listing the zoo imports no torch.

The file is a record of the registry (sizes counted on the meta device); tests/test_catalog.py checks that it
still equals what the registry builds, and `python -m tagger.catalog` writes it anew after a model is added.
"""

from __future__ import annotations

import json
from pathlib import Path

CATALOG = Path(__file__).resolve().parent / "models" / "catalog.json"
FIELDS = ("name", "family", "default", "params_M", "sample_rate", "frontend", "frame_level", "description")


def catalog(family: str | None = None) -> list[dict]:
    """Rows of `tagger models`, optionally of one family."""
    rows = json.loads(CATALOG.read_text(encoding="utf-8"))
    return [row for row in rows if family is None or row["family"] == family]


def count_parameters(entry, num_classes: int = 527) -> int:
    """Trainable parameters of the full-size model, built on the meta device so nothing is allocated."""
    import torch

    try:
        with torch.device("meta"):
            model = entry.builder(num_classes=num_classes)
    except (NotImplementedError, RuntimeError):  # a constructor that needs real data: build it for real
        model = entry.builder(num_classes=num_classes)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_catalog() -> list[dict]:
    """The rows from the registry itself: every model built (on the meta device) and counted."""
    from tagger.models import FAMILY_DEFAULTS, list_models

    defaults = {arch: family for family, arch in FAMILY_DEFAULTS.items()}
    return [
        {
            "name": entry.name,
            "family": entry.family,
            "default": f"--arch {defaults[entry.name]}" if entry.name in defaults else "",
            "params_M": round(count_parameters(entry) / 1e6, 3),
            "sample_rate": entry.sample_rate,
            "frontend": entry.frontend,
            "frame_level": "yes" if entry.frame_level else "no",
            "description": entry.description,
        }
        for entry in list_models()
    ]


def write_catalog(path: Path = CATALOG) -> Path:
    from tagger.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(build_catalog(), indent=1, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_catalog()}")
