"""Export a tagger checkpoint to ONNX, TorchScript or safetensors, each checked against the PyTorch model.

run.py          export_model: checks the request, loads the model, plans its input, calls the format's exporter
onnx.py         ONNX: torch.export then torch.onnx, as dynamic as the written graph proves in onnxruntime
torchscript.py  TorchScript: a trace, dynamic in an axis only where it still matches at another size
safetensors.py  safetensors: the weights plus what load_safetensors needs to rebuild the model
graph.py        export forms of the front-ends (graph_frontend, exportable) and the outputs as one tuple
plan.py         the export length (the input plan) and the deterministic test waveform (parity_waveform)
shapes.py       the waveform input an artefact takes, and the inputs it is checked at
checks.py       the parity check the formats share: the PyTorch reference, the difference, the error
metadata.py     the tagger metadata written into every file, and read_metadata
describe.py     an ensemble's members, and how messages and reports name a model
exporters.py    the optional packages imported on use (with the install hint), exporters kept quiet
report.py       ExportReport, what an export wrote

Imports run one way: the format modules (onnx, torchscript, safetensors) build on the shared ones, which never
import a format module; only run.py and this file import the formats, and no module here imports this file.
May import: errors, version, fileio, frontends, labels, models (and models.policy), torchfile and checkpoint;
never inference, evaluation, training or the CLI.
Names with a leading underscore are shared between these modules, not part of the API (`__all__` below).
"""

from tagger.export.checks import TOLERANCE
from tagger.export.graph import OUTPUTS, exportable, graph_frontend
from tagger.export.metadata import read_metadata
from tagger.export.onnx import DEFAULT_OPSET, MIN_OPSET
from tagger.export.plan import parity_waveform
from tagger.export.report import ExportReport
from tagger.export.run import FORMATS, export_model
from tagger.export.safetensors import load_safetensors

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "MIN_OPSET",
    "OUTPUTS",
    "TOLERANCE",
    "ExportReport",
    "export_model",
    "exportable",
    "graph_frontend",
    "load_safetensors",
    "parity_waveform",
    "read_metadata",
]
