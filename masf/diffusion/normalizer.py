"""Per-channel normalization of states and measurements (method.md §2.3).

Statistics come from a set of states ``X`` of shape (N, *S): for 2-D states (N, C, ...) the channel is
dim 1 and the mean u and std s (clamped >= 1e-5) reduce over every other dim; for 1-D states (N, D) there
is a single channel. Everything is stored as one *shift* and one *scale* per channel, eps included:

    affine:      x_n = (x − u)/(s + eps),          z_n = (z − u_z)/(s_z + eps)
    scale_only:  x_n = x/(d_x + eps),              z_n = z/(d_z + eps),   d = max(mean_c(s), 1e-5)

so that the normalized operator, the process coefficients and the normalized noise std are all derived
from the same numbers (this is the fix of bug B5 of the reference):

    H_n(x_n) = norm_z(H(denorm_x(x_n))),   σ_n = σ / scale_z   (per channel).

``same=True`` (the default, design.md decision 3) uses the state statistics for z too (k = 1). With
``same=False`` the z statistics are fitted on H(X) (pass ``operator=`` to :meth:`Normalizer.fit`), which
for sparse masks gives k = scale_x/scale_z ≫ 1 and an invalid forward kernel (bug B3; the process refuses
it). Update modes: ``fixed`` (the first fit wins; later fits are no-ops) and ``adaptive`` (every fit
recomputes). The reference's ``moving`` (EMA) mode is not implemented.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

FORMS = ("affine", "scale_only")
UPDATES = ("fixed", "adaptive")
STD_FLOOR = 1e-5

_TENSORS = ("x_shift", "x_scale", "z_shift", "z_scale")


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (clamped >= 1e-5) of ``x`` (N, *S), each of shape (C,).

    C = S[0] when the state has two or more dims (channel = dim 1 of x), else C = 1. The std is the
    population std (divisor N·pixels).
    """
    if x.ndim < 2:
        raise ValueError(f"x must have shape (N, *S) with at least 2 dims; got shape {tuple(x.shape)}")
    flat = x.reshape(x.shape[0], 1, -1) if x.ndim == 2 else x.reshape(x.shape[0], x.shape[1], -1)
    flat = flat.transpose(0, 1).reshape(flat.shape[1], -1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0).clamp_min(STD_FLOOR)
    return mean, std


class Normalizer:
    """Per-channel normalization of states x and measurements z.

    Args:
        form: ``"affine"`` or ``"scale_only"``.
        update: ``"fixed"`` (first fit wins) or ``"adaptive"`` (refit on every call of :meth:`fit`).
        same: use the state statistics for z as well (k = 1).
        eps: added to the std (or the scalar scale) before dividing, 1e-5 as in the reference.

    After fitting, ``x_shift, x_scale, z_shift, z_scale`` are tensors of shape (C,); :meth:`channel`
    reshapes them to broadcast against a state (or batch of states) of the fitted state rank.
    """

    def __init__(
        self, form: str = "affine", update: str = "fixed", *, same: bool = True, eps: float = 1e-5
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}; got {form!r}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}; got {update!r}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0; got {eps!r}")
        self.form = form
        self.update = update
        self.same = bool(same)
        self.eps = float(eps)
        self.state_ndim: int | None = None
        self.x_shift: torch.Tensor | None = None
        self.x_scale: torch.Tensor | None = None
        self.z_shift: torch.Tensor | None = None
        self.z_scale: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def identity(cls) -> Normalizer:
        """The identity normalization (physical = normalized): shift 0 and scale exactly 1."""
        norm = cls("affine", "fixed")
        one, zero = torch.ones(1), torch.zeros(1)
        norm._set(zero, one, zero.clone(), one.clone(), state_ndim=None)
        return norm

    @classmethod
    def from_stats(
        cls,
        mean: torch.Tensor | float,
        std: torch.Tensor | float,
        *,
        z_mean: torch.Tensor | float | None = None,
        z_std: torch.Tensor | float | None = None,
        form: str = "affine",
        update: str = "fixed",
        eps: float = 1e-5,
        state_ndim: int | None = None,
    ) -> Normalizer:
        """A fitted normalizer from explicit per-channel statistics (shape (C,) or scalars).

        ``z_mean``/``z_std`` default to the state statistics (``same=True``). ``state_ndim`` (the number of
        dims of one state) is needed when C > 1.
        """
        same = z_mean is None and z_std is None
        norm = cls(form, update, same=same, eps=eps)
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        zm = mean_t if z_mean is None else torch.as_tensor(z_mean, dtype=torch.float64).reshape(-1)
        zs = std_t if z_std is None else torch.as_tensor(z_std, dtype=torch.float64).reshape(-1)
        for name, v in (("std", std_t), ("z_std", zs)):
            if not bool(torch.all(v > 0)):
                raise ValueError(f"{name} must be > 0 per channel; got {v.tolist()}")
        if not (mean_t.shape == std_t.shape == zm.shape == zs.shape):
            raise ValueError(
                "mean, std, z_mean, z_std must have the same number of channels; got "
                f"{mean_t.numel()}, {std_t.numel()}, {zm.numel()}, {zs.numel()}"
            )
        if mean_t.numel() > 1 and state_ndim is None:
            raise ValueError("state_ndim is required when there is more than one channel")
        norm._set_from_moments(mean_t, std_t.clamp_min(STD_FLOOR), zm, zs.clamp_min(STD_FLOOR), state_ndim)
        return norm

    def _set(self, xsh, xsc, zsh, zsc, *, state_ndim: int | None) -> None:
        self.x_shift, self.x_scale, self.z_shift, self.z_scale = xsh, xsc, zsh, zsc
        self.state_ndim = state_ndim

    def _set_from_moments(self, u, s, uz, sz, state_ndim: int | None) -> None:
        if self.form == "affine":
            self._set(u, s + self.eps, uz, sz + self.eps, state_ndim=state_ndim)
        else:  # scale_only: one scalar per kind, broadcast to every channel
            dx = s.mean().clamp_min(STD_FLOOR) + self.eps
            dz = sz.mean().clamp_min(STD_FLOOR) + self.eps
            zero = torch.zeros_like(u)
            self._set(
                zero, dx.expand_as(s).clone(), zero.clone(), dz.expand_as(sz).clone(), state_ndim=state_ndim
            )

    @property
    def fitted(self) -> bool:
        """Whether statistics are set."""
        return self.x_scale is not None

    def fit(
        self, x: torch.Tensor, *, operator: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> Normalizer:
        """Fit the statistics on states ``x`` (N, *S); returns ``self``.

        ``fixed`` mode ignores the call once fitted; ``adaptive`` refits every time. With ``same=False``
        the z statistics are computed on ``operator(x)`` (physical H without noise), which is required then.
        """
        if self.update == "fixed" and self.fitted:
            return self
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains non-finite values; cannot fit normalization statistics")
        u, s = channel_stats(x)
        if self.same:
            uz, sz = u, s
        else:
            if operator is None:
                raise ValueError("operator is required to fit z statistics when same=False")
            uz, sz = channel_stats(operator(x).detach())
        self._set_from_moments(u, s, uz, sz, state_ndim=x.ndim - 1)
        return self

    # ------------------------------------------------------------------------------------- transforms
    def _need(self) -> None:
        if not self.fitted:
            raise ValueError("the Normalizer is not fitted; call fit(x) or use from_stats/identity first")

    def channel(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-channel vector ``v`` (C,) cast to ``like`` and shaped to broadcast against states.

        Shape (C, 1, ..., 1) with ``state_ndim − 1`` ones (a single channel stays (1,)); it broadcasts
        against one state (*S) and a batch (N, *S).
        """
        v = v.to(dtype=like.dtype, device=like.device)
        if v.numel() == 1:
            return v.reshape(1)
        return v.reshape(v.numel(), *([1] * (self.state_ndim - 1)))

    def norm_x(self, x: torch.Tensor) -> torch.Tensor:
        """x_n = (x − shift_x)/scale_x, for one state (*S) or a batch (N, *S)."""
        self._need()
        return (x - self.channel(self.x_shift, x)) / self.channel(self.x_scale, x)

    def denorm_x(self, x_n: torch.Tensor) -> torch.Tensor:
        """x = x_n · scale_x + shift_x (inverse of :meth:`norm_x`)."""
        self._need()
        return x_n * self.channel(self.x_scale, x_n) + self.channel(self.x_shift, x_n)

    def norm_z(self, z: torch.Tensor) -> torch.Tensor:
        """z_n = (z − shift_z)/scale_z."""
        self._need()
        return (z - self.channel(self.z_shift, z)) / self.channel(self.z_scale, z)

    def denorm_z(self, z_n: torch.Tensor) -> torch.Tensor:
        """z = z_n · scale_z + shift_z (inverse of :meth:`norm_z`)."""
        self._need()
        return z_n * self.channel(self.z_scale, z_n) + self.channel(self.z_shift, z_n)

    def noise_std_normalized(self, sigma: float, like: torch.Tensor | None = None) -> torch.Tensor:
        """σ_n = σ / scale_z per channel, shaped like :meth:`channel` (cast to ``like`` if given)."""
        self._need()
        if not sigma >= 0.0:
            raise ValueError(f"sigma must be >= 0; got {sigma!r}")
        ref = self.z_scale if like is None else like
        return float(sigma) / self.channel(self.z_scale, ref)

    def apply_operator(
        self, operator: Callable[[torch.Tensor], torch.Tensor], x_n: torch.Tensor
    ) -> torch.Tensor:
        """Normalized operator H_n(x_n) = norm_z(H(denorm_x(x_n))), differentiable, shape of ``x_n``."""
        return self.norm_z(operator(self.denorm_x(x_n)))

    # ------------------------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Settings and statistics (tensors, or None when unfitted), for a checkpoint."""
        d: dict[str, Any] = {
            "form": self.form,
            "update": self.update,
            "same": self.same,
            "eps": self.eps,
            "state_ndim": self.state_ndim,
        }
        for name in _TENSORS:
            v = getattr(self, name)
            d[name] = None if v is None else v.detach().cpu().clone()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`."""
        norm = cls(d["form"], d["update"], same=d["same"], eps=d["eps"])
        if d.get("x_scale") is not None:
            norm._set(
                *(torch.as_tensor(d[name]) for name in _TENSORS),
                state_ndim=d["state_ndim"],
            )
        return norm

    def __repr__(self) -> str:
        return (
            f"Normalizer(form={self.form!r}, update={self.update!r}, same={self.same}, fitted={self.fitted})"
        )
