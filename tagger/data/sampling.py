"""Class-balanced sampling: AST/PSLA and PaSST clip weights, weight files, and a resumable DDP sampler."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from tagger.errors import TaggerError

# Per-class weight = 1000 / (count + offset); a clip's weight is the sum over its positive classes, so a clip
# without labels gets 0 and is never drawn. AST/PSLA (gen_weight_file.py) use a tiny offset; PaSST and
# EfficientAT use +100, which flattens the boost for rare classes.
WEIGHT_OFFSETS = {"ast": 0.01, "passt": 100.0}


def class_counts(targets: np.ndarray) -> np.ndarray:
    """Positive clips per class (C,) of a (N, C) multi-hot matrix; soft labels count where they are > 0."""
    targets = np.asarray(targets)
    if targets.ndim != 2:
        raise ValueError(f"targets must be (N, C), got shape {targets.shape}")
    return (targets > 0).sum(axis=0).astype(np.int64)


def balanced_weights(targets: np.ndarray, formula: str = "ast") -> np.ndarray:
    """Sampling weight per clip (N,), float64, so rare classes are drawn about as often as common ones."""
    if formula not in WEIGHT_OFFSETS:
        raise TaggerError(f"unknown balancing formula {formula!r}; use one of {', '.join(WEIGHT_OFFSETS)}")
    positives = np.asarray(targets) > 0
    label_weight = 1000.0 / (class_counts(positives) + WEIGHT_OFFSETS[formula])
    return positives.astype(np.float64) @ label_weight


def balanced_weights_csr(labels, columns: np.ndarray, num_classes: int, formula: str = "ast") -> np.ndarray:
    """`balanced_weights` from CSR labels (a tagger.data.table.LabelColumn and its vocabulary -> class map),
    vectorised, so 2 M clips never become a dense (N, C) matrix."""
    if formula not in WEIGHT_OFFSETS:
        raise TaggerError(f"unknown balancing formula {formula!r}; use one of {', '.join(WEIGHT_OFFSETS)}")
    classes = np.asarray(columns)[np.asarray(labels.indices)]  # a LabelColumn lists each label once per clip
    rows = labels.row_ids()
    label_weight = 1000.0 / (np.bincount(classes, minlength=num_classes) + WEIGHT_OFFSETS[formula])
    return np.bincount(rows, weights=label_weight[classes], minlength=len(labels)).astype(np.float64)


def write_weights_csv(weights: np.ndarray, path: str | Path) -> None:
    """AST's `<name>_weight.csv`: one float per line, in manifest order (repr keeps every bit)."""
    from tagger.fileio import atomic_write_text

    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    atomic_write_text(path, "".join(f"{float(w)!r}\n" for w in weights))


def read_weights_csv(path: str | Path) -> np.ndarray:
    """Read a weight file (ours or AST's `%.18e` ones), checking every value is a usable weight."""
    path = Path(path)
    if not path.is_file():
        raise TaggerError(f"weight file {path} does not exist; create it with the balanced-weights step")
    values = []
    for line, text in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        text = text.strip().rstrip(",")
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            raise TaggerError(
                f"{path} line {line}: {text[:40]!r} is not a number; one weight per line"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise TaggerError(f"{path} line {line}: weight {value} must be finite and non-negative")
        values.append(value)
    if not values:
        raise TaggerError(f"{path} is empty; it needs one weight per clip of the manifest")
    return np.asarray(values, dtype=np.float64)


def _epoch_seed(seed: int, epoch: int) -> int:
    """Mix (seed, epoch) so neighbouring seeds and epochs give unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


class _ResumableSampler(torch.utils.data.Sampler[int]):
    """What every sampler here shares: `num_samples` split between `world_size` ranks, an epoch, and the position
    this rank has handed out, so a resumed run skips exactly what was trained. Subclasses give `local_indices`."""

    epoch: int
    _position: int
    num_samples: int
    world_size: int

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch's draw; the same epoch again keeps a restored position (resume calls this too)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._position = 0

    def local_indices(self):
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        local = list(self.local_indices())
        for position in range(self._position, len(local)):
            self._position = position + 1
            yield local[position]
        self._position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self._position}

    def load_state_dict(self, state: dict) -> None:
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise TaggerError(f"sampler position {position} is outside this epoch's {len(self)} indices")
        self.epoch = int(state["epoch"])
        self._position = position


class WeightedSampler(_ResumableSampler):
    """Weighted random sampling that splits one global draw between DDP ranks and can resume mid-epoch.

    Every rank draws the same global list from a generator seeded by (seed, epoch), pads it to a multiple of
    world_size by repeating its start (as DistributedSampler does), and keeps every world_size-th entry from
    its rank on. `state_dict` records the epoch and how many indices this rank has handed out, so a resumed
    run skips exactly those. Note that a DataLoader prefetches, so a trainer that knows how many batches were
    trained may prefer to store `batches * batch_size` as the position itself.
    """

    def __init__(
        self,
        weights,
        num_samples: int,
        replacement: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.weights = self._checked_weights(weights)
        if num_samples < 1:
            raise TaggerError(f"num_samples {num_samples} must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise TaggerError(f"rank {rank} must be in [0, world_size) with world_size {world_size} >= 1")
        nonzero = int((self.weights > 0).sum())
        if not replacement and num_samples > nonzero:
            raise TaggerError(
                f"cannot draw {num_samples} clips without replacement from the {nonzero} of nonzero weight; "
                "lower the epoch length or sample with replacement"
            )
        self.num_samples = int(num_samples)
        self.replacement = replacement
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._position = 0

    @staticmethod
    def _checked_weights(weights) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if tensor.ndim != 1 or tensor.numel() == 0:
            raise TaggerError(
                f"sampling weights must be a non-empty list of numbers, got shape {tuple(tensor.shape)}"
            )
        if not torch.isfinite(tensor).all() or (tensor < 0).any():
            raise TaggerError("sampling weights must be finite and non-negative; check the weight file")
        if not (tensor > 0).any():
            raise TaggerError(
                "all sampling weights are zero (no clip has a label?); check the manifest and labels"
            )
        return tensor

    def global_indices(self) -> torch.Tensor:
        """This epoch's draw for all ranks together, padded to a multiple of world_size."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        drawn = torch.multinomial(self.weights, self.num_samples, self.replacement, generator=generator)
        total = len(self) * self.world_size
        return drawn.repeat(math.ceil(total / self.num_samples))[:total]

    def local_indices(self) -> list[int]:
        """Every world_size-th index of the global draw, from this rank on."""
        return self.global_indices()[self.rank :: self.world_size].tolist()


class BatchShareSampler(_ResumableSampler):
    """Batches that take a fixed share of their clips from one pool and the rest from another, as the DCASE
    baselines compose theirs from strongly and weakly labelled sets.

    Each pool is shuffled once per epoch (seeded by seed and epoch) and read in order, starting over when a pool
    runs out. Position p of rank r lies in that rank's batch p // batch, global batch (p // batch) * world_size + r,
    so what any position draws is fixed: ranks never share a clip within a pass over a pool, and a resumed run
    skips exactly the positions it trained, as with WeightedSampler.
    """

    def __init__(self, first, second, batch: int, share: float, num_samples: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.pools = [np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)]
        if not len(self.pools[0]) or not len(self.pools[1]):
            raise TaggerError("a batch share needs clips in both pools (strongly and weakly labelled)")
        if not 0 < share < 1:
            raise TaggerError(f"the batch share {share} must lie strictly between 0 and 1")
        if batch < 2:
            raise TaggerError(f"a batch of {batch} clip cannot be shared between two pools; use 2 or more")
        if num_samples < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise TaggerError(f"num_samples {num_samples}, rank {rank} and world_size {world_size} are invalid")
        self.batch = int(batch)
        self.first_count = min(self.batch - 1, max(1, round(share * self.batch)))  # clips of pool 0 per batch
        self.num_samples, self.seed, self.rank, self.world_size = int(num_samples), int(seed), rank, world_size
        self.epoch = 0
        self._position = 0

    def local_indices(self) -> list[int]:
        """This rank's indices for the epoch, in order."""
        orders = [np.random.default_rng([_epoch_seed(self.seed, self.epoch), pool]).permutation(len(p))
                  for pool, p in enumerate(self.pools)]
        position = np.arange(len(self))
        slot = position % self.batch
        global_batch = (position // self.batch) * self.world_size + self.rank
        counts = (self.first_count, self.batch - self.first_count)
        out = np.empty(len(self), dtype=np.int64)
        for pool, in_pool in enumerate((slot < counts[0], slot >= counts[0])):
            rank_in_batch = slot[in_pool] - (0 if pool == 0 else counts[0])
            draw = (global_batch[in_pool] * counts[pool] + rank_in_batch) % len(self.pools[pool])
            out[in_pool] = self.pools[pool][orders[pool][draw]]
        return out.tolist()
