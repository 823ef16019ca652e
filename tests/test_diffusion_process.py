"""Measurement-aware process: affine structure, validity, forward marginal, kernels, likelihood score
(method.md §2–3, §11 items 2–6)."""

import pytest
import torch
from scipy.stats import ks_2samp

from masf.diffusion import MeasurementAwareProcess, Normalizer, schedule
from masf.operators import Mask, Sigmoid, grid_mask

F64 = torch.float64
S2 = (2, 4, 4)


def _prior_2d(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *S2, generator=g, dtype=F64)
    return 1.5 * x + torch.tensor([0.7, -2.0], dtype=F64).view(2, 1, 1)


def _process_2d(form="affine", T=0.992):
    op = grid_mask(S2, 2, noise_std=0.1)
    return MeasurementAwareProcess(op, Normalizer(form).fit(_prior_2d()), T=T)


def _process_1d(D=4, sigma=0.1):
    mask = torch.tensor([1.0, 0.0] * (D // 2))
    return MeasurementAwareProcess(Mask(mask, sigma))


@pytest.mark.parametrize("form", ["affine", "scale_only"])
def test_affine_structure(form):
    """a x + (1 − a) H_n(x) = A(t) x + B(t) for both forms (the reference fails it for scale_only, B5)."""
    proc = _process_2d(form)
    x = torch.randn(5, *S2, dtype=F64)
    for t in (1e-5, 0.3, 0.7, 0.992):
        at = schedule.a(t)
        lhs = at * x + (1 - at) * proc.H_n(x)
        torch.testing.assert_close(lhs, proc.A(t) * x + proc.B(t))
    if form == "scale_only":
        assert torch.count_nonzero(proc.B(0.5)) == 0  # true B is 0 for scale_only


def test_endpoint_is_normalized_operator():
    """With T = 1 (a(1) = 0): H_n(x) = A(1) x + B(1); observed A = 1, B = 0; unobserved A = a(t)."""
    proc = _process_2d(T=1.0)
    x = torch.randn(3, *S2, dtype=F64)
    torch.testing.assert_close(proc.H_n(x), proc.A(1.0) * x + proc.B(1.0))
    m = proc.mask.bool()
    A = proc.A(0.4)
    assert torch.allclose(A[m], torch.ones((), dtype=F64), atol=1e-12)
    assert torch.allclose(A[~m], torch.tensor(schedule.a(0.4), dtype=F64))
    assert torch.allclose(proc.B(0.4)[m], torch.zeros((), dtype=F64), atol=1e-12)


def test_time_tensor_broadcasts_per_member():
    proc = _process_2d()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    A = proc.A(t)
    assert A.shape == (3, *S2)
    torch.testing.assert_close(A[1], proc.A(0.5))
    torch.testing.assert_close(proc.Sigma(t)[2].expand(S2), proc.Sigma(0.9).expand(S2))


@pytest.mark.parametrize(("k", "lo"), [(5.0, 0.41), (20.0, 0.20)])
def test_validity_check_refuses_large_gain(k, lo):
    """k = scale_x/scale_z > 1 makes Σ(s,t) < 0 (bug B3): refused at construction, interval reported."""
    norm = Normalizer.from_stats(0.0, 1.0, z_mean=0.0, z_std=1.0 / k, eps=0.0)
    with pytest.raises(ValueError, match=rf"k\*m = {k:.0f} on t in \[{lo:.2f}, 0.99\]"):
        MeasurementAwareProcess(Mask(torch.tensor([1.0, 0.0]), 0.1), norm)


def test_kernel_variance_nonnegative_for_k1():
    proc = _process_2d()
    grid = torch.linspace(1e-5, 0.992, 60, dtype=F64).tolist()
    for i, s in enumerate(grid):
        for t in grid[i + 1 :: 7]:
            assert bool((proc.Sigma_st(s, t) >= -1e-15).all())


def test_kernel_composition_exact():
    proc = _process_2d()
    for s, t, u in [(1e-5, 0.2, 0.9), (0.3, 0.5, 0.992), (0.05, 0.95, 0.97)]:
        torch.testing.assert_close(proc.M(s, u), proc.M(t, u) * proc.M(s, t))
        torch.testing.assert_close(proc.U(s, u), proc.M(t, u) * proc.U(s, t) + proc.U(t, u))
        sig = proc.Sigma_st(t, u) + proc.M(t, u) ** 2 * proc.Sigma_st(s, t)
        torch.testing.assert_close(proc.Sigma_st(s, u).expand(S2), sig.expand(S2))


def test_forward_marginal_monte_carlo():
    proc = _process_2d()
    n = 20000
    x0 = torch.randn(1, *S2, dtype=F64).expand(n, *S2)
    g = torch.Generator().manual_seed(1)
    for t in (0.2, 0.9):
        xt = proc.forward(x0, t, generator=g)
        mean, var = proc.A(t) * x0[0] + proc.B(t), proc.Sigma(t).expand(S2)
        se = (var / n).sqrt()
        assert bool(((xt.mean(0) - mean).abs() < 4.5 * se).all())
        assert bool(((xt.var(0) / var - 1).abs() < 4.5 * (2 / n) ** 0.5).all())


@pytest.mark.parametrize(("s", "t"), [(1e-5, 0.5), (0.3, 0.98), (0.9, 0.992), (0.6, 0.7)])
def test_kernel_consistency(s, t):
    """x_s ~ forward(x0, s), then x_t ~ N(M x_s + U, Σ(s,t)) matches forward(x0, t) (KS + moments)."""
    proc = _process_1d()
    n = 20000
    g = torch.Generator().manual_seed(2)
    x0 = torch.tensor([[0.8, -1.3, 0.4, 2.0]], dtype=F64).expand(n, 4)
    xs = proc.forward(x0, s, generator=g)
    noise = torch.randn(xs.shape, generator=g, dtype=F64)
    via = proc.M(s, t) * xs + proc.U(s, t) + proc.Sigma_st(s, t).sqrt() * noise
    direct = proc.forward(x0, t, generator=g)
    for j in range(4):
        assert ks_2samp(via[:, j].numpy(), direct[:, j].numpy()).pvalue > 1e-3
    var = proc.Sigma(t).expand(4)
    assert bool(((via.mean(0) - direct.mean(0)).abs() < 5 * (2 * var / n).sqrt()).all())


@pytest.mark.parametrize("s", [1e-5, 0.3, 0.8, 0.97])
def test_likelihood_score_vs_autograd(s):
    proc = _process_2d()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(S2, generator=g, dtype=F64)
    x = torch.randn(3, *S2, generator=g, dtype=F64).requires_grad_(True)
    T = proc.T
    mean = proc.M(s, T) * x + proc.U(s, T)
    logp = -0.5 * ((z - mean) ** 2 / proc.Sigma_st(s, T)).sum()
    (grad,) = torch.autograd.grad(logp, x)
    torch.testing.assert_close(proc.likelihood_score(z, x.detach(), s), grad, rtol=1e-10, atol=1e-10)
    ts = torch.full((3,), s, dtype=F64)
    torch.testing.assert_close(proc.likelihood_score(z, x.detach(), ts), grad, rtol=1e-10, atol=1e-10)


def test_nonlinear_operator_forward_only():
    op = Sigmoid(2.0, 0.1, state_shape=S2)
    proc = MeasurementAwareProcess(op, Normalizer().fit(_prior_2d()))
    assert not proc.linear
    x0 = _prior_2d(3)
    xt = proc.forward(
        x0, torch.tensor([0.1, 0.5, 0.992], dtype=F64), generator=torch.Generator().manual_seed(0)
    )
    assert xt.shape == x0.shape and xt.dtype == F64
    with pytest.raises(ValueError, match="linear"):
        proc.A(0.5)
    with pytest.raises(ValueError, match="linear"):
        proc.likelihood_score(x0[0], x0, 0.5)


def test_float32_and_device_follow_input():
    proc = _process_1d()
    x0 = torch.randn(7, 4)
    xt = proc.forward(x0, 0.5, generator=torch.Generator().manual_seed(0))
    assert xt.dtype == torch.float32 and xt.device == x0.device


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        _process_1d().forward(torch.zeros(3, 5), 0.5, generator=None)
    with pytest.raises(ValueError, match="not fitted"):
        MeasurementAwareProcess(Mask(torch.ones(2), 0.1), Normalizer())
    with pytest.raises(ValueError, match="tau"):
        MeasurementAwareProcess(Mask(torch.ones(2), 0.1), T=1.5)
    with pytest.raises(ValueError, match="state_shape is required"):
        MeasurementAwareProcess(Sigmoid(2.0, 0.1))
