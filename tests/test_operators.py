"""Measurement operators: masks, shapes, observed fractions, noise statistics, Jacobians, bad input."""

from __future__ import annotations

import pytest
import torch

from masf.operators import (
    OPERATORS,
    Arctan,
    Mask,
    Sigmoid,
    Speed,
    center_mask,
    every_kth,
    grid_mask,
    identity,
    make_operator,
    random_mask,
)
from masf.rng import generator


def test_grid_mask_stride_10_at_128_observes_13_by_13_per_channel():
    op = grid_mask((2, 128, 128), stride=10, noise_std=0.1)
    assert op.linear and op.name == "grid_mask" and op.state_shape == (2, 128, 128)
    assert op.mask.shape == (2, 128, 128)
    for channel in range(2):
        assert int(op.mask[channel].sum()) == 13 * 13
    rows = torch.nonzero(op.mask[0].any(dim=1)).squeeze(1)
    assert rows.tolist() == list(range(0, 128, 10))
    assert op.params()["observed_fraction"] == pytest.approx(2 * 169 / (2 * 128 * 128))
    # method.md §9: stride 15 @256 -> 18×18, stride 20 @512 -> 26×26 per channel
    assert int(grid_mask((2, 256, 256), 15, noise_std=0.1).mask[1].sum()) == 18 * 18
    assert int(grid_mask((1, 512, 512), 20, noise_std=0.1).mask.sum()) == 26 * 26


def test_grid_mask_offset_and_1d():
    op = grid_mask((1, 9, 9), stride=4, offset=1, noise_std=0.1)
    assert torch.nonzero(op.mask[0, :, 1]).squeeze(1).tolist() == [1, 5]
    assert int(op.mask.sum()) == 4
    op1 = grid_mask((10,), stride=3, noise_std=0.1)
    assert op1.mask.tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]


def test_center_mask_hole_is_centred_and_observes_75_percent():
    op = center_mask((2, 128, 128), hole_ratio=0.5, noise_std=0.1)
    assert int((op.mask[0] == 0).sum()) == 64 * 64
    assert op.params()["observed_fraction"] == pytest.approx(0.75)
    assert float(op.mask[:, 32:96, 32:96].sum()) == 0.0
    assert float(op.mask[:, 31, :].min()) == 1.0 and float(op.mask[:, 96, :].min()) == 1.0
    small = center_mask((1, 6, 6), hole_ratio=1 / 3, noise_std=0.1)
    assert small.mask[0].tolist() == [[1, 1, 1, 1, 1, 1]] * 2 + [[1, 1, 0, 0, 1, 1]] * 2 + [[1] * 6] * 2
    # a field without a channel axis, (n, n), is a 2-D state too; a vector is not
    plain = center_mask((6, 6), hole_ratio=1 / 3, noise_std=0.1)
    assert plain.mask.tolist() == small.mask[0].tolist()
    with pytest.raises(ValueError, match=r"center_mask: needs a 2-D state .* got state_shape \(6,\) \(1-D\)"):
        center_mask((6,), hole_ratio=1 / 3, noise_std=0.1)


def test_random_mask_fraction_seed_and_channels():
    a = random_mask((2, 16, 16), fraction=0.1, seed=4, noise_std=0.1)
    b = random_mask((2, 16, 16), fraction=0.1, seed=4, noise_std=0.1)
    c = random_mask((2, 16, 16), fraction=0.1, seed=5, noise_std=0.1)
    assert int(a.mask[0].sum()) == round(0.1 * 256)
    assert torch.equal(a.mask[0], a.mask[1])  # same points on every channel
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    assert int(random_mask((40,), fraction=0.001, seed=0, noise_std=1.0).mask.sum()) == 1  # at least one
    assert int(random_mask((40,), fraction=1.0, seed=0, noise_std=1.0).mask.sum()) == 40


def test_every_kth_and_identity():
    op = every_kth((40,), k=4, offset=2, noise_std=1.0)
    assert op.observed_index().tolist() == list(range(2, 40, 4))
    ident = identity((3,), noise_std=2.0**0.5)
    assert ident.mask.tolist() == [1.0, 1.0, 1.0] and ident.linear
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(ident(x), x)


def test_explicit_mask_apply_jvp_vjp_and_observed_index():
    m = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    op = Mask(m, noise_std=0.5)
    assert op.state_shape == (2, 3) and op.name == "mask"
    x = torch.arange(12.0).reshape(2, 2, 3)
    expected = x * m.float()
    assert torch.equal(op(x), expected)
    assert torch.equal(op.jvp(x, x), expected)
    assert torch.equal(op.vjp(x, x), expected)
    assert op.observed_index().tolist() == [0, 2, 5]
    assert torch.equal(x.flatten(1)[:, op.observed_index()], expected.flatten(1)[:, [0, 2, 5]])


@pytest.mark.parametrize(
    "op",
    [
        grid_mask((2, 12, 12), stride=3, noise_std=0.1),
        Sigmoid(2.0, 0.1, state_shape=(2, 12, 12)),
        Arctan(0.1, state_shape=(2, 12, 12)),
        Speed(0.1, state_shape=(2, 12, 12)),
    ],
    ids=["grid", "sigmoid", "arctan", "speed"],
)
def test_noise_statistics_on_every_entry(op):
    x = 1.5 * torch.randn(400, 2, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = op.observe(x, generator=generator(0, "obs_noise"))
    assert z.shape == x.shape and z.dtype == torch.float64
    residual = (z - op(x)).flatten()
    n = residual.numel()
    assert abs(float(residual.mean())) < 4 * op.noise_std / n**0.5
    assert abs(float(residual.std()) / op.noise_std - 1.0) < 4 / (2 * n) ** 0.5
    # unobserved mask entries are noise only; the two speed copies get independent noise
    if op.mask is not None:
        hidden = z[:, op.mask == 0]
        assert abs(float(hidden.std()) / op.noise_std - 1.0) < 0.02
    if op.name == "speed":
        corr = torch.corrcoef(torch.stack(((z - op(x))[:, 0].flatten(), (z - op(x))[:, 1].flatten())))
        assert abs(float(corr[0, 1])) < 0.02


def test_observe_is_reproducible_and_keeps_float32():
    op = grid_mask((8,), stride=2, noise_std=0.3)
    x = torch.randn(4, 8)
    z1 = op.observe(x, generator=generator(1, "obs_noise"))
    z2 = op.observe(x, generator=generator(1, "obs_noise"))
    assert z1.dtype == torch.float32 and torch.equal(z1, z2)


def test_sigmoid_and_speed_values():
    x = torch.tensor([[[[0.0]], [[1.0]]]], dtype=torch.float64)  # u = 0, v = 1 at a single point
    torch.testing.assert_close(Sigmoid(2.0, 0.1)(x), torch.sigmoid(2.0 * x))
    q = torch.sigmoid(torch.tensor(1.0 - 3.0, dtype=torch.float64))
    torch.testing.assert_close(Speed(0.1)(x), torch.full((1, 2, 1, 1), float(q), dtype=torch.float64))
    assert float(Speed(0.1, threshold=1.0, sharpness=5.0)(x).max()) == 0.5


def test_arctan_values_and_jacobian_closed_form():
    """arctan at known points, and J_H = 1/(1 + x²) on the diagonal (EnSF's analytic likelihood score)."""
    x = torch.tensor([[0.0, 1.0, -1.0, 3.0**0.5, 50.0]], dtype=torch.float64)
    pi = torch.pi
    expected = torch.tensor([[0.0, pi / 4, -pi / 4, pi / 3, float(torch.atan(torch.tensor(50.0)))]])
    op = make_operator("arctan", (5,), noise_std=0.05)
    assert isinstance(op, Arctan) and not op.linear
    torch.testing.assert_close(op(x), expected.to(x))
    torch.testing.assert_close(op.vjp(x, torch.ones_like(x)), 1.0 / (1.0 + x * x))
    with pytest.raises(ValueError, match="arctan: x must be shaped"):
        op(torch.zeros(1, 4))


def _central_differences(fn, x: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return (fn(x + eps * v) - fn(x - eps * v)) / (2 * eps)


@pytest.mark.parametrize(
    "op",
    [
        Sigmoid(2.0, 0.1, state_shape=(2, 5, 5)),
        Arctan(0.1, state_shape=(2, 5, 5)),
        Speed(0.1, state_shape=(2, 5, 5)),
    ],
    ids=["sigmoid", "arctan", "speed"],
)
def test_jvp_and_vjp_match_finite_differences(op):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    v = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    jv = op.jvp(x, v)
    torch.testing.assert_close(jv, _central_differences(op, x, v), rtol=1e-7, atol=1e-8)
    # adjoint identity <w, J v> = <Jᵀ w, v> per member, and J^T w against finite differences of <w, H>
    jtw = op.vjp(x, w)
    torch.testing.assert_close((w * jv).sum((1, 2, 3)), (jtw * v).sum((1, 2, 3)), rtol=1e-10, atol=1e-10)

    def scalar(y):
        return (w * op(y)).sum((1, 2, 3))

    for i in range(4):  # a few coordinate directions
        e = torch.zeros_like(x)
        e.view(3, -1)[:, 7 * i] = 1.0
        fd = (scalar(x + 1e-6 * e) - scalar(x - 1e-6 * e)) / 2e-6
        torch.testing.assert_close(jtw.view(3, -1)[:, 7 * i], fd, rtol=1e-6, atol=1e-8)


def test_speed_jacobian_couples_channels():
    op = Speed(0.1, state_shape=(2, 3, 3))
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    v = torch.zeros_like(x)
    v[0, 0, 1, 1] = 1.0  # perturb u at one point: q changes at that point in both channels only
    jv = op.jvp(x, v)
    assert float(jv[0, 0, 1, 1]) != 0.0 and float(jv[0, 0, 1, 1]) == float(jv[0, 1, 1, 1])
    jv[0, :, 1, 1] = 0.0
    assert float(jv.abs().max()) == 0.0


def test_make_operator_names_and_round_trip():
    assert set(OPERATORS) == {
        "mask",
        "grid_mask",
        "center_mask",
        "random_mask",
        "every_kth",
        "identity",
        "sigmoid",
        "arctan",
        "speed",
    }
    shape = (2, 16, 16)
    for name, params in [
        ("grid_mask", {"stride": 5, "offset": 1}),
        ("center_mask", {"hole_ratio": 0.25}),
        ("random_mask", {"fraction": 0.2, "seed": 9}),
        ("identity", {}),
        ("sigmoid", {"alpha": 2.0}),
        ("speed", {"threshold": 2.0, "sharpness": 0.5}),
    ]:
        op = make_operator(name, shape, noise_std=0.1, **params)
        assert op.name == name and op.state_shape == shape
        again = make_operator(**op.params(), state_shape=shape)
        assert again.params() == op.params()
        if op.mask is not None:
            assert torch.equal(again.mask, op.mask)
    assert make_operator("every_kth", (40,), k=2, noise_std=1.0).params()["n_observed"] == 20
    explicit = make_operator("mask", (3,), mask=[1, 0, 1], noise_std=1.0)
    assert explicit.observed_index().tolist() == [0, 2]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: make_operator("bogus", (4,), noise_std=1.0), "grid_mask"),
        (lambda: make_operator("grid_mask", (4,), stride=2, noise_std=1.0, bogus=3), "bogus"),
        (lambda: Mask(torch.zeros(2, 4, 4), 0.1), "observes nothing"),
        (lambda: Mask(torch.full((3,), 0.5), 0.1), "mask"),
        (lambda: make_operator("mask", (4,), mask=[1, 0, 1], noise_std=1.0), "mask"),
        (lambda: grid_mask((2, 8, 8), 2, noise_std=0.0), "noise_std"),
        (lambda: grid_mask((2, 8, 8), 2, noise_std=-1.0), "noise_std"),
        (lambda: Sigmoid(2.0, float("nan")), "noise_std"),
        (lambda: grid_mask((2, 8, 8), 0, noise_std=0.1), "stride"),
        (lambda: grid_mask((2, 8, 8), 2, offset=2, noise_std=0.1), "offset"),
        (lambda: center_mask((2, 8, 8), 0.0, noise_std=0.1), "hole_ratio"),
        (lambda: center_mask((2, 8, 8), 1.0, noise_std=0.1), "hole_ratio"),
        (lambda: center_mask((40,), 0.5, noise_std=0.1), "state_shape"),
        (lambda: random_mask((2, 8, 8), 0.0, seed=1, noise_std=0.1), "fraction"),
        (lambda: random_mask((2, 8, 8), 1.5, seed=1, noise_std=0.1), "fraction"),
        (lambda: every_kth((40,), 0, noise_std=0.1), "k"),
        (lambda: every_kth((2, 8, 8), 2, noise_std=0.1), "state_shape"),
        (lambda: Speed(0.1, state_shape=(3, 8, 8)), "state_shape"),
        (lambda: Speed(0.1, state_shape=(40,)), "state_shape"),
        (lambda: make_operator("speed", (2, 8, 4), noise_std=0.1), "state_shape"),
        (lambda: Speed(0.1, sharpness=0.0), "sharpness"),
        (lambda: Sigmoid(0.0, 0.1), "alpha"),
        (lambda: make_operator("grid_mask", (0, 4), stride=1, noise_std=0.1), "state_shape"),
    ],
)
def test_bad_construction_raises(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_states_raise():
    op = grid_mask((2, 8, 8), 2, noise_std=0.1)
    g = generator(0, "obs_noise")
    with pytest.raises(ValueError, match="x must be shaped"):
        op(torch.zeros(3, 2, 8, 7))
    with pytest.raises(ValueError, match="x must be shaped"):
        op.observe(torch.zeros(2, 8, 8), generator=g)
    with pytest.raises(ValueError, match="NaN"):
        op.observe(torch.full((1, 2, 8, 8), float("nan")), generator=g)
    with pytest.raises(ValueError, match="v must be shaped"):
        op.jvp(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="float"):
        op(torch.zeros(1, 2, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="x must be shaped"):
        Speed(0.1)(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        Sigmoid(2.0, 0.1).observe(torch.tensor([[float("inf")]]), generator=g)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "op",
    [
        grid_mask((2, 16, 16), stride=3, noise_std=0.1),
        Sigmoid(2.0, 0.1, state_shape=(2, 16, 16)),
        Speed(0.1, state_shape=(2, 16, 16)),
    ],
    ids=["grid", "sigmoid", "speed"],
)
def test_cuda_matches_cpu(op):
    g = torch.Generator().manual_seed(3)
    x, v = (torch.randn(4, 2, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    xc, vc = x.cuda(), v.cuda()
    z = op.observe(x, generator=generator(0, "obs_noise"))
    zc = op.observe(xc, generator=generator(0, "obs_noise"))  # CPU generator, CUDA states
    assert zc.device.type == "cuda"
    torch.testing.assert_close(zc.cpu(), z, rtol=1e-12, atol=1e-12)
    zg = op.observe(xc.float(), generator=generator(0, "obs_noise", "cuda"))
    assert zg.device.type == "cuda" and zg.dtype == torch.float32
    torch.testing.assert_close(op.jvp(xc, vc).cpu(), op.jvp(x, v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.vjp(xc, vc).cpu(), op.vjp(x, v), rtol=1e-12, atol=1e-12)


def test_repr_names_the_operator_once_with_its_settings():
    assert repr(every_kth((8,), 2, noise_std=1.0)) == (
        "every_kth(noise_std=1.0, k=2, offset=0, n_observed=4, observed_fraction=0.5)"
    )
    assert (
        repr(make_operator("sigmoid", (4,), alpha=2.0, noise_std=0.1)) == "sigmoid(noise_std=0.1, alpha=2.0)"
    )
