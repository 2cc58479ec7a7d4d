"""The waveform input an artefact takes, as a torch.export program shows it, and the inputs it is checked at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from tagger.export.graph import _GraphFrontend
from tagger.export.plan import _Plan, _samples_for, parity_waveform

INPUT_NAME = "waveform"


@dataclass
class _Input:
    """The waveform input an artefact takes: None for a dynamic axis."""

    batch: int | None
    samples: int | None
    min_samples: int
    max_samples: int | None

    def pin(self, plan: _Plan) -> _Input:
        """Fixed length: the export length."""
        return _Input(self.batch, plan.samples, plan.samples, plan.samples)

    def shape(self) -> list[int | str]:
        return ["batch" if self.batch is None else self.batch, "samples" if self.samples is None else self.samples]

    def spec(self) -> dict[str, Any]:
        """The input as the metadata records it; a fixed length has min_samples = max_samples = that length."""
        return {"name": INPUT_NAME, "dtype": "float32", "shape": self.shape(), "min_samples": self.min_samples,
                "max_samples": self.max_samples}


def _from_program(plan: _Plan, program, frontend: _GraphFrontend | None = None, time_axis: int = 1) -> _Input:
    """The input a torch.export program accepts, within the plan's range; with `frontend`, the program takes
    features and its time range (frames) is turned into samples."""
    batch = None if _axis_range(program, 0) is not None else int(_input_shape(program)[0])
    found = _axis_range(program, time_axis)
    if found is None:
        return _Input(batch, plan.samples, plan.samples, plan.samples)
    low, high = found
    if frontend is not None:
        low = _samples_for(frontend, low)
        high = None if high is None else _samples_for(frontend, high + 1) - 1
    top = plan.max_samples if high is None else min(high, plan.max_samples or high)
    return _Input(batch, None, max(plan.min_samples, low), top)


def _merge(front: _Input, net: _Input, plan: _Plan) -> _Input:
    """What a front-end graph followed by a network graph accepts."""
    batch = front.batch if front.batch is not None else net.batch
    if front.samples is not None or net.samples is not None:
        return _Input(batch, plan.samples, plan.samples, plan.samples)
    tops = [t for t in (front.max_samples, net.max_samples) if t is not None]
    return _Input(batch, None, max(front.min_samples, net.min_samples), min(tops) if tops else None)


def _input_shape(program) -> tuple:
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.name == name)
    return tuple(node.meta["val"].shape)


def _axis_range(program, axis: int) -> tuple[int, int | None] | None:
    """(min, max or None) of the input's `axis` in an ExportedProgram, or None when it was fixed."""
    size = _input_shape(program)[axis]
    if isinstance(size, int):
        return None
    bounds = program.range_constraints.get(size.node.expr)
    if bounds is None:
        return 0, None
    upper = bounds.upper  # sympy: an Integer, or torch's int_oo (whose is_finite is True, so test is_Integer)
    return int(bounds.lower), (int(upper) if upper.is_Integer else None)


def _other_length(plan: _Plan, shape: _Input) -> int:
    """A second length to check a dynamic axis at: 1.5 times the export length, or 0.6 times when the input
    has a maximum (a time embedding's span) or would pass it. A quarter of the export length is checked too
    (`_other_lengths`): models that take short clips their own way (HTS-AT tiles them) run another path there."""
    longer = int(plan.samples * 1.5)
    if shape.max_samples is None or longer <= shape.max_samples:
        return longer
    return max(shape.min_samples, int(plan.samples * 0.6))


def _check_waves(rate: int, plan: _Plan, shape: _Input) -> list[Tensor]:
    """The export-length batch of 2, then batch 3 when the batch is dynamic, and when the length is, clips of the
    other lengths (a batch of one, the other size exporters are known to special-case)."""
    waves = [parity_waveform(rate, plan.samples, batch=2)]
    if shape.batch is None:
        waves.append(parity_waveform(rate, plan.samples, batch=3, seed=1))
    if shape.samples is None:
        waves += [parity_waveform(rate, other, batch=shape.batch or 1, seed=2) for other in _other_lengths(plan, shape)]
    return waves


def _other_lengths(plan: _Plan, shape: _Input) -> list[int]:
    """The lengths besides the export length that a dynamic length axis must also be right at."""
    lengths = dict.fromkeys((_other_length(plan, shape), max(shape.min_samples, plan.samples // 4)))
    return [length for length in lengths if length != plan.samples]
