"""EnsembleModel: several checkpoints scored on the same audio, their outputs combined into one TaggerOutput.

Members keep their own front-ends and sample rates. With one rate the ensemble takes a (B, S) waveform like any
model (so predict, evaluate and export treat it as one); with several it takes one waveform per rate, in
`rates` order (highest first), which `Scorer` reads from each file once per rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from tagger.ensemble.combine import combine_logits
from tagger.errors import TaggerError
from tagger.frontends import Waveform
from tagger.models.base import TaggerOutput

Runner = Callable[[Tensor], TaggerOutput]


class EnsembleModel(nn.Module):
    """members[i] scores the audio at its own rate; `columns[i]` picks its logits in the ensemble's label order
    (None: already in that order); the outputs are combined by `combine` with `weights` (summing to 1)."""

    family = "ensemble"
    arch = "ensemble"

    def __init__(self, members: Sequence[nn.Module], columns: Sequence[Sequence[int] | None], combine: str,
                 weights: Sequence[float], task: str):
        super().__init__()
        if not members:
            raise TaggerError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.combine, self.task = combine, task
        self.register_buffer("weights", torch.tensor([float(w) for w in weights]), persistent=False)
        self.columns = [None if c is None else torch.tensor(list(c), dtype=torch.long) for c in columns]
        self.rates = tuple(sorted({m.sample_rate for m in members}, reverse=True))
        self.rate_index = [self.rates.index(m.sample_rate) for m in members]
        self.frontend = Waveform(sample_rate=self.rates[0])  # the identity: members run their own front-ends
        self.model_kwargs = {"members": [m.arch for m in members], "combine": combine,
                             "weights": [float(w) for w in weights]}
        self.frame_level, self.frame_seconds = _frame_grid(members)
        policy = self.input_policy()
        if policy.max_samples is not None and policy.min_samples > policy.max_samples:
            raise TaggerError("the members take no common clip length (one needs longer clips than another "
                              "accepts); ensemble them by their saved predictions instead")

    @property
    def sample_rate(self) -> int:
        return self.rates[0]

    @property
    def num_classes(self) -> int:
        first = self.columns[0]
        return self.members[0].num_classes if first is None else len(first)

    def configure_inputs(self, **settings: str | None) -> None:
        """Pass each clip-length setting (TaggerModel.configure_inputs) to the members that have it."""
        for name, value in settings.items():
            if value is None:
                continue
            takers = [m for m in self.members if name in m.input_settings]
            if not takers:
                members = ", ".join(sorted({m.arch for m in self.members}))
                raise TaggerError(f"--{name.replace('_', '-')} applies to none of this ensemble's members ({members})")
            for member in takers:
                member.configure_inputs(**{name: value})

    def input_policy(self, rate: int | None = None):
        """The lengths every member accepts, in samples at `rate` (default: the primary rate)."""
        from tagger.models.policy import InputPolicy, input_policy

        rate = rate or self.sample_rate
        shortest, longest, windows = [], [], []
        for member in self.members:
            policy, scale = input_policy(member), rate / member.sample_rate
            shortest.append(math.ceil(policy.min_samples * scale))
            if policy.max_samples is not None:
                longest.append(math.floor(policy.max_samples * scale))
            if policy.window_samples is not None:
                windows.append(math.floor(policy.window_samples * scale))
        return InputPolicy(max(shortest), min(longest) if longest else None, min(windows) if windows else None)

    def member_outputs(self, wave: Tensor | Sequence[Tensor], runners: Sequence[Runner] | None = None
                       ) -> list[TaggerOutput]:
        """Each member's output, its classes in the ensemble's order. `runners` may stand in for the members
        (Scorer's fused CPU graphs)."""
        runners = runners or self.members
        outputs = []
        for index, run in enumerate(runners):
            own = wave if isinstance(wave, Tensor) else wave[self.rate_index[index]]
            out = run(own)
            columns = self.columns[index]
            if columns is not None:
                columns = columns.to(out.logits.device)
                frames = None if out.frame_logits is None else out.frame_logits.index_select(-1, columns)
                out = TaggerOutput(out.logits.index_select(-1, columns), frames, out.embedding)
            outputs.append(out)
        return outputs

    def combine_outputs(self, outputs: Sequence[TaggerOutput]) -> TaggerOutput:
        """Combined logits (and frame logits when every member has them on one grid); embeddings concatenated."""
        logits = combine_logits(torch.stack([o.logits.float() for o in outputs]), self.weights, self.combine,
                                self.task)
        frames = None
        if self.frame_level and all(o.frame_logits is not None for o in outputs):
            length = min(o.frame_logits.shape[1] for o in outputs)
            stacked = torch.stack([o.frame_logits[:, :length].float() for o in outputs])
            frames = combine_logits(stacked, self.weights, self.combine, self.task)
        embedding = torch.cat([o.embedding.float() for o in outputs], dim=-1)
        return TaggerOutput(logits=logits, frame_logits=frames, embedding=embedding)

    def forward(self, wave: Tensor | Sequence[Tensor], runners: Sequence[Runner] | None = None) -> TaggerOutput:
        return self.combine_outputs(self.member_outputs(wave, runners))

    def forward_features(self, wave: Tensor) -> TaggerOutput:
        """The front-end is the identity, so features are the waveform (for export, which calls this)."""
        return self.forward(wave)


def _frame_grid(members: Sequence[nn.Module]) -> tuple[bool, float]:
    """(frame_level, frame_seconds): frame outputs only when every member has them on the same time grid (else
    events come from windows)."""
    from tagger.models import has_frame_output
    from tagger.models.policy import frame_seconds

    steps = {round(frame_seconds(m), 9) for m in members} if all(has_frame_output(m) for m in members) else set()
    return len(steps) == 1, frame_seconds(members[0])
