"""Direct preference optimisation (DPO): the loss, its statistics and the reference log-probs.

For a pair (preferred y+, non-preferred y-) of outputs to one input x, with the policy π being
trained and a frozen reference π_ref (Rafailov et al., 2023; the sigmoid loss):

    r±   = β · (log π(y±|x) − log π_ref(y±|x))        the implicit rewards
    loss = −log σ(r+ − r−)

where log π(y|x) is the sum of the log-probabilities of the output's tokens (the assistant
messages of `preferred_output` / `non_preferred_output`, rendered by the chat template exactly
as supervised chat data is; engine.data). The results file reports the loss, the reward margin
r+ − r− and the preference accuracy (the share of pairs with a positive margin).

The reference is frozen, so its log-probabilities of the (fixed) training and validation
sequences are constants: they are computed once, before the first step, and kept with the
pairs (`Pair.reference`) and in every resume checkpoint (`REFERENCE_FILE`), rather than run
through a second model at every step. The reference is the model as training starts: for a
fresh LoRA run the base with the adapter disabled (peft's `disable_adapter()`: no second copy
of the weights); continuing a fine-tune (LoRA adapter or full weights, the usual SFT-then-DPO
recipe), that fine-tune; for full fine-tuning from a base, the base. No frozen copy of the
weights is kept in any case (docs/adr/0014-dpo.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.data import Pack, Pair
from engine.spec import DEFAULT_BETA

__all__ = ["DEFAULT_BETA", "DpoStats", "dpo_loss", "fill_reference", "pack_step"]

REFERENCE_FILE = "reference_logps.pt"

# Results-file columns of a DPO run, after step/elapsed_*: `*_loss` is the DPO loss.
METRICS = ("loss", "reward_margin", "preference_accuracy")


@dataclass
class DpoStats:
    """Sums over one step's (or one evaluation's) pairs."""

    loss: float = 0.0
    margin: float = 0.0
    correct: int = 0
    pairs: int = 0
    tokens: int = 0
    examples: int = 0  # pairs, as `elapsed_examples` counts them

    def add(self, losses: torch.Tensor, margins: torch.Tensor) -> None:
        self.loss += float(losses.detach().sum())
        self.margin += float(margins.detach().sum())
        self.correct += int((margins.detach() > 0).sum())
        self.pairs += int(margins.numel())

    def row(self, prefix: str) -> dict[str, float]:
        n = self.pairs
        return {
            f"{prefix}_loss": self.loss / n if n else math.nan,
            f"{prefix}_reward_margin": self.margin / n if n else math.nan,
            f"{prefix}_preference_accuracy": self.correct / n if n else math.nan,
        }


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and reward margins from [n, 2] summed log-probabilities (column 0
    the preferred output, 1 the non-preferred), policy and reference."""
    rewards = beta * (policy - reference)
    margins = rewards[:, 0] - rewards[:, 1]
    return -F.logsigmoid(margins), margins.detach()


def sequence_logps(
    logps: torch.Tensor, weights: torch.Tensor, owner: torch.Tensor, n_examples: int
) -> torch.Tensor:
    """Sum of the trained tokens' log-probabilities per example of a pack.

    `logps` are the log-probabilities of the pack's loss-bearing predictions (Pack.labels),
    `owner` which example each belongs to. Weights are 1 on output tokens (an assistant message
    with weight 0 adds nothing)."""
    out = torch.zeros(n_examples, dtype=logps.dtype, device=logps.device)
    return out.index_add(0, owner, logps * weights)


def pack_step(
    token_logps: Callable[[Pack], torch.Tensor],
    pack: Pack,
    pairs: Sequence[Pair],
    beta: float,
    n_pairs: int,
    stats: DpoStats,
) -> torch.Tensor | None:
    """One pack's share of the step's loss (the mean over the step's `n_pairs` pairs) and its
    statistics; `token_logps(pack)` is the policy's forward over the pack."""
    stats.tokens += pack.n_tokens
    stats.examples += len(pairs)
    if pack.labels.numel() == 0:
        return None
    logps = token_logps(pack)
    device = logps.device
    sums = sequence_logps(logps, pack.weights.to(device), pack.example.to(device), pack.n_examples)
    policy = sums[: 2 * len(pairs)].view(-1, 2)  # a trailing filler segment has no predictions
    reference = torch.tensor([p.reference for p in pairs], dtype=policy.dtype, device=device)
    losses, margins = dpo_loss(policy, reference, beta)
    stats.add(losses, margins)
    return losses.sum() / n_pairs


@torch.no_grad()
def fill_reference(
    pairs: Sequence[Pair],
    token_logps: Callable[[Pack], torch.Tensor],
    packs: Callable[[Sequence[Pair]], Any],
    reference_model: AbstractContextManager[Any] | None = None,
) -> None:
    """Set each pair's `reference` (its outputs' summed log-probabilities) under
    `reference_model`, a context that makes the model the reference (`disable_adapter()`)."""
    with reference_model or nullcontext():
        for pack, group in packs(pairs):
            if pack.labels.numel() == 0:
                sums = torch.zeros(pack.n_examples)
            else:
                logps = token_logps(pack)
                sums = sequence_logps(
                    logps.float(),
                    pack.weights.to(logps.device),
                    pack.example.to(logps.device),
                    pack.n_examples,
                ).cpu()
            for i, pair in enumerate(group):
                pair.reference = (float(sums[2 * i]), float(sums[2 * i + 1]))


def save_reference(path: Path, train: Sequence[Pair], validation: Sequence[Pair]) -> None:
    torch.save(
        {
            "train": torch.tensor([p.reference for p in train], dtype=torch.float64),
            "validation": torch.tensor([p.reference for p in validation], dtype=torch.float64),
        },
        path,
    )


def load_reference(path: Path, train: Sequence[Pair], validation: Sequence[Pair]) -> bool:
    """Restore the references saved by `save_reference`; False if the file is missing or was
    written for other pairs (then they are computed again)."""
    if not path.is_file():
        return False
    saved = torch.load(path)
    if len(saved["train"]) != len(train) or len(saved["validation"]) != len(validation):
        return False
    for pairs, values in ((train, saved["train"]), (validation, saved["validation"])):
        for pair, (a, b) in zip(pairs, values.tolist(), strict=True):
            pair.reference = (a, b)
    return True
