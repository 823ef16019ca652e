"""Online fine-tuning of a pretrained network over the analysis cycles of one run (docs/finetuning.md).

At each analysis cycle the network is trained for a few optimizer steps on draws of the *training mixture*

    x0 ~ (1 − ρ) · (1/N) Σ_i N(x_i, h² diag(s²))  +  ρ · climatology bank        (normalized space)

with x_i the N forecast members, s their per-entry standard deviation, h = ``jitter`` (0: the members
themselves) and ρ = ``replay``. The same mixture is what the bridge sampler's pathwise x0 draws come from
(:meth:`OnlineTrainer.draws`), so the sampler's step variances match the distribution the network was
fitted to.

Why (measured in benchmarks/finetuning/): training on the N members alone makes the network memorize them,
turning the bridge into a bootstrap particle filter with N particles; replaying climatology keeps a broad
component in the prior, and the jitter smooths the members into a kernel density estimate. ``reset``
starts every cycle from the pretrained weights, so the weights cannot drift over hundreds of cycles.
``optimizer="persistent"`` keeps one AdamW (its moments and step count) for the whole run; ``"fresh"``
builds a new one every cycle, as the paper's code does, where Adam's bias correction makes each of the
first steps ≈ lr·sign(g) on every weight whatever the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from masf.train.loop import LossFn

OPTIMIZERS = ("persistent", "fresh")

Draws = Callable[[int, torch.Generator | None], Tensor]


def bank_draws(bank: Tensor) -> Draws:
    """``draws(n, generator)``: ``n`` rows of ``bank`` (M, *S) drawn uniformly with replacement."""
    if bank.ndim < 2 or len(bank) < 1:
        raise ValueError(f"bank must be a non-empty batch (M, *S); got shape {tuple(bank.shape)}")

    def draws(n: int, generator: torch.Generator | None) -> Tensor:
        dev = bank.device if generator is None else generator.device
        idx = torch.randint(0, len(bank), (n,), generator=generator, device=dev)
        return bank[idx.to(bank.device)]

    return draws


def mixture_draws(members: Tensor, bank: Tensor | None, *, replay: float, jitter: float) -> Draws:
    """Draws of the training mixture (module docstring): ``members`` (N, *S), ``bank`` (M, *S) or None.

    Each draw comes from the bank with probability ``replay`` (0 when ``bank`` is None), else it is a
    member chosen uniformly plus ``jitter`` times the members' per-entry std times N(0, 1) noise.
    """
    if members.ndim < 2 or len(members) < 1:
        raise ValueError(f"members must be a batch (N, *S); got shape {tuple(members.shape)}")
    if not 0.0 <= replay < 1.0:
        raise ValueError(f"replay must be in [0, 1); got {replay!r}")
    if not (math.isfinite(jitter) and jitter >= 0.0):
        raise ValueError(f"jitter must be a finite number >= 0; got {jitter!r}")
    if bank is not None and tuple(bank.shape[1:]) != tuple(members.shape[1:]):
        raise ValueError(
            f"bank states {tuple(bank.shape[1:])} differ from members {tuple(members.shape[1:])}"
        )
    rho = replay if bank is not None else 0.0
    scale = jitter * members.std(dim=0, correction=1) if len(members) > 1 and jitter > 0 else None
    pick_member = bank_draws(members)
    pick_bank = bank_draws(bank) if bank is not None and rho > 0 else None

    def draws(n: int, generator: torch.Generator | None) -> Tensor:
        x = pick_member(n, generator)
        if scale is not None:
            dev = x.device if generator is None else generator.device
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=dev).to(x.device)
            x = x + scale * eps
        if pick_bank is not None:
            dev = x.device if generator is None else generator.device
            use_bank = torch.rand((n,), generator=generator, device=dev).to(x.device) < rho
            x = torch.where(use_bank.reshape(-1, *([1] * (x.ndim - 1))), pick_bank(n, generator).to(x), x)
        return x

    return draws


class OnlineTrainer:
    """Fine-tunes ``net`` in place at every analysis cycle of a run (module docstring).

    Args:
        net: the pretrained network (its current weights are the ones ``reset`` returns to).
        lr, batch_size: AdamW learning rate and minibatch size.
        reset: start each cycle from the pretrained weights.
        replay: fraction ρ of the training mixture drawn from the climatology bank.
        jitter: h, the kernel width of the members in units of their per-entry std.
        optimizer: ``persistent`` (one AdamW per run) or ``fresh`` (one per cycle).
        weight_decay, betas, clip: AdamW and gradient-norm clipping, as in pretraining.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        lr: float,
        batch_size: int,
        reset: bool = True,
        replay: float = 0.0,
        jitter: float = 0.0,
        optimizer: str = "persistent",
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.99),
        clip: float | None = 1.0,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
        if not lr > 0 or isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"need lr > 0 and an integer batch_size >= 1; got lr={lr!r}, batch_size={batch_size!r}"
            )
        self.net = net
        self.lr, self.batch_size = float(lr), int(batch_size)
        self.reset, self.replay, self.jitter = bool(reset), float(replay), float(jitter)
        self.optimizer_mode = optimizer
        self.weight_decay, self.betas, self.clip = float(weight_decay), tuple(betas), clip
        self._pretrained = {k: v.detach().clone() for k, v in net.state_dict().items()} if reset else None
        self._optimizer: torch.optim.Optimizer | None = None
        self.cycles = 0
        self.last_loss = math.nan

    def draws(self, members: Tensor, bank: Tensor | None) -> Draws:
        """The training mixture of this cycle (see :func:`mixture_draws`)."""
        return mixture_draws(members, bank, replay=self.replay, jitter=self.jitter)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.net.parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay
        )

    def fit_cycle(
        self, members: Tensor, bank: Tensor | None, loss_fn: LossFn, steps: int, generator: torch.Generator
    ) -> float:
        """Reset (if configured), then ``steps`` AdamW steps on the training mixture; returns the mean loss.

        ``members`` (N, *S) and ``bank`` are normalized states on the network's device. The loss is read
        back once, at the end of the cycle (no host synchronisation per step); a non-finite mean loss
        raises ``FloatingPointError``.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0; got {steps!r}")
        if self._pretrained is not None:
            self.net.load_state_dict(self._pretrained)
        if self._optimizer is None or self.optimizer_mode == "fresh":
            self._optimizer = self._make_optimizer()
        opt = self._optimizer
        draws = self.draws(members, bank)
        params = [p for p in self.net.parameters() if p.requires_grad]
        total = torch.zeros((), device=members.device)
        self.net.train()
        for _ in range(steps):
            loss = loss_fn(self.net, draws(self.batch_size, generator), generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip is not None:
                torch.nn.utils.clip_grad_norm_(params, self.clip)
            opt.step()
            total = total + loss.detach()
        self.net.eval()
        self.cycles += 1
        self.last_loss = float(total / steps) if steps else math.nan
        if steps and not math.isfinite(self.last_loss):
            raise FloatingPointError(f"non-finite fine-tuning loss {self.last_loss} in cycle {self.cycles}")
        return self.last_loss
