"""A tiny, fast training configuration for the training tests."""

from __future__ import annotations

TINY_ARCH = "efficientat-mn01"  # 57 k parameters: a training step on 4 one-second clips takes ~50 ms on 2 cores


def tiny_overrides(*extra: str) -> list[str]:
    return ["data.clip_seconds=1", "data.batch_size=4", "data.num_workers=0", "run.epochs=2", "optim.lr=1e-3",
            *extra]


def tiny_config(*extra: str, arch: str = TINY_ARCH):
    from tagger.training.config import build_config

    return build_config(None, tiny_overrides(*extra), arch)
