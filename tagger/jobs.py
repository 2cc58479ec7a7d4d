"""What long batch jobs (extract-features, pack) share: a K/N share of the work, and `kill` handled as Ctrl-C.

Kept free of torch so that commands which need no model start fast.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from tagger.errors import TaggerError


def parse_part(text: str | None) -> tuple[int, int] | None:
    """'K/N' (1-based) as given to --shard, validated."""
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise TaggerError(f"--shard {text!r} must look like K/N, e.g. 3/8") from None
    if not 1 <= k <= n:
        raise TaggerError(f"--shard {text!r}: K must be between 1 and N")
    return k, n


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let `kill` take Ctrl-C's clean path: finished work is committed and worker processes are stopped."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
