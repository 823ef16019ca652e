"""What every filter shares: the per-run analysis context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


class DegenerateEnsembleError(ValueError):
    """The ensemble cannot be analysed (e.g. all members identical); the cycle loop records ``diverged``."""


@dataclass
class Context:
    """Mutable per-run state handed to ``Filter.analyse`` at every analysis.

    Attributes:
        generator: the run's ``sampling`` random stream (perturbed observations, sampler noise).
        cycle: 0-based index of the current analysis.
        timings: seconds spent per stage; filters add to ``"finetune"`` and ``"sampling"``.
        state: private state a filter keeps between analyses (e.g. its fine-tuned network).
        pretrained: path of a pretrained checkpoint for score-based filters, else ``None``.
        train_generator: the run's ``train`` random stream (fine-tuning minibatches and noise).
        climatology: climatology states (M, *S) in physical units, or ``None``: the prior a pretrained
            network was fitted to (its pathwise draws and fine-tuning replay) and the draws of the
            ``climatology`` reference method.
    """

    generator: torch.Generator
    cycle: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    train_generator: torch.Generator | None = None
    climatology: torch.Tensor | None = None

    def add_time(self, stage: str, seconds: float) -> None:
        """Accumulate wall-clock seconds under ``stage``."""
        self.timings[stage] = self.timings.get(stage, 0.0) + float(seconds)
