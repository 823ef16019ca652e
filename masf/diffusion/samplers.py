"""Posterior samplers of the measurement-aware process, and the exact Gaussian denoiser.

One entry point, :func:`sample`, with three samplers (method.md §5.3, §5.4, §12.1). Everything lives in
normalized space: ``z`` is the normalized measurement (shape S), ``prior`` the normalized forecast
ensemble (N, *S), and ``denoiser(x_t, t)`` (t of shape (N,)) estimates E[x0 | x_t] (or returns the pair
(E[x0 | x_t], E[H_n(x0) | x_t]) for the dual-head nonlinear case).

``"reference"`` (linear operators; faithful to the paper's code, with B1 fixed). Grid
s_j = T·((1 − j/nfe)²(T − tau) + tau) (bug B7), start x = A(T) x0 + B(T) + sqrt(Σ(T)) ε from the prior
particles, then for s = s_j > t = s_{j+1}, with M_e(s,t) = A(t)/(A(s) + eps) as in the reference:

    ŝ = −(x − A(s) x̂ − B(s)) / (Σ(s) + eps)                       (B(s) dropped if include_B=False)
    ℓ = M_e(s,T) (z − M_e(s,T) x − U_e(s,T)) / (Σ_e(s,T) + eps)
    V = M_e(s,t)² Σ(s) − Σ(t)   (>= 0; the reference takes |Σ(t) − M² Σ(s)|)
    x ← M_e(s,t) x + U_e(s,t) + V (w_s(s) ŝ + w_g(s) ℓ) + sqrt(V) ξ

with w_s(s) = lo + (hi − lo) s^p and w_g(s) = lo + (hi − lo)(1 − s)^p. Returns the last iterate. With unit
weights and an exact prior this is ≈ 3× under-dispersed on observed entries (method.md §12.1, bug B0).

``"bridge"`` (linear operators; docs/bridge-sampler.md). Plain grid, start at z on observed entries and at
the forward-noised prior particle elsewhere, then unconditional ancestral steps s → t:

    M' = A(s)/A(t),  U' = B(s) − M' B(t),  S' = Σ(s) − M'² Σ(t),  V = (1/Σ(t) + M'²/S')⁻¹
    x ← V [ (A(t) x̃0 + B(t))/Σ(t) + M' (x − U')/S' ] + sqrt(V) ξ

and returns x̃0 of the last (nfe-th) step. x̃0 stands for a draw of x0 given x_s. With ``prior_draws``
(a function ``(n, generator) -> (n, *S)`` drawing from the prior the denoiser was fitted to) it is
Matheron's rule,

    x̃0 = D(x_s, s) + x0* − D(x_s*, s),   x0* ~ prior,   x_s* = A(s) x0* + B(s) + sqrt(Σ(s)) ε*,

exact for a Gaussian prior at every nfe (nfe = 1 included), at the cost of a second denoiser batch per
step. Without it x̃0 = D(x_s, s), the plug-in mean, which leaves out Var[x0 | x_s] and is
under-dispersed at small nfe (variance ratio 0.2–0.6 at nfe 10 on the Kalman test).

``"nonlinear"`` (any operator; method.md §4, §5.4). Grid and start as ``reference``; with scalar a(t):

    ŝ = −(x − [a_s x̂ + (1 − a_s) ĥ]) / (Σ_s + eps)
    ℓ = ∇_x −½ Σ (z − x − (a_end − a_e)(x̂_e(x) − ĥ_e(x)))² / (Σ_end − Σ_e + eps)     (autograd)
    x ← x + (a_t − a_s)(x̂ − ĥ) + (Σ_s − Σ_t)(w_s ŝ + w_g ℓ) + sqrt(Σ_s − Σ_t) ξ

``eval_time="next"`` (reference, bug B8): e = t, a_end = 0, Σ_end = Σ at 0.992; ``"current"``: e = s,
a_end = a(T), Σ_end = Σ(T). A single-output denoiser is accepted for linear operators (ĥ = H_n(x̂)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from masf.diffusion import schedule
from masf.diffusion.process import MeasurementAwareProcess

SAMPLERS = ("reference", "bridge", "nonlinear")
EVAL_TIMES = ("next", "current")
_REFERENCE_T1 = 0.992  # endpoint time hard-coded in the reference nonlinear sampler

DEFAULTS: dict[str, dict[str, object]] = {
    "reference": {
        "score_weights": (0.95, 1.6, 1.5),
        "guidance_weights": (1.1, 1.5, 2.0),
        "include_B": True,
        "eps": 1e-5,
    },
    "bridge": {"prior_draws": None},
    "nonlinear": {
        "score_weights": (0.95, 1.5, 1.0),
        "guidance_weights": (1.1, 1.5, 2.0),
        "eval_time": "next",
        "eps": 1e-5,
    },
}
"""Options of each sampler and their defaults (the paper's values)."""

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


# ------------------------------------------------------------------------------------------ weights
def score_weight(s: float, weights: tuple[float, float, float]) -> float:
    """w_s(s) = lo + (hi − lo)·clip(s, 0, 1)^p (emphasises the prior at large s)."""
    lo, hi, p = weights
    return lo + (hi - lo) * min(max(s, 0.0), 1.0) ** p


def guidance_weight(s: float, weights: tuple[float, float, float]) -> float:
    """w_g(s) = lo + (hi − lo)·(1 − clip(s, 0, 1))^p (emphasises the likelihood near s → 0)."""
    lo, hi, p = weights
    return lo + (hi - lo) * (1.0 - min(max(s, 0.0), 1.0)) ** p


# ------------------------------------------------------------------------------------------- scores
def prior_score(
    process: MeasurementAwareProcess,
    x: torch.Tensor,
    x0_hat: torch.Tensor,
    t: float | torch.Tensor,
    *,
    eps: float = 0.0,
    include_B: bool = True,
) -> torch.Tensor:
    """Tweedie prior score of a mask operator: −(x − A(t) x̂ − B(t)) / (Σ(t) + eps), shape of ``x``.

    Exact, ∇ log p_t(x), when x̂ = E[x0 | x_t = x]. ``include_B=False`` reproduces bug B1.
    """
    mean = process.A(t).to(x) * x0_hat
    if include_B:
        mean = mean + process.B(t).to(x)
    return -(x - mean) / (process.Sigma(t).to(x) + eps)


def _dual(denoiser: Denoiser, process: MeasurementAwareProcess, x: torch.Tensor, t: torch.Tensor):
    out = denoiser(x, t)
    if isinstance(out, tuple):
        return out
    if process.linear:
        return out, process.H_n(out)
    raise ValueError(
        "the nonlinear sampler needs a dual-head denoiser returning (x0_hat, h_hat) for a nonlinear operator; "
        "got a single tensor"
    )


def endpoint_likelihood_score(
    denoiser: Denoiser,
    process: MeasurementAwareProcess,
    z: torch.Tensor,
    x: torch.Tensor,
    t: float,
    *,
    a_end: float,
    sigma_end: torch.Tensor,
    eps: float = 0.0,
) -> torch.Tensor:
    """Endpoint-Gaussian likelihood score at (x, t) by autograd through the denoiser (method.md §4).

        μ_end(x) = x + (a_end − a(t)) (x̂(x,t) − ĥ(x,t)),   ℓ = ∇_x −½ Σ (z − μ_end(x))² / (Σ_end − Σ(t) + eps)

    ``x`` (N, *S), ``z`` (*S); ``sigma_end`` is broadcastable to S. Returns (N, *S).
    """
    tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    var = sigma_end.to(x) - process.Sigma(float(t)).to(x) + eps
    at = float(schedule.a(float(t), T=process.T, tau=process.tau))
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        x0_hat, h_hat = _dual(denoiser, process, xg, tt)
        mu = xg + (a_end - at) * (x0_hat - h_hat)
        logp = -0.5 * ((z - mu) ** 2 / var).sum()
        (grad,) = torch.autograd.grad(logp, xg)
    return grad


# ---------------------------------------------------------------------------------- exact denoiser
class GaussianDenoiser:
    """Exact E[x0 | x_t] for x0 ~ N(mean, cov) under a linear (mask) process (method.md §11.7).

        E[x0 | x_t] = μ + P A(t) (A(t) P A(t) + diag Σ(t))⁻¹ (x_t − A(t) μ − B(t))

    ``mean`` has the state shape S, ``cov`` is (D, D) with D = prod(S), both in normalized space. Call with
    x_t (N, *S) and t (N,); batched (one D×D solve when all t are equal, N solves otherwise). With
    ``dual_head=True`` it returns (x̂, H_n(x̂)), exact because H_n is affine.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        cov: torch.Tensor,
        process: MeasurementAwareProcess,
        *,
        dual_head: bool = False,
    ) -> None:
        if not process.linear:
            raise ValueError("GaussianDenoiser needs a linear (mask) operator in the process")
        shape = process.state_shape
        d = math.prod(shape)
        if tuple(mean.shape) != shape:
            raise ValueError(f"mean must have the state shape {shape}; got {tuple(mean.shape)}")
        if tuple(cov.shape) != (d, d):
            raise ValueError(f"cov must have shape {(d, d)}; got {tuple(cov.shape)}")
        self.mean = mean
        self.cov = cov
        self.process = process
        self.dual_head = bool(dual_head)
        self._root: torch.Tensor | None = None

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws from the prior N(mean, cov), shape (n, *S): the bridge's ``prior_draws``.

        Uses a symmetric square root of ``cov`` (eigenvalues clipped at 0), so a singular covariance such
        as an ensemble's (rank N − 1) is fine.
        """
        if self._root is None:
            vals, vecs = torch.linalg.eigh(self.cov.to(torch.float64))
            self._root = (vecs * vals.clamp_min(0.0).sqrt()) @ vecs.T
        d = self.cov.shape[0]
        dev = self.mean.device if generator is None else generator.device
        eps = torch.randn((n, d), generator=generator, dtype=torch.float64, device=dev).to(self._root.device)
        out = self.mean.reshape(d).to(torch.float64) + eps @ self._root
        return out.to(self.mean.dtype).reshape(n, *self.process.state_shape)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        n, d = x.shape[0], self.cov.shape[0]
        mu = self.mean.to(x).reshape(d)
        cov = self.cov.to(x)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(n)
        same = bool(t.min() == t.max())
        tt: float | torch.Tensor = float(t[0]) if same else t
        full = (n, *self.process.state_shape) if not same else self.process.state_shape
        A = self.process.A(tt).to(x).expand(full).reshape(-1, d)
        B = self.process.B(tt).to(x).expand(full).reshape(-1, d)
        var = self.process.Sigma(tt).to(x).expand(full).reshape(-1, d)
        resid = x.reshape(n, d) - A * mu - B  # (N, D)
        C = A[:, :, None] * cov * A[:, None, :] + torch.diag_embed(var)  # (1 or N, D, D)
        if same:
            sol = torch.linalg.solve(C[0], resid.T).T
        else:
            sol = torch.linalg.solve(C, resid.unsqueeze(-1)).squeeze(-1)
        x0_hat = (mu + (sol * A) @ cov).reshape(x.shape)
        if self.dual_head:
            return x0_hat, self.process.H_n(x0_hat)
        return x0_hat


# ------------------------------------------------------------------------------------------ samplers
def _check_weights(name: str, w) -> tuple[float, float, float]:
    try:
        lo, hi, p = (float(v) for v in w)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers (min, max, power); got {w!r}") from None
    if not all(math.isfinite(v) for v in (lo, hi, p)) or p < 0:
        raise ValueError(f"{name} must be finite with power >= 0; got {w!r}")
    return lo, hi, p


def _reference(denoiser, process, z, prior, nfe, generator, score_weights, guidance_weights, include_B, eps):
    ws_par = _check_weights("score_weights", score_weights)
    wg_par = _check_weights("guidance_weights", guidance_weights)
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0; got {eps!r}")
    grid = schedule.time_grid(nfe, T=process.T, tau=process.tau, times_T=True, dtype=torch.float64).tolist()
    T = process.T
    n = prior.shape[0]

    def kernel(s: float, t: float):
        m = process.A(t) / (process.A(s) + eps)
        return m, process.B(t) - m * process.B(s)

    # the reverse variance must be >= 0 on the whole grid (it is, unless eps is large against the steps)
    for s, t in itertools.pairwise(grid):
        m, _ = kernel(s, t)
        if bool(((m**2 * process.Sigma(s) - process.Sigma(t)) < 0).any()):
            raise ValueError(
                f"reference sampler: reverse variance M^2 Sigma(s) - Sigma(t) < 0 at s={s:.3g}, t={t:.3g} with "
                f"eps={eps}; use a smaller eps (e.g. 0) or a smaller nfe (got {nfe})"
            )
    x = process.forward(prior, T, generator=generator)
    for s, t in itertools.pairwise(grid):
        x0_hat = denoiser(x, torch.full((n,), s, dtype=x.dtype, device=x.device))
        score = prior_score(process, x, x0_hat, s, eps=eps, include_B=include_B)
        m1, u1 = kernel(s, T)
        v1 = process.Sigma(T) - m1**2 * process.Sigma(s)
        m1, u1, v1 = m1.to(x), u1.to(x), v1.to(x)
        lik = m1 * (z - m1 * x - u1) / (v1 + eps)
        mst, ust = kernel(s, t)
        var = (mst**2 * process.Sigma(s) - process.Sigma(t)).to(x)
        drift = score_weight(s, ws_par) * score + guidance_weight(s, wg_par) * lik
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = mst.to(x) * x + ust.to(x) + var * drift + torch.sqrt(var) * noise
    return x


def _bridge(denoiser, process, z, prior, nfe, generator, prior_draws):
    if prior_draws is not None and not callable(prior_draws):
        raise ValueError(
            f"prior_draws must be a function (n, generator) -> (n, *S) or None; got {prior_draws!r}"
        )
    grid = schedule.time_grid(nfe, T=process.T, tau=process.tau, dtype=torch.float64).tolist()
    m = process.mask.to(prior)
    x = m * z + (1.0 - m) * process.forward(prior, process.T, generator=generator)
    for j in range(nfe):
        s = grid[j]
        x0 = _x0_draw(denoiser, process, x, s, generator, prior_draws)
        if j == nfe - 1:
            return x0
        t = grid[j + 1]
        At, Bt, St = process.A(t), process.B(t), process.Sigma(t)
        mp = process.A(s) / At
        up = process.B(s) - mp * Bt
        sp = process.Sigma(s) - mp**2 * St
        v = 1.0 / (1.0 / St + mp**2 / sp)
        c_x0 = (v * At / St).to(x)
        c_x = (v * mp / sp).to(x)
        c_0 = (v * (Bt / St - mp * up / sp)).to(x)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = c_x0 * x0 + c_x * x + c_0 + torch.sqrt(v).to(x) * noise
    raise AssertionError("unreachable")  # pragma: no cover


def _x0_draw(denoiser, process, x, s: float, generator, prior_draws) -> torch.Tensor:
    """x̃0 given x_s = x (N, *S): D(x, s), plus x0* − D(x_s*, s) when ``prior_draws`` is given (one batch)."""
    n = x.shape[0]
    ts = torch.full((n,), s, dtype=x.dtype, device=x.device)
    if prior_draws is None:
        return denoiser(x, ts)
    x0_star = prior_draws(n, generator).to(x)
    if tuple(x0_star.shape) != tuple(x.shape):
        raise ValueError(f"prior_draws({n}) must return shape {tuple(x.shape)}; got {tuple(x0_star.shape)}")
    x_star = process.forward(x0_star, s, generator=generator)
    both = denoiser(torch.cat([x, x_star]), torch.cat([ts, ts]))
    return both[:n] + (x0_star - both[n:])


def _nonlinear(denoiser, process, z, prior, nfe, generator, score_weights, guidance_weights, eval_time, eps):
    ws_par = _check_weights("score_weights", score_weights)
    wg_par = _check_weights("guidance_weights", guidance_weights)
    if eval_time not in EVAL_TIMES:
        raise ValueError(f"eval_time must be one of {EVAL_TIMES}; got {eval_time!r}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0; got {eps!r}")
    grid = schedule.time_grid(nfe, T=process.T, tau=process.tau, times_T=True, dtype=torch.float64).tolist()
    n = prior.shape[0]
    sig2 = process.sigma_n() ** 2
    if eval_time == "next":
        a_end = 0.0
        sigma_end = sig2 * schedule.r(_REFERENCE_T1, T=1.0, tau=process.tau) ** 2
    else:
        a_end = float(schedule.a(process.T, T=process.T, tau=process.tau))
        sigma_end = process.Sigma(process.T)
    x = process.forward(prior, process.T, generator=generator)
    for s, t in itertools.pairwise(grid):
        x0_hat, h_hat = _dual(denoiser, process, x, torch.full((n,), s, dtype=x.dtype, device=x.device))
        a_s = float(schedule.a(s, T=process.T, tau=process.tau))
        a_t = float(schedule.a(t, T=process.T, tau=process.tau))
        sig_s, sig_t = process.Sigma(s).to(x), process.Sigma(t).to(x)
        score = -(x - (a_s * x0_hat + (1.0 - a_s) * h_hat)) / (sig_s + eps)
        te = t if eval_time == "next" else s
        lik = endpoint_likelihood_score(
            denoiser, process, z, x, te, a_end=a_end, sigma_end=sigma_end, eps=eps
        )
        drift = score_weight(s, ws_par) * score + guidance_weight(s, wg_par) * lik
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        dv = sig_s - sig_t
        x = x + (a_t - a_s) * (x0_hat - h_hat) + dv * drift + torch.sqrt(dv) * noise
    return x


def sample(
    denoiser: Denoiser,
    process: MeasurementAwareProcess,
    z: torch.Tensor,
    prior: torch.Tensor,
    *,
    sampler: str,
    nfe: int,
    generator: torch.Generator | None = None,
    **options,
) -> torch.Tensor:
    """Draw one posterior particle per prior member, in normalized space; returns (N, *S).

    Args:
        denoiser: ``denoiser(x_t (N,*S), t (N,))`` -> E[x0 | x_t], or (x̂, ĥ) for ``"nonlinear"``.
        process: the :class:`MeasurementAwareProcess` of the operator (moved to the prior's device).
        z: normalized measurement, shape S.
        prior: normalized forecast ensemble, shape (N, *S); sets dtype and device.
        sampler: ``"reference"``, ``"bridge"`` or ``"nonlinear"`` (see the module docstring).
        nfe: number of denoiser evaluations (time steps), >= 1.
        generator: random stream for the start and the step noise.
        options: per sampler, see ``DEFAULTS`` (``score_weights``, ``guidance_weights`` as (min, max,
            power), ``include_B``, ``eps``, ``eval_time``; the bridge's ``prior_draws``).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}; got {sampler!r}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1; got {nfe!r}")
    unknown = sorted(set(options) - set(DEFAULTS[sampler]))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for sampler {sampler!r}; allowed: {sorted(DEFAULTS[sampler]) or 'none'}"
        )
    shape = process.state_shape
    if tuple(z.shape) != shape:
        raise ValueError(f"z must have the operator's state shape {shape}; got {tuple(z.shape)}")
    if prior.ndim != len(shape) + 1 or tuple(prior.shape[1:]) != shape:
        raise ValueError(f"prior must have shape (N, *{shape}); got {tuple(prior.shape)}")
    if sampler in ("reference", "bridge") and not process.linear:
        raise ValueError(
            f"sampler {sampler!r} needs a linear (mask) operator; use sampler='nonlinear' for operator "
            f"{getattr(process.operator, 'name', type(process.operator).__name__)!r}"
        )
    opts = {**DEFAULTS[sampler], **options}
    process.to(prior.device)
    z = z.to(prior)
    with torch.no_grad():
        if sampler == "reference":
            return _reference(denoiser, process, z, prior, nfe, generator, **opts)
        if sampler == "bridge":
            return _bridge(denoiser, process, z, prior, nfe, generator, **opts)
        return _nonlinear(denoiser, process, z, prior, nfe, generator, **opts)
