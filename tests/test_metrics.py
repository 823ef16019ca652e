"""Metrics against brute-force definitions and known values."""

import itertools

import pytest
import torch

from masf import metrics


def test_rmse_and_spread_known_values():
    mean = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    truth = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    assert metrics.rmse(mean, truth).item() == pytest.approx(1.0)
    ens = torch.tensor([[[0.0, 0.0], [2.0, 4.0]]])  # variances (ddof 1): 2 and 8
    assert metrics.spread(ens).item() == pytest.approx(5.0**0.5)


def test_crps_matches_pairwise_definition():
    gen = torch.Generator().manual_seed(0)
    ens = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    truth = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    n = ens.shape[1]
    skill = (ens - truth[:, None]).abs().mean(1)
    pairs = sum((ens[:, i] - ens[:, j]).abs() for i, j in itertools.product(range(n), range(n)))
    expected = (skill - 0.5 * pairs / n**2).mean(-1)
    expected_fair = (skill - 0.5 * pairs / (n * (n - 1))).mean(-1)
    torch.testing.assert_close(metrics.crps(ens, truth), expected)
    torch.testing.assert_close(metrics.crps(ens, truth, fair=True), expected_fair)


def test_crps_of_a_point_ensemble_is_absolute_error():
    ens = torch.full((1, 4, 3), 2.0)
    truth = torch.tensor([[1.0, 2.0, 5.0]])
    assert metrics.crps(ens, truth).item() == pytest.approx((1 + 0 + 3) / 3)


def test_rank_histogram_counts_and_flatness():
    ens = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])  # (1, 3, 2)
    truth = torch.tensor([[1.5, -1.0]])
    assert metrics.rank_histogram(ens, truth).tolist() == [[1, 0, 1, 0]]
    gen = torch.Generator().manual_seed(1)
    ens = torch.randn(1, 9, 20000, generator=gen)
    truth = torch.randn(1, 20000, generator=gen)  # exchangeable with the members: flat histogram
    hist = metrics.rank_histogram(ens, truth)[0].double()
    assert hist.sum() == 20000
    assert (hist / 2000 - 1).abs().max() < 0.1


def test_ssim_properties():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(2, 32, 32, generator=gen, dtype=torch.float64)
    noise = torch.randn(2, 32, 32, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(metrics.ssim(a, a), torch.ones(2, dtype=torch.float64))
    small, large = metrics.ssim(a + 0.1 * noise, a), metrics.ssim(a + 1.0 * noise, a)
    assert (small < 1).all() and (large < small).all()
    # periodic: shifting both fields together leaves SSIM unchanged
    shifted = metrics.ssim(torch.roll(a + noise, 5, dims=-1), torch.roll(a, 5, dims=-1))
    torch.testing.assert_close(shifted, metrics.ssim(a + noise, a))
    # a constant offset of one data range is heavily penalised through the luminance term
    assert metrics.ssim(a + 10.0, a).max() < 0.5


def test_ssim_single_window_golden_value():
    """With a window covering the field uniformly, SSIM reduces to the global formula."""
    x = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]], dtype=torch.float64)
    y = torch.tensor([[[0.0, 2.0], [2.0, 4.0]]], dtype=torch.float64)
    got = metrics.ssim(x, y, window=1, sigma=1.0, data_range=4.0)
    # window 1: local variance 0, so each pixel gives (2 x y + C1) / (x^2 + y^2 + C1)
    c1 = (0.01 * 4) ** 2
    want = ((2 * x * y + c1) / (x**2 + y**2 + c1)).mean()
    torch.testing.assert_close(got, want.reshape(1))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        metrics.rmse(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.spread(torch.zeros(1, 1, 3))


def test_ssim_refuses_fields_of_different_or_wrong_shape():
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(torch.zeros(8, 8), torch.zeros(8, 8))
