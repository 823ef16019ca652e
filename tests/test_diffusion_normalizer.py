"""Normalizer: statistics, round trips, the normalized operator, modes, persistence (method.md §2.3, §11.2)."""

import pytest
import torch

from masf.diffusion import Normalizer
from masf.diffusion.normalizer import channel_stats
from masf.operators import Sigmoid, grid_mask

F64 = torch.float64


def _states_2d(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 6, 6, generator=g, dtype=F64)
    return x * torch.tensor([2.0, 0.5], dtype=F64).view(2, 1, 1) + torch.tensor([1.0, -3.0], dtype=F64).view(
        2, 1, 1
    )


def test_channel_stats_2d_and_1d():
    x = _states_2d()
    mean, std = channel_stats(x)
    assert mean.shape == std.shape == (2,)
    torch.testing.assert_close(mean[1], x[:, 1].mean())
    torch.testing.assert_close(std[0], x[:, 0].std(correction=0))
    y = torch.arange(12, dtype=F64).reshape(3, 4)
    m1, s1 = channel_stats(y)
    assert s1.item() == pytest.approx(torch.arange(12.0).std(correction=0).item())
    assert m1.shape == (1,) and m1.item() == pytest.approx(5.5)
    assert channel_stats(torch.ones(5, 3))[1].item() == pytest.approx(1e-5)  # std clamped


@pytest.mark.parametrize("form", ["affine", "scale_only"])
@pytest.mark.parametrize("twod", [True, False])
def test_round_trips(form, twod):
    x = _states_2d() if twod else _states_2d().reshape(64, -1)
    norm = Normalizer(form).fit(x)
    torch.testing.assert_close(norm.denorm_x(norm.norm_x(x)), x)
    torch.testing.assert_close(norm.denorm_z(norm.norm_z(x)), x)
    torch.testing.assert_close(norm.norm_x(x[0]), norm.norm_x(x)[0])  # one state (*S) works too


def test_affine_standardizes_per_channel():
    x = _states_2d()
    xn = Normalizer("affine").fit(x).norm_x(x)
    mean, std = channel_stats(xn)
    torch.testing.assert_close(mean, torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(std, torch.ones(2, dtype=F64), atol=1e-4, rtol=0)


def test_scale_only_uses_one_scalar():
    x = _states_2d()
    norm = Normalizer("scale_only").fit(x)
    _, s = channel_stats(x)
    d = s.mean() + 1e-5
    torch.testing.assert_close(norm.norm_x(x), x / d)
    sig_n = norm.noise_std_normalized(0.1)
    torch.testing.assert_close(sig_n.reshape(-1), (0.1 / d).expand(2))


@pytest.mark.parametrize("form", ["affine", "scale_only"])
def test_normalized_operator_commutes(form):
    x = _states_2d()
    for op in (grid_mask((2, 6, 6), 2, noise_std=0.1), Sigmoid(2.0, 0.1, state_shape=(2, 6, 6))):
        norm = Normalizer(form).fit(x)
        torch.testing.assert_close(norm.apply_operator(op, norm.norm_x(x)), norm.norm_z(op(x)))


def test_noise_std_per_channel():
    norm = Normalizer("affine").fit(_states_2d())
    sig = norm.noise_std_normalized(0.1)
    assert sig.shape == (2, 1, 1)
    torch.testing.assert_close(sig.reshape(-1), 0.1 / norm.z_scale)
    assert sig[0].item() == pytest.approx(0.1 / (2.0 + 1e-5), rel=0.2)


def test_fixed_and_adaptive_updates():
    x1, x2 = _states_2d(seed=1), 10 * _states_2d(seed=2)
    fixed = Normalizer("affine", "fixed").fit(x1)
    first = fixed.x_scale.clone()
    fixed.fit(x2)
    torch.testing.assert_close(fixed.x_scale, first)  # first fit wins
    adaptive = Normalizer("affine", "adaptive").fit(x1).fit(x2)
    torch.testing.assert_close(adaptive.x_scale, Normalizer().fit(x2).x_scale)


def test_separate_z_statistics_from_operator():
    x = _states_2d()
    x = x - x.mean(dim=(0, 2, 3), keepdim=True)  # zero-mean channels: the mask's zeros shrink the std
    op = grid_mask((2, 6, 6), 3, noise_std=0.1)
    norm = Normalizer("affine", same=False).fit(x, operator=op)
    _, sz = channel_stats(op(x))
    torch.testing.assert_close(norm.z_scale, sz + 1e-5)
    assert bool((norm.x_scale / norm.z_scale > 2.0).all())  # sparse masks give k ≈ 1/sqrt(fraction) = 3
    with pytest.raises(ValueError, match="operator is required"):
        Normalizer(same=False).fit(x)


def test_identity_is_exact():
    norm = Normalizer.identity()
    x = torch.randn(4, 3, dtype=F64)
    assert torch.equal(norm.norm_x(x), x) and torch.equal(norm.denorm_z(x), x)
    assert norm.noise_std_normalized(0.1).item() == pytest.approx(0.1)


def test_persistence_round_trip(tmp_path):
    x = _states_2d()
    norm = Normalizer("scale_only", "adaptive").fit(x)
    path = tmp_path / "norm.pt"
    torch.save(norm.to_dict(), path)
    back = Normalizer.from_dict(torch.load(path, weights_only=True))
    assert (back.form, back.update, back.same) == ("scale_only", "adaptive", True)
    torch.testing.assert_close(back.norm_x(x), norm.norm_x(x))
    assert not Normalizer.from_dict(Normalizer().to_dict()).fitted


def test_from_stats():
    norm = Normalizer.from_stats(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]), state_ndim=3, eps=0.0)
    x = torch.ones(1, 2, 2, 2)
    torch.testing.assert_close(norm.norm_x(x)[0, :, 0, 0], torch.tensor([0.0, -0.25]))
    assert norm.same and not Normalizer.from_stats(0.0, 1.0, z_mean=0.5).same
    separate = Normalizer.from_stats(
        torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]), z_mean=torch.tensor([0.5, -1.0]),
        z_std=torch.tensor([0.5, 3.0]), state_ndim=3, eps=0.0,
    )  # fmt: skip
    assert not separate.same
    torch.testing.assert_close(separate.norm_z(x)[0, :, 0, 0], torch.tensor([1.0, 2.0 / 3.0]))
    torch.testing.assert_close(separate.norm_x(x)[0, :, 0, 0], torch.tensor([0.0, -0.25]))
    with pytest.raises(ValueError, match="state_ndim"):
        Normalizer.from_stats(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="z_std"):
        Normalizer.from_stats(0.0, 1.0, z_std=0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="form"):
        Normalizer("robust")
    with pytest.raises(ValueError, match="update"):
        Normalizer(update="moving")
    with pytest.raises(ValueError, match="not fitted"):
        Normalizer().norm_x(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        Normalizer().fit(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        Normalizer().fit(torch.zeros(5))
