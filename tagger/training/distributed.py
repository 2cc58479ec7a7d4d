"""torchrun / DDP plumbing: who am I, which device, which torchrun job, and agreeing on results across ranks."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tagger.errors import TaggerError


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device(preference: str, local_rank: int, world_size: int) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TaggerError(f"run.device={preference!r} but no CUDA device is available; use run.device=cpu")
        if world_size > 1:  # one GPU per process, chosen by torchrun's LOCAL_RANK
            return torch.device("cuda", local_rank)
        return torch.device(preference)
    if preference != "cpu":
        raise TaggerError(f"run.device={preference!r} must be auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def setup(device: str = "auto") -> Context:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    context = Context(rank, world_size, local_rank, _device(device, local_rank, world_size))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if context.device.type == "cuda" else "gloo"
        if context.device.type == "cuda":
            torch.cuda.set_device(context.device)
        dist.init_process_group(backend=backend)
        if context.is_main and _restarts_share_store():
            from tagger import console

            console.log("warning: torchrun may restart these workers and shares its rendezvous store with them, "
                        "where a restarted worker can find the failed one's address and never connect "
                        "(pytorch/pytorch#135712); export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun")
    return context


def _restarts_share_store() -> bool:
    """Whether torchrun (c10d rendezvous, --max-restarts > 0) hands the workers its own store: the keys of a failed
    attempt stay there, and the next attempt's process group can read them."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" \
        and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0


def cleanup(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather(obj: Any, context: Context) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-item list when not distributed)."""
    if not context.distributed:
        return [obj]
    out: list[Any] = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, context: Context) -> Any:
    """Rank 0's `obj` on every rank, so all ranks take the same decisions (early stopping, errors)."""
    if not context.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def job_id() -> str | None:
    """The torchrun job this process belongs to: its rendezvous id (`--rdzv-id`, random under `--standalone`),
    which elastic restarts keep, as does a requeued Slurm job that passes its job id. None outside torchrun
    and under the static rendezvous, whose id is always "none" and so tells jobs apart no better than nothing."""
    value = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return value if value and value != "none" else None


def decide(choose: Callable[[], Any], context: Context) -> Any:
    """Rank 0's `choose()` on every rank. Only rank 0 looks, before any rank acts, so a rank can never see a
    file that another rank has just written; a TaggerError raised on rank 0 is raised on every rank, where
    otherwise the others would wait for it forever."""
    outcome: tuple[str, Any] | None = None
    if context.is_main:
        try:
            outcome = ("ok", choose())
        except TaggerError as error:
            outcome = ("error", str(error))
    kind, value = broadcast(outcome, context)
    if kind == "error":
        cleanup(context)
        raise TaggerError(value)
    return value
