"""Cosine schedule of the measurement-aware process: reference values, monotonicity, grids (method.md §11.1)."""

import math

import pytest
import torch

from masf.diffusion import schedule


@pytest.mark.parametrize(
    ("t", "expected", "tol"),
    [
        (1e-5, 0.9999998, 1e-7),
        (0.01, 0.99968, 1e-5),
        (0.1, 0.98595, 1e-5),
        (0.5, 0.702740, 1e-6),
        (0.9, 0.15522, 1e-5),
        (0.98, 0.03116, 1e-5),
        (0.992, 0.0124673, 1e-7),
    ],
)
def test_reference_values(t, expected, tol):
    assert schedule.a(t) == pytest.approx(expected, abs=tol)
    at = schedule.a(torch.tensor([t], dtype=torch.float64))
    assert at.dtype == torch.float64
    assert at.item() == pytest.approx(expected, abs=tol)


def test_clamping_to_tau_and_T():
    assert schedule.a(0.0) == schedule.a(1e-5)
    assert schedule.a(1.0) == schedule.a(0.992)
    assert schedule.a(1.0) > 0.012  # a(T) is not 0
    assert schedule.a(1.0, T=1.0) == pytest.approx(0.0, abs=1e-12)


def test_monotone_and_unit_circle():
    t = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    at, rt = schedule.a(t), schedule.r(t)
    inside = (t > 1e-5) & (t < 0.992)
    d_a = at[1:] - at[:-1]
    assert bool((d_a <= 0).all())
    assert bool((d_a[inside[1:] & inside[:-1]] < 0).all())  # strictly decreasing inside [tau, T]
    assert bool((rt[1:] >= rt[:-1]).all())
    torch.testing.assert_close(at**2 + rt**2, torch.ones_like(t), rtol=0, atol=1e-14)
    assert schedule.r(0.5) == pytest.approx(math.sqrt(1 - schedule.a(0.5) ** 2))


def test_tensor_keeps_dtype_and_shape():
    t = torch.rand(3, 4)
    out = schedule.a(t)
    assert out.shape == (3, 4) and out.dtype == torch.float32


def test_grid_endpoints():
    g = schedule.time_grid(150, times_T=True, dtype=torch.float64)
    assert g.shape == (151,)
    assert g[0].item() == pytest.approx(0.992**2, rel=1e-12)  # s_0 = T² = 0.98406
    assert g[-1].item() == pytest.approx(0.992 * 1e-5, rel=1e-12)  # s_nfe = T·tau
    assert bool((g[1:] < g[:-1]).all())
    plain = schedule.time_grid(4, dtype=torch.float64)
    torch.testing.assert_close(
        plain,
        torch.tensor([0.992, 0.558004375, 0.2480075, 0.062009375, 1e-5], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize(("T", "tau"), [(0.5, 0.5), (1.2, 1e-5), (0.9, -0.1), (float("nan"), 1e-5)])
def test_bad_times(T, tau):
    with pytest.raises(ValueError, match="tau"):
        schedule.a(0.3, T=T, tau=tau)


@pytest.mark.parametrize("nfe", [0, -3, 2.5, True])
def test_bad_nfe(nfe):
    with pytest.raises(ValueError, match="nfe"):
        schedule.time_grid(nfe)
