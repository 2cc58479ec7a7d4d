"""How member outputs become one output, in the space of logits so every consumer keeps reading logits.

mean-prob (AST, PSLA, HTS-AT) averages sigmoid (or softmax) probabilities; mean-logit (PaSST, EfficientAT)
averages logits. A mean probability is returned as the logit whose sigmoid (softmax) is exactly that mean,
computed from log-sigmoids with logsumexp: no probability is clamped, however confident the members are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from tagger.errors import TaggerError
from tagger.models.base import mean_probability_logits

COMBINES = ("mean-prob", "mean-logit")
LOGIT_FAMILIES = ("passt", "efficientat")  # their official ensembles average logits; the others probabilities


def default_combine(families: Sequence[str]) -> str:
    """The members' own convention: mean-logit when every member is PaSST/EfficientAT, else mean-prob."""
    return "mean-logit" if families and all(f in LOGIT_FAMILIES for f in families) else "mean-prob"


def check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Non-negative finite weights, one per member, not all zero, normalised to sum to 1 (uniform for None)."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise TaggerError(f"--weights gives {len(weights)} values for {count} members; give one per checkpoint")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise TaggerError(f"--weights {','.join(f'{w:g}' for w in weights)}: weights must be finite and >= 0, "
                          "not all 0")
    total = math.fsum(weights)
    return [w / total for w in weights]


def combine_logits(logits: Tensor, weights: Tensor, mode: str, task: str) -> Tensor:
    """(M, ..., C) member logits and (M,) weights summing to 1 -> (..., C) ensemble logits."""
    if mode not in COMBINES:
        raise TaggerError(f"combine {mode!r} is not one of {', '.join(COMBINES)}")
    logits = logits.float()
    shape = (-1,) + (1,) * (logits.ndim - 1)
    weights = weights.to(logits).reshape(shape)
    if mode == "mean-logit":
        return (weights * logits).sum(0)
    log_w = torch.log(weights)  # a zero weight gives -inf: that member drops out of the logsumexp
    if task == "multiclass":  # log of the mean softmax; its softmax is the mean because it sums to one
        return torch.logsumexp(log_w + torch.log_softmax(logits, dim=-1), dim=0)
    return mean_probability_logits(logits, 0, log_w)


def combine_numpy(logits: np.ndarray, weights: Sequence[float], mode: str, task: str) -> np.ndarray:
    """combine_logits for arrays (validation predictions), float32 out."""
    out = combine_logits(torch.from_numpy(np.asarray(logits, dtype=np.float32)),
                         torch.tensor(list(weights), dtype=torch.float32), mode, task)
    return out.numpy()


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """models.base.probabilities (what `Scorer` gives) for arrays."""
    from tagger.models.base import probabilities as of_tensor

    return of_tensor(torch.from_numpy(np.asarray(logits, dtype=np.float32)), task).numpy()


def learn_weights(logits: np.ndarray, targets: np.ndarray, task: str, steps: int = 300) -> list[float]:
    """Member weights minimising the validation loss of the mean-probability ensemble.

    logits (M, N, C), targets (N, C). Weights are softmax(theta), so they stay positive and sum to one; the
    loss is BCE (multilabel) or cross-entropy (multiclass) of the combined output, minimised with L-BFGS.
    """
    member_logits = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    target = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    theta = torch.zeros(member_logits.shape[0], requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn() -> Tensor:
        optimizer.zero_grad()
        out = combine_logits(member_logits, torch.softmax(theta, 0), "mean-prob", task)
        if task == "multiclass":
            loss = torch.nn.functional.cross_entropy(out, target.argmax(-1))
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
        loss.backward()
        return loss

    optimizer.step(loss_fn)
    return [float(w) for w in torch.softmax(theta.detach(), 0)]
