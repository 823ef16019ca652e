"""Two-dimensional Kolmogorov flow: a batched pseudo-spectral Navier-Stokes solver in PyTorch.

The PDE is the one of the reference's jax-cfd setup (anchors.md §2.1, method.md §8.1): on the periodic
square [0, 2π]², density 1,

    ∂u/∂t + (u·∇)u = −∇p + ν ∇²u − μ u + f,      ∇·u = 0,      f = (F sin(k_f y), 0),

with ν = 1/Re (Re = 1000), drag μ = 0.1, forcing amplitude F = 1 and wavenumber k_f = 4.

State and grid. The state is the velocity (u, v) shaped ``(N, 2, n, n)``; arrays are indexed
``[channel, y, x]`` (channel 0 = u, the x-velocity, channel 1 = v), on the collocated grid
``x_i = 2π i / n``, ``y_j = 2π j / n``. (jax-cfd uses a staggered MAC grid indexed ``[x, y]``; transpose
and shift by half a cell before comparing fields point by point.)

Method. Taking the curl gives the vorticity equation for ω = ∂v/∂x − ∂u/∂y,

    ∂ω/∂t = −u·∇ω − (ν |k|² + μ) ω − F k_f cos(k_f y),

solved in Fourier space (``torch.fft.rfft2``, integer wavenumbers k = (k_x, k_y)) on the 2/3-rule band
max(|k_x|, |k_y|) < n/3: the state is truncated to the band on input and the quadratic term is projected
onto it, so products are alias-free (Galerkin truncation); only the band's (2K+1)(K+1) modes,
K = (n−1)//3, are stored and transformed (about 4/9 of the rfft2 half-plane). The velocity comes from
the streamfunction, ψ̂ = ω̂ / |k|², û = i k_y ψ̂, v̂ = −i k_x ψ̂, so it is divergence-free by construction
(a Leray projection of the input: its divergent part is dropped, as jax-cfd's pressure projection
does). The spatial mean velocity U is not seen by ω; it obeys dU/dt = −μU and is carried exactly.
The advection term uses Basdevant's form u·∇ω = (∂x² − ∂y²)(uv) + ∂x∂y(v² − u²): four real FFTs per
evaluation.

Time integration: the Lawson (integrating-factor) form of the classical fourth-order Runge-Kutta method
on the deviation θ = ω − ω_L from the laminar state ω̂_L = −f̂_ω / L, with L(k) = −(ν|k|² + μ) < 0.
Viscosity, drag and the constant forcing are integrated exactly (no viscous stiffness limit at any n, and
the laminar flow u = F sin(k_f y) / (ν k_f² + μ) is a fixed point to round-off); only advection limits
the step. Like jax-cfd, the inner step comes from a fixed CFL bound, not from the current field, so the
number of inner steps per outer step Δt is a deterministic constant:

    h_max = courant · (2π / n) / max_velocity,      inner_steps = ceil(Δt / h_max),   h = Δt / inner_steps,

with max_velocity = 5 and courant = 0.8 (13 / 26 / 51 / 102 inner steps at n = 64 / 128 / 256 / 512).
Why this step (docs/kolmogorov.md): the fastest resolved advective rate is |k|·|u| ≤ √2 (n/3)·max_velocity,
so |λh| ≤ (2√2 π/3)·courant ≈ 2.96·courant; RK4 is stable on the imaginary axis up to |λh| = 2√2 ≈ 2.83
(a three-stage RK only up to √3), so courant 0.8 keeps |λh| ≤ 0.84 of the limit for any field with
speeds up to max_velocity. That is the margin jax-cfd's courant 0.5 gave our former RK3, at 52 instead of
63 advection evaluations per outer step at 64², with about the same one-step error. ``inner_steps``
overrides the count.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from masf import cuda_graphs
from masf.systems.base import check_state, check_steps

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


@dataclass(frozen=True)
class _Band:
    """The 2/3-rule band of an n×n grid, stored compactly, for one (n, device, dtype).

    With K = (n − 1)//3 the largest kept wavenumber (|k_x|, |k_y| ≤ K < n/3), spectral arrays hold
    ``(R, C) = (2K + 1, K + 1)`` modes: rows k_y = 0..K, −K..−1 (FFT order without the dropped middle),
    columns k_x = 0..K (the rfft half). Band-limited real fields are exactly represented, and the
    transforms below skip the columns and rows that are zero.
    """

    n: int
    kmax: int
    kx: Tensor  # (1, C) k_x
    ky: Tensor  # (R, 1) k_y
    k2: Tensor  # (R, C) |k|²
    to_uv: Tensor  # (2, R, C) complex: ω̂ -> (û, v̂) = (i k_y, −i k_x) ω̂ / |k|² (0 at k = 0)
    g_uv: Tensor  # (R, C) complex k_x² − k_y²: F(uv) -> its part of −F(u·∇ω)
    g_d: Tensor  # (R, C) complex k_x k_y: F(v² − u²) -> the other part

    def forward(self, x: Tensor) -> Tensor:
        """Real fields ``(..., n, n)`` -> their band of ``rfft2``, ``(..., R, C)`` complex."""
        half = torch.fft.rfft(x, dim=-1)[..., : self.kmax + 1]
        full = torch.fft.fft(half, dim=-2)
        return torch.cat((full[..., : self.kmax + 1, :], full[..., self.n - self.kmax :, :]), dim=-2)

    def inverse(self, xh: Tensor) -> Tensor:
        """Band spectra ``(..., R, C)`` -> real fields ``(..., n, n)`` (the inverse of ``forward``)."""
        k = self.kmax
        gap = xh.new_zeros((*xh.shape[:-2], self.n - 2 * k - 1, k + 1))
        rows = torch.fft.ifft(torch.cat((xh[..., : k + 1, :], gap, xh[..., k + 1 :, :]), dim=-2), dim=-2)
        return torch.fft.irfft(rows, n=self.n, dim=-1)


@functools.lru_cache(maxsize=32)
def _band(n: int, device: torch.device, dtype: torch.dtype) -> _Band:
    k = (n - 1) // 3
    ky = torch.cat((torch.arange(k + 1), torch.arange(-k, 0))).to(device=device, dtype=dtype)[:, None]
    kx = torch.arange(k + 1).to(device=device, dtype=dtype)[None, :]
    k2 = kx**2 + ky**2
    inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), torch.zeros_like(k2))
    complex_dtype = _COMPLEX[dtype]
    return _Band(
        n=n,
        kmax=k,
        kx=kx,
        ky=ky,
        k2=k2,
        to_uv=torch.stack((1j * ky * inv_k2, -1j * kx * inv_k2)),
        g_uv=(kx**2 - ky**2).to(complex_dtype),
        g_d=(kx * ky).to(complex_dtype),
    )


@functools.lru_cache(maxsize=32)
def _derivative_wavenumbers(n: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(k_x (1, n//2+1), k_y (n, 1)) of the rfft2 layout, with the Nyquist wavenumber set to 0."""
    idx = torch.arange(n, device=device)
    ky = torch.where(idx < n // 2, idx, idx - n)
    ky = torch.where(ky == -(n // 2), 0, ky)
    kx = torch.arange(n // 2 + 1, device=device)
    kx = torch.where(kx == n // 2, 0, kx)
    return kx.to(dtype)[None, :], ky.to(dtype)[:, None]


def _check_velocity(x: Tensor, who: str) -> int:
    """Validate a velocity batch ``(N, 2, n, n)`` with even n; return n."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 2 or x.shape[2] != x.shape[3] or x.shape[2] % 2 != 0 or x.shape[2] < 4:
        raise ValueError(f"{who}: x must be shaped (N, 2, n, n) with an even n >= 4, got {tuple(x.shape)}")
    if x.dtype not in _COMPLEX:
        raise ValueError(f"{who}: x must be float32 or float64, got {x.dtype}")
    return int(x.shape[-1])


def vorticity(x: Tensor) -> Tensor:
    """Vorticity ω = ∂v/∂x − ∂u/∂y of velocities ``x: (N, 2, n, n)`` indexed ``[channel, y, x]``.

    Returns ``(N, n, n)`` in physical units (1/time): spectral derivatives on the [0, 2π]² grid with
    spacing 2π/n (Nyquist modes dropped). Sign: counter-clockwise rotation is positive; for u = sin(y),
    v = 0 it gives ω = −cos(y). The reference plotting code (SDA/MASF) instead uses unscaled finite
    differences ``∂u/∂(last axis) − ∂v/∂(second-last axis)`` on ``[x, y]`` arrays, which is −ω·h with
    h = 2π/n: opposite sign and a factor h smaller (anchors.md §2.1).
    """
    n = _check_velocity(x, "vorticity")
    kx, ky = _derivative_wavenumbers(n, x.device, x.dtype)
    uh = torch.fft.rfft2(x)
    wh = 1j * (kx * uh[:, 1] - ky * uh[:, 0])
    return torch.fft.irfft2(wh, s=(n, n))


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"Kolmogorov: {name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class Kolmogorov:
    """Forced, damped 2-D Navier-Stokes on [0, 2π]² (the jax-cfd Kolmogorov setup), state (N, 2, n, n).

    Fields: ``n`` grid points per side (even, 32..512); ``reynolds`` (ν = 1/Re); ``forcing_amplitude`` F
    and ``forcing_wavenumber`` k_f of the body force F sin(k_f y) on u; ``drag`` μ ≥ 0 (force −μ u);
    ``dt`` the outer step Δt of one ``step``; ``max_velocity`` and ``courant`` fix the inner step from
    the CFL bound (see the module docstring) unless ``inner_steps`` is given; ``init_max_velocity`` and
    ``init_peak_wavenumber`` shape ``sample_initial``; ``spinup_steps`` is the default spin-up of
    ``sample_climatology`` (50 outer steps, t = 10, as in the paper); ``cuda_graphs`` replays each outer
    step of a CUDA state as one captured CUDA graph (``step``; no effect on CPU).
    """

    n: int = 64
    reynolds: float = 1000.0
    forcing_amplitude: float = 1.0
    forcing_wavenumber: int = 4
    drag: float = 0.1
    dt: float = 0.2
    max_velocity: float = 5.0
    courant: float = 0.8
    inner_steps: int | None = None
    init_max_velocity: float = 3.0
    init_peak_wavenumber: float = 4.0
    spinup_steps: int = 50
    cuda_graphs: bool = False
    name: str = field(default="kolmogorov", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n % 2 or not 32 <= self.n <= 512:
            raise ValueError(f"Kolmogorov: n must be an even integer in [32, 512], got {self.n!r}")
        for name in (
            "reynolds",
            "dt",
            "max_velocity",
            "courant",
            "init_max_velocity",
            "init_peak_wavenumber",
        ):
            _positive(name, getattr(self, name))
        if not (isinstance(self.forcing_amplitude, int | float) and math.isfinite(self.forcing_amplitude)):
            raise ValueError(f"Kolmogorov: forcing_amplitude must be finite, got {self.forcing_amplitude!r}")
        k_f = self.forcing_wavenumber
        if not isinstance(k_f, int) or isinstance(k_f, bool) or not 1 <= k_f < self.n / 3:
            raise ValueError(
                f"Kolmogorov: forcing_wavenumber must be an integer in [1, n/3) = [1, {self.n / 3:.1f}), "
                f"got {k_f!r}"
            )
        if not (isinstance(self.drag, int | float) and math.isfinite(self.drag) and self.drag >= 0):
            raise ValueError(f"Kolmogorov: drag must be a finite number >= 0, got {self.drag!r}")
        if self.inner_steps is not None and (
            not isinstance(self.inner_steps, int)
            or isinstance(self.inner_steps, bool)
            or self.inner_steps < 1
        ):
            raise ValueError(
                f"Kolmogorov: inner_steps must be None or an integer >= 1, got {self.inner_steps!r}"
            )
        if not isinstance(self.spinup_steps, int) or self.spinup_steps < 0:
            raise ValueError(f"Kolmogorov: spinup_steps must be an integer >= 0, got {self.spinup_steps!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"Kolmogorov: cuda_graphs must be True or False, got {self.cuda_graphs!r}")

    @property
    def state_shape(self) -> tuple[int, int, int]:
        return (2, self.n, self.n)

    @property
    def viscosity(self) -> float:
        return 1.0 / self.reynolds

    @property
    def steps_per_dt(self) -> int:
        """Inner steps per outer step: ``inner_steps`` or ceil(Δt / (courant · (2π/n) / max_velocity))."""
        if self.inner_steps is not None:
            return self.inner_steps
        h_max = self.courant * (2.0 * math.pi / self.n) / self.max_velocity
        return max(1, math.ceil(self.dt / h_max - 1e-9))

    def params(self) -> dict[str, float | int | str]:
        """Every field, so that ``make_system(**s.params()) == s`` (``inner_steps`` and ``cuda_graphs`` only when set)."""
        out: dict[str, float | int | str] = {"name": self.name, "n": self.n}
        for key in ("reynolds", "forcing_amplitude", "drag", "dt", "max_velocity", "courant"):
            out[key] = float(getattr(self, key))
        out["forcing_wavenumber"] = self.forcing_wavenumber
        if self.inner_steps is not None:
            out["inner_steps"] = self.inner_steps
        out["init_max_velocity"] = float(self.init_max_velocity)
        out["init_peak_wavenumber"] = float(self.init_peak_wavenumber)
        out["spinup_steps"] = self.spinup_steps
        if self.cuda_graphs:
            out["cuda_graphs"] = True
        return out

    # ----------------------------------------------------------------------------------------------
    # spectral pieces

    def _linear(self, band: _Band) -> Tensor:
        """L(k) = −(ν|k|² + μ), shape (R, C)."""
        return -(self.viscosity * band.k2 + self.drag)

    def _laminar_hat(self, band: _Band) -> Tensor:
        """ω̂_L = −f̂_ω / L for the curl of the forcing, f_ω = −F k_f cos(k_f y); (R, C) complex.

        rfft2 of cos(k_f y) on an n×n grid is n²/2 at (k_y = ±k_f, k_x = 0); k_y = −k_f is row R − k_f.
        """
        n, k_f = self.n, self.forcing_wavenumber
        w_hat = torch.zeros_like(band.g_uv)
        lin_f = -(self.viscosity * k_f**2 + self.drag)  # L at |k| = k_f, < 0 since ν > 0
        w_hat[k_f, 0] = w_hat[-k_f, 0] = self.forcing_amplitude * k_f * n * n / 2.0 / lin_f
        return w_hat

    def _to_spectral(self, x: Tensor, band: _Band) -> tuple[Tensor, Tensor]:
        """Velocity (N, 2, n, n) -> (ω̂ on the band (N, R, C), mean velocity U (N, 2, 1, 1))."""
        uh = band.forward(x)
        return 1j * (band.kx * uh[:, 1] - band.ky * uh[:, 0]), x.mean(dim=(-2, -1), keepdim=True)

    def _to_velocity(self, wh: Tensor, mean: Tensor, band: _Band) -> Tensor:
        """(ω̂, U) -> velocity (N, 2, n, n) through the streamfunction ψ̂ = ω̂/|k|²."""
        return band.inverse(wh[:, None] * band.to_uv) + mean

    def _advection(self, theta: Tensor, mean: Tensor | None, band: _Band, lam_uv: Tensor) -> Tensor:
        """N̂(θ) = −F(u·∇ω) on the band, for ω̂ = θ + ω̂_L; (N, R, C) -> (N, R, C).

        Basdevant's form u·∇ω = (∂x² − ∂y²)(uv) + ∂x∂y(v² − u²) (div-free u) needs four real FFTs
        (u, v back; uv, v² − u² forward) instead of five. ``lam_uv`` = ω̂_L · ``to_uv`` (2, R, C);
        ``mean`` is the mean velocity U (N, 2, 1, 1), or None when it is zero.
        """
        uv = band.inverse(torch.addcmul(lam_uv, theta[:, None], band.to_uv))
        if mean is not None:
            uv = uv + mean
        if uv.requires_grad:  # out= kernels record no autograd graph: the plain (slower) way
            u, v = uv[:, 0], uv[:, 1]
            prods = torch.stack((u * v, (v - u) * (v + u)), dim=1)
        else:
            prods = uv.square()  # (u², v²), then overwritten in place by (uv, v² − u²)
            torch.sub(prods[:, 1], prods[:, 0], out=prods[:, 1])
            torch.mul(uv[:, 0], uv[:, 1], out=prods[:, 0])
        ph = band.forward(prods)
        return torch.addcmul(ph[:, 0] * band.g_uv, ph[:, 1], band.g_d)

    # ----------------------------------------------------------------------------------------------
    # System interface

    def _advance(
        self, theta: Tensor, mean: Tensor | None, band: _Band, lam_uv: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """One outer step Δt: ``steps_per_dt`` inner steps of Lawson RK4 on (θ (N, R, C), U (N, 2, 1, 1)).

        Pure and free of host synchronisation (``masf.cuda_graphs`` can replay it); ``mean`` None means
        U = 0 and skips its additions.
        """
        inner = self.steps_per_dt
        h = self.dt / inner
        lin = self._linear(band).to(lam_uv.dtype)
        e1, e2 = torch.exp(lin * h), torch.exp(lin * (h / 2))  # exact factors e^{Lh}, e^{Lh/2}
        m1, m2 = math.exp(-self.drag * h), math.exp(-self.drag * h / 2)
        for _ in range(inner):
            # Lawson (integrating-factor) form of the classical RK4 for θ' = Lθ + N(θ) (docs/kolmogorov.md):
            #   a = N(θ),  b = N(E½ (θ + h/2 a)),  c = N(E½ θ + h/2 b),  d = N(E θ + h E½ c),
            #   θ ← E (θ + h/6 a) + h/3 E½ (b + c) + h/6 d,            E = e^{Lh}, E½ = e^{Lh/2}.
            u0, u2, u1 = (mean, mean * m2, mean * m1) if mean is not None else (None, None, None)
            a = self._advection(theta, u0, band, lam_uv)
            b = self._advection(e2 * torch.add(theta, a, alpha=h / 2), u2, band, lam_uv)
            c = self._advection(torch.add(e2 * theta, b, alpha=h / 2), u2, band, lam_uv)
            d = self._advection(torch.addcmul(e1 * theta, e2, c, value=h), u1, band, lam_uv)
            theta = torch.addcmul(e1 * torch.add(theta, a, alpha=h / 6), e2, b + c, value=h / 3)
            theta = theta.add_(d, alpha=h / 6)
            mean = u1
        return theta, mean

    def step(self, x: Tensor, n: int = 1, *, generator: torch.Generator | None = None) -> Tensor:
        """Advance ``x: (N, 2, n, n)`` by ``n`` outer steps of Δt = ``dt``.

        Deterministic (``generator`` is unused), float32 or float64 on x's device, differentiable with
        autograd when x requires grad. The output is divergence-free and band-limited (module docstring).
        With ``cuda_graphs`` and a CUDA ``x`` that needs no gradient, the outer steps are replays of one
        captured CUDA graph (``masf.cuda_graphs``; the same arithmetic, U carried even when zero).
        """
        check_state(x, self.state_shape, self.name)
        if x.dtype not in _COMPLEX:
            raise ValueError(f"{self.name}: x must be float32 or float64, got {x.dtype}")
        outer = check_steps(n)
        if outer == 0:
            return x.clone()
        band = _band(self.n, x.device, x.dtype)
        w_lam = self._laminar_hat(band)
        lam_uv = w_lam * band.to_uv
        wh, mean = self._to_spectral(x, band)
        theta = wh - w_lam
        if self.cuda_graphs and x.is_cuda and not x.requires_grad:
            theta, mean = cuda_graphs.iterate(
                lambda th, u: self._advance(th, u, band, lam_uv), (theta, mean), outer, key=self
            )
            return self._to_velocity(theta + w_lam, mean, band)
        carried: Tensor | None = mean if bool((mean != 0).any()) else None
        for _ in range(outer):
            theta, carried = self._advance(theta, carried, band, lam_uv)
        return self._to_velocity(theta + w_lam, mean if carried is None else carried, band)

    def sample_initial(
        self,
        n: int,
        *,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Tensor:
        """``n`` random divergence-free fields ``(n, 2, self.n, self.n)``, like jax-cfd's filtered_velocity_field.

        White noise per component, filtered in Fourier space by the amplitude
        g(k) = p(k)/k with p the unscaled log-normal density of mode k_p = ``init_peak_wavenumber`` and log
        variance 1/4 (jax-cfd's ``_log_normal_pdf``), projected onto divergence-free fields, then scaled per
        member so that the maximum speed max|u| equals ``init_max_velocity`` (3 by default).
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(
                f"Kolmogorov.sample_initial: n (the number of states) must be an int >= 0, got {n!r}"
            )
        count = n
        if dtype not in _COMPLEX:
            raise ValueError(f"Kolmogorov.sample_initial: dtype must be float32 or float64, got {dtype}")
        noise = torch.randn((count, *self.state_shape), generator=generator, dtype=dtype, device=device)
        band = _band(self.n, noise.device, dtype)
        k = torch.sqrt(band.k2).clamp_min(1e-12)
        var = 0.25
        mean_log = math.log(self.init_peak_wavenumber) + var
        gain = torch.exp(-((mean_log - torch.log(k)) ** 2) / (2 * var) - torch.log(k)) / k
        nh = band.forward(noise) * gain
        # Leray projection û ← û − k (k·û)/|k|² (divergence-free), via the vorticity and streamfunction.
        wh = 1j * (band.kx * nh[:, 1] - band.ky * nh[:, 0])
        zero_mean = torch.zeros(count, 2, 1, 1, dtype=dtype, device=noise.device)
        vel = self._to_velocity(wh, zero_mean, band)
        speed = torch.sqrt((vel**2).sum(dim=1)).amax(dim=(-2, -1))
        return vel * (self.init_max_velocity / speed)[:, None, None, None]

    def sample_climatology(
        self,
        n: int,
        *,
        generator: torch.Generator,
        spinup_steps: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Tensor:
        """Initial states advanced ``spinup_steps`` outer steps (default ``self.spinup_steps`` = 50, t = 10)."""
        steps = self.spinup_steps if spinup_steps is None else check_steps(spinup_steps)
        x0 = self.sample_initial(n, generator=generator, dtype=dtype, device=device)
        return self.step(x0, steps)
