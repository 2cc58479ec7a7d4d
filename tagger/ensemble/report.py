"""What `tagger ensemble` did: each member's validation metric, the ensemble's, and the gain over the best member."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class MemberRow:
    source: str
    arch: str
    epoch: float | None
    selected: bool
    weight: float  # in the ensemble (0 when not selected)
    value: float | None = None  # its own validation metric


@dataclass
class Report:
    mode: str  # weights | predictions
    selection: str
    combine: str  # how members are combined: mean-prob, mean-logit, or "parameters" for weight averaging
    out: str
    members: list[MemberRow]
    metric: str | None = None  # None without --valid
    valid: str | None = None
    ensemble: float | None = None  # the ensemble's validation metric
    bn_clips: int | None = None  # clips used to re-estimate BatchNorm statistics

    @property
    def best_member(self) -> float | None:
        values = [m.value for m in self.members if m.value is not None and not math.isnan(m.value)]
        return max(values) if values else None

    @property
    def gain(self) -> float | None:
        best = self.best_member
        return None if best is None or self.ensemble is None else self.ensemble - best

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(best_member=self.best_member, gain=self.gain)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def rows(self) -> list[dict[str, Any]]:
        """One row per member, then the ensemble's, for a table or CSV."""
        metric = self.metric or "valid"
        rows = [{"member": m.source, "arch": m.arch, "epoch": "" if m.epoch is None else f"{m.epoch:g}",
                 "selected": "yes" if m.selected else "no", "weight": round(m.weight, 4),
                 metric: m.value} for m in self.members]
        gain = self.gain
        rows.append({"member": f"ensemble -> {self.out}", "arch": self.mode, "epoch": "", "selected": "",
                     "weight": round(sum(m.weight for m in self.members), 4), metric: self.ensemble,
                     "gain": None if gain is None else f"{gain:+.4f}"})
        return rows

    def title(self) -> str:
        parts = [f"{self.mode} ensemble", f"select {self.selection}", f"combine {self.combine}"]
        if self.metric:
            parts.append(f"{self.metric} on {self.valid}")
        if self.bn_clips:
            parts.append(f"BatchNorm re-estimated on {self.bn_clips} clips")
        return ", ".join(parts)
