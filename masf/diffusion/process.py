"""The measurement-aware forward process in normalized space (method.md §2.2, §3).

For any operator H with normalized image H_n (see :class:`~masf.diffusion.normalizer.Normalizer`):

    x_t = a(t)·x_0 + (1 − a(t))·H_n(x_0) + sqrt(Σ(t)) ⊙ ε,     Σ(t) = σ_n² r(t)²   (σ_n per channel)

For a mask operator H(x) = m ⊙ x the normalized operator is affine, H_n(x) = k m ⊙ x + b with
k = scale_x/scale_z and b = (m ⊙ shift_x − shift_z)/scale_z, so x_t | x_0 ~ N(A(t) x_0 + B(t), Σ(t)):

    A(t) = a(t) + (1 − a(t)) k m,    B(t) = (1 − a(t)) b

and the Markov kernel s → t (s < t), all diagonal, is

    M(s,t) = A(t)/A(s),   U(s,t) = B(t) − M(s,t) B(s),   Σ(s,t) = Σ(t) − M(s,t)² Σ(s).

Σ(s,t) >= 0 for all s < t iff r(t)/A(t) is non-decreasing; :meth:`MeasurementAwareProcess.check_valid`
refuses operators/normalizations that break this (bug B3), instead of taking abs() as the reference does.

Time arguments are a Python float (coefficients then broadcast against one state, shape (*S) or the
per-channel shape) or a tensor of shape (N,) (coefficients broadcast against a batch (N, *S)).
"""

from __future__ import annotations

import torch

from masf.diffusion import schedule
from masf.diffusion.normalizer import Normalizer

Time = float | torch.Tensor


class MeasurementAwareProcess:
    """Measurement-aware forward process for ``operator`` in the space of ``normalizer``.

    Args:
        operator: a masf operator (duck-typed: ``noise_std``, ``linear``, ``mask``, ``state_shape``,
            ``__call__``). Linear means a mask operator (``mask`` a {0,1} tensor of the state shape).
        normalizer: a fitted :class:`Normalizer`; ``None`` means the identity (physical = normalized).
        T, tau: clamp of the schedule (defaults 0.992, 1e-5).

    Raises ``ValueError`` for a non-positive noise std, an unfitted normalizer, or (linear operators) an
    invalid kernel (see :meth:`check_valid`).
    """

    def __init__(
        self,
        operator,
        normalizer: Normalizer | None = None,
        T: float = schedule.T_DEFAULT,
        tau: float = schedule.TAU_DEFAULT,
        *,
        state_shape: tuple[int, ...] | None = None,
    ) -> None:
        schedule.check_times(T, tau)
        if not float(operator.noise_std) > 0.0:
            raise ValueError(
                f"operator.noise_std must be > 0 for the measurement-aware process; got {operator.noise_std!r}"
            )
        self.operator = operator
        self.normalizer = Normalizer.identity() if normalizer is None else normalizer
        if not self.normalizer.fitted:
            raise ValueError("normalizer is not fitted; call normalizer.fit(prior) first")
        self.T = float(T)
        self.tau = float(tau)
        op_shape = getattr(operator, "state_shape", None)
        if op_shape is None and state_shape is None:
            raise ValueError("state_shape is required when operator.state_shape is None")
        if op_shape is not None and state_shape is not None and tuple(op_shape) != tuple(state_shape):
            raise ValueError(
                f"state_shape {tuple(state_shape)} differs from operator.state_shape {tuple(op_shape)}"
            )
        self.state_shape = tuple(op_shape if op_shape is not None else state_shape)
        mask = getattr(operator, "mask", None)
        self.linear = bool(operator.linear) and mask is not None
        if self.linear:
            mask = torch.as_tensor(mask)
            if tuple(mask.shape) != self.state_shape:
                raise ValueError(
                    f"operator.mask has shape {tuple(mask.shape)}, expected the state shape {self.state_shape}"
                )
            m = mask.to(torch.float64)
            nz = self.normalizer
            k = nz.channel(nz.x_scale, m) / nz.channel(nz.z_scale, m)
            self._km = (k * m).expand(self.state_shape).clone()
            self._b = (
                ((m * nz.channel(nz.x_shift, m) - nz.channel(nz.z_shift, m)) / nz.channel(nz.z_scale, m))
                .expand(self.state_shape)
                .clone()
            )
            self.mask = m
            self.check_valid()
        else:
            self.mask = None

    def to(self, device: str | torch.device) -> MeasurementAwareProcess:
        """Move the stored coefficient tensors (float64, state shape) to ``device``; returns ``self``."""
        if self.linear:
            self._km = self._km.to(device)
            self._b = self._b.to(device)
            self.mask = self.mask.to(device)
        return self

    # ------------------------------------------------------------------------------------------ helpers
    def _t(self, t: Time) -> Time:
        """Tensor (N,) -> (N, 1, ..., 1) to broadcast against (N, *S); floats unchanged."""
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            if t.ndim != 1:
                raise ValueError(f"time tensor must have shape (N,); got {tuple(t.shape)}")
            return t.reshape(-1, *([1] * len(self.state_shape)))
        return float(t) if isinstance(t, torch.Tensor) else t

    def _like(self, t: Time) -> torch.Tensor:
        return t if isinstance(t, torch.Tensor) else self._km_or_scale()

    def _km_or_scale(self) -> torch.Tensor:
        return self._km if self.linear else self.normalizer.z_scale

    def _need_linear(self, what: str) -> None:
        if not self.linear:
            raise ValueError(
                f"{what} is defined only for mask (linear) operators; got operator "
                f"{getattr(self.operator, 'name', type(self.operator).__name__)!r}"
            )

    def a(self, t: Time) -> Time:
        """Scalar schedule a(t) (clamped to [tau, T]); a tensor (N,) gives (N, 1, ..., 1)."""
        return schedule.a(self._t(t), T=self.T, tau=self.tau)

    def sigma_n(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized noise std σ_n per channel, broadcastable to the state shape."""
        return self.normalizer.noise_std_normalized(float(self.operator.noise_std), like)

    def H_n(self, x_n: torch.Tensor) -> torch.Tensor:
        """Normalized operator H_n(x_n) = norm_z(H(denorm_x(x_n))), shape of ``x_n``, differentiable."""
        return self.normalizer.apply_operator(self.operator, x_n)

    # ----------------------------------------------------------------------------------- coefficients
    def A(self, t: Time) -> torch.Tensor:
        """A(t) = a(t) + (1 − a(t)) k m: shape S for a float t, (N, *S) for t of shape (N,)."""
        self._need_linear("A(t)")
        at = self.a(t)
        km = self._km.to(self._like(t))
        return at + (1.0 - at) * km

    def B(self, t: Time) -> torch.Tensor:
        """B(t) = (1 − a(t)) b: shape S for a float t, (N, *S) for t of shape (N,)."""
        self._need_linear("B(t)")
        at = self.a(t)
        return (1.0 - at) * self._b.to(self._like(t))

    def Sigma(self, t: Time) -> torch.Tensor:
        """Σ(t) = σ_n² r(t)², per channel (broadcastable to S; (N, C, 1, ...) for t of shape (N,))."""
        tt = self._t(t)
        rt = schedule.r(tt, T=self.T, tau=self.tau)
        return self.sigma_n(self._like(t)) ** 2 * rt**2

    def M(self, s: Time, t: Time) -> torch.Tensor:
        """Kernel gain M(s,t) = A(t)/A(s) (s < t forward)."""
        return self.A(t) / self.A(s)

    def U(self, s: Time, t: Time) -> torch.Tensor:
        """Kernel offset U(s,t) = B(t) − M(s,t) B(s)."""
        return self.B(t) - self.M(s, t) * self.B(s)

    def Sigma_st(self, s: Time, t: Time) -> torch.Tensor:
        """Kernel variance Σ(s,t) = Σ(t) − M(s,t)² Σ(s) (>= 0 for s <= t on a valid process)."""
        return self.Sigma(t) - self.M(s, t) ** 2 * self.Sigma(s)

    # -------------------------------------------------------------------------------------- sampling
    def forward(self, x0: torch.Tensor, t: Time, *, generator: torch.Generator | None) -> torch.Tensor:
        """Draw x_t = a x0 + (1 − a) H_n(x0) + sqrt(Σ(t)) ε for a batch x0 (N, *S); any operator.

        ``t`` is a float or a tensor (N,). Returns (N, *S) in the dtype/device of ``x0``.
        """
        if tuple(x0.shape[1:]) != self.state_shape:
            raise ValueError(f"x0 must have shape (N, *{self.state_shape}); got {tuple(x0.shape)}")
        if isinstance(t, torch.Tensor):
            t = t.to(dtype=x0.dtype, device=x0.device)
        at = self.a(t)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        var = self.Sigma(t).to(x0)
        return at * x0 + (1.0 - at) * self.H_n(x0) + torch.sqrt(var) * noise

    def likelihood_score(
        self, z: torch.Tensor, x: torch.Tensor, s: Time, *, eps: float = 0.0
    ) -> torch.Tensor:
        """Exact ∇_x log N(z; M(s,T) x + U(s,T), Σ(s,T)) for a mask operator (method.md §3.3).

            ℓ = M(s,T) ⊙ (z − M(s,T) x − U(s,T)) / (Σ(s,T) + eps)

        ``z`` (*S) or (N, *S), ``x`` (N, *S); singular at s = T (Σ(T,T) = 0) unless eps > 0.
        """
        T = self.T
        if isinstance(s, torch.Tensor):
            s = s.to(dtype=x.dtype, device=x.device)
            T = torch.full_like(s, self.T) if s.ndim > 0 else self.T
        m1 = self.M(s, T).to(x)
        u1 = self.U(s, T).to(x)
        v1 = self.Sigma_st(s, T).to(x)
        return m1 * (z - m1 * x - u1) / (v1 + eps)

    # -------------------------------------------------------------------------------------- validity
    def check_valid(self, n_grid: int = 4001) -> None:
        """Raise ``ValueError`` unless r(t)/A(t) is non-decreasing on [tau, T] for every entry.

        This is equivalent to Σ(s,t) >= 0 for all s < t (method.md §3.2). It fails for gains k > 1, e.g.
        k = 20 (sparse masks with separate z statistics, bug B3) on t ∈ [0.20, 0.99].
        """
        if not self.linear:
            return
        gains = torch.unique(self._km.reshape(-1).to(torch.float64))
        t = torch.linspace(self.tau, self.T, n_grid, dtype=torch.float64)
        at = schedule.a(t, T=self.T, tau=self.tau)
        rt = schedule.r(t, T=self.T, tau=self.tau)
        ratio = rt[None, :] / (at[None, :] + (1.0 - at[None, :]) * gains[:, None])  # (G, n_grid)
        drop = ratio[:, 1:] < ratio[:, :-1] * (1.0 - 1e-12)
        bad = drop.any(dim=1)
        if bool(bad.any()):
            g = int(torch.nonzero(bad)[0, 0])
            where = t[1:][drop[g]]
            raise ValueError(
                "invalid measurement-aware process: r(t)/A(t) decreases for gain k*m = "
                f"{gains[g].item():.4g} on t in [{where.min().item():.2f}, {where.max().item():.2f}], so the "
                "kernel variance Sigma(s,t) = Sigma(t) - M(s,t)^2 Sigma(s) < 0 there (bug B3). Use the same "
                "normalization for states and measurements (k = 1, Normalizer(same=True))."
            )
