"""What an export wrote, and how well it matches the PyTorch model: the ExportReport the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ExportReport:
    """What export_model wrote and how well the written artefact matches the PyTorch model."""

    path: Path
    format: str
    files: list[Path]  # everything written, `path` first (ONNX with a separate front-end writes two)
    size_bytes: int  # all files together
    input_name: str
    input_shape: list[int | str]  # "batch" / "samples" for dynamic axes, else the fixed size
    sample_rate: int
    seconds: float  # the export (and check) length
    min_samples: int | None  # the shortest (and longest) input the graph accepts; None: any
    max_samples: int | None
    outputs: list[str]
    frontend: str
    frontend_in_graph: bool  # False: `files[1]` holds the front-end, `path` takes features
    opset: int | None
    max_abs_diff: float | None  # None when check=False
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """One flat record for the CLI's table / JSON / CSV output."""
        if self.format == "safetensors":
            frontend = "weights only"
        else:
            frontend = "inside" if self.frontend_in_graph else f"separate ({self.files[1].name})"
        return {
            "path": str(self.path),
            "format": self.format,
            "size_MB": round(self.size_bytes / 1e6, 3),
            "input": f"{self.input_name} ({', '.join(map(str, self.input_shape))})",
            "sample_rate": self.sample_rate,
            "frontend": f"{self.frontend}: {frontend}",
            "opset": self.opset if self.opset is not None else "",
            "outputs": ", ".join(self.outputs),
            "max_abs_diff": "not checked" if self.max_abs_diff is None else float(f"{self.max_abs_diff:.3g}"),
        }
