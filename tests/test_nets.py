"""Tests of masf.nets: shapes, periodic equivariance, time conditioning, configs and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from masf.nets import (
    MLP,
    NETWORKS,
    TimeEmbedding,
    count_parameters,
    make_network,
    network_from_config,
    sinusoidal_embedding,
)
from masf.nets.blocks import num_groups

TINY_UNET = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1)

SHAPE_CASES = [
    ("mlp", (3,), dict(width=16, num_blocks=2)),
    ("mlp", (2, 4, 4), dict(width=8, num_blocks=0, time_channels=3)),
    ("unet1d", (40,), dict(model_channels=8)),
    (
        "unet1d",
        (40,),
        dict(
            model_channels=12, channel_mult=(1, 2, 2, 3), num_res_blocks=2, attention_levels=(2,), num_heads=2
        ),
    ),
    ("unet2d", (2, 32, 32), TINY_UNET),
    ("unet2d", (2, 48, 48), dict(model_channels=6, channel_mult=(1, 2, 2, 1), attention_levels=(4,))),
    ("unet2d", (3, 16, 24), dict(model_channels=40, channel_mult=(1,), mid_attention=False)),
    ("dual_unet2d", (2, 32, 32), TINY_UNET),
    ("dual_unet2d", (2, 48, 48), dict(model_channels=8, channel_mult=(1, 1, 2, 2), num_res_blocks=2)),
]


def randomize_zero_params(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give zero-initialised parameters random values so that an untrained net has a non-trivial output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net


@pytest.mark.parametrize(("kind", "shape", "sizes"), SHAPE_CASES)
def test_output_shapes(kind, shape, sizes):
    net = make_network(kind, shape, **sizes)
    x = torch.randn(3, *shape)
    out = net(x, torch.rand(3))
    outs = out if kind == "dual_unet2d" else (out,)
    assert len(outs) == (2 if kind == "dual_unet2d" else 1)
    for y in outs:
        assert y.shape == x.shape and y.dtype == torch.float32
    # zero-initialised output layer: a fresh network predicts exactly 0
    assert all(torch.equal(y, torch.zeros_like(y)) for y in outs)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters()) > 0


def test_parameter_count_known_answer():
    # time MLP Linear(2,8)+Linear(8,8) = 24+72, input Linear(2,4) = 12, LayerNorm(4) = 8, output Linear(4,2) = 10
    assert count_parameters(MLP((2,), width=4, num_blocks=0, time_channels=2)) == 126
    # each residual block: LayerNorm 8, fc1 20, FiLM Linear(8, 8) 72, fc2 20
    assert count_parameters(MLP((2,), width=4, num_blocks=1, time_channels=2)) == 126 + 120
    assert count_parameters(MLP((2,), width=4, num_blocks=1, time_conditioned=False)) == 12 + 48 + 8 + 10


@pytest.mark.parametrize(
    ("channels", "groups"), [(1, 1), (7, 7), (16, 16), (33, 11), (40, 20), (48, 24), (64, 32)]
)
def test_num_groups(channels, groups):
    assert num_groups(channels) == groups


@pytest.mark.parametrize(
    ("kind", "shape", "sizes", "shift"),
    [
        ("unet1d", (40,), dict(model_channels=8, channel_mult=(1, 2, 2)), (4,)),
        ("unet1d", (40,), dict(model_channels=8, channel_mult=(1, 2, 2, 2), attention_levels=(2,)), (16,)),
        ("unet2d", (2, 32, 32), dict(model_channels=8, channel_mult=(1, 2, 2)), (4, 12)),
        ("dual_unet2d", (2, 16, 24), dict(model_channels=8, channel_mult=(1, 2)), (6, -2)),
    ],
)
def test_periodic_shift_equivariance(kind, shape, sizes, shift):
    """Rolling the input by a multiple of the total down-sampling factor rolls the output identically."""
    torch.manual_seed(0)
    net = randomize_zero_params(make_network(kind, shape, **sizes)).double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    t = torch.tensor([0.1, 0.7], dtype=torch.float64)
    dims = tuple(range(-len(shift), 0))

    def outputs(inp):
        out = net(inp, t)
        return out if isinstance(out, tuple) else (out,)

    for y, y_shifted in zip(outputs(x), outputs(torch.roll(x, shift, dims)), strict=True):
        assert y.std() > 1e-3  # non-trivial output, so the comparison below means something
        torch.testing.assert_close(y_shifted, torch.roll(y, shift, dims), rtol=1e-9, atol=1e-9)
        # the wrap-around matters: the output is not equivariant to a shift with zero fill
        x_zero = torch.roll(x, shift, dims)
        x_zero[(..., slice(0, abs(shift[-1]))) if shift[-1] > 0 else (..., slice(shift[-1], None))] = 0.0
        assert not torch.allclose(outputs(x_zero)[0], torch.roll(outputs(x)[0], shift, dims), atol=1e-6)


def test_sinusoidal_embedding_known_values():
    t = torch.tensor([0.0, 2.0])
    e = sinusoidal_embedding(t, 5, max_period=100.0)
    # half = 2 frequencies: 1 and 100^(-1/2) = 0.1; odd channel count pads one zero column
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [2.0, 0.2, 2.0, 0.2, 0.0]])
    expected[1, :2] = torch.cos(expected[1, :2])
    expected[1, 2:4] = torch.sin(expected[1, 2:4])
    torch.testing.assert_close(e, expected)


def test_time_embedding_distinguishes_nearby_times():
    """With 1000·t the features of t = 0.01 and 0.02 differ a lot; with the reference's raw t they barely do."""
    t = torch.tensor([0.01, 0.02])

    def rel_diff(scale):
        e = sinusoidal_embedding(scale * t, 64)
        return ((e[0] - e[1]).norm() / e[0].norm()).item()

    assert rel_diff(1000.0) > 0.5
    assert rel_diff(1.0) < 0.01  # method.md B12: the reference's weak time conditioning
    # and through a (randomised) network: outputs at the two times differ meaningfully
    torch.manual_seed(1)
    x = torch.randn(1, 2, 16, 16).expand(2, -1, -1, -1)
    for scale, lo, hi in [(1000.0, 0.05, None), (1.0, None, 0.02)]:
        torch.manual_seed(1)
        net = randomize_zero_params(make_network("unet2d", (2, 16, 16), time_scale=scale, **TINY_UNET))
        y = net(x, t)
        diff = ((y[0] - y[1]).norm() / y[0].norm()).item()
        assert (lo is None or diff > lo) and (hi is None or diff < hi), (scale, diff)


def test_time_embedding_module_shape():
    emb = TimeEmbedding(8, 32)
    assert emb(torch.rand(5)).shape == (5, 32)
    with pytest.raises(ValueError, match="time_scale"):
        TimeEmbedding(8, 32, time_scale=0.0)


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_time_free_networks(kind):
    shape = (3,) if kind == "mlp" else (16,) if kind == "unet1d" else (2, 8, 8)
    sizes = {} if kind == "mlp" else TINY_UNET
    net = randomize_zero_params(make_network(kind, shape, time_conditioned=False, **sizes))
    assert not any("time_embed" in name or "film" in name for name, _ in net.named_parameters())
    x = torch.randn(2, *shape)
    out_none, out_t = net(x), net(x, torch.rand(2))
    for a, b in zip(
        out_none if isinstance(out_none, tuple) else (out_none,),
        out_t if isinstance(out_t, tuple) else (out_t,),
        strict=True,
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kind", "shape", "sizes"), [SHAPE_CASES[0], SHAPE_CASES[3], SHAPE_CASES[5], SHAPE_CASES[7]]
)
def test_config_round_trip(kind, shape, sizes):
    net = randomize_zero_params(make_network(kind, shape, **sizes))
    config = json.loads(json.dumps(net.config))
    assert config == net.config and config["kind"] == kind and config["state_shape"] == list(shape)
    rebuilt = network_from_config(config)
    rebuilt.load_state_dict(net.state_dict())
    x, t = torch.randn(2, *shape), torch.rand(2)
    a, b = net(x, t), rebuilt(x, t)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
        assert torch.equal(u, v)


def test_generator_makes_initial_weights_reproducible():
    state = torch.random.get_rng_state()
    nets = [make_network("mlp", (3,), width=8, generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert torch.equal(torch.random.get_rng_state(), state)  # global stream untouched
    p = [torch.cat([q.flatten() for q in n.parameters()]) for n in nets]
    assert torch.equal(p[0], p[1]) and not torch.equal(p[0], p[2])


def test_float64_and_scalar_time():
    net = randomize_zero_params(make_network("unet1d", (8,), **TINY_UNET)).double()
    x = torch.randn(3, 8, dtype=torch.float64)
    y = net(x, 0.3)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, net(x, torch.full((3,), 0.3, dtype=torch.float64)))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown network kind 'resnet'"):
        make_network("resnet", (3,))
    with pytest.raises(ValueError, match="unknown size"):
        make_network("mlp", (3,), model_channels=4)
    with pytest.raises(ValueError, match=r"not divisible by 2\^\(len\(channel_mult\)-1\) = 16"):
        make_network("unet1d", (40,), channel_mult=(1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"unet2d needs a state shape \(C, n, m\)"):
        make_network("unet2d", (40,))
    with pytest.raises(ValueError, match=r"unet1d needs a state shape \(D,\)"):
        make_network("unet1d", (2, 8, 8))
    with pytest.raises(ValueError, match="state_shape"):
        make_network("mlp", (3, 0))
    with pytest.raises(ValueError, match="channel_mult"):
        make_network("unet2d", (2, 8, 8), channel_mult=())
    with pytest.raises(ValueError, match="num_heads"):
        make_network("unet2d", (2, 8, 8), model_channels=6, num_heads=5)
    net = make_network("unet2d", (2, 8, 8), **TINY_UNET)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 2, 8, 8\), got \(1, 2, 8, 16\)"):
        net(torch.zeros(1, 2, 8, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="t is None"):
        net(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        net(torch.zeros(2, 2, 8, 8), torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("kind", "shape", "sizes"), [SHAPE_CASES[1], SHAPE_CASES[3], SHAPE_CASES[5], SHAPE_CASES[7]]
)
def test_cuda_matches_cpu(kind, shape, sizes):
    """The same weights give the same outputs on CUDA as on the CPU (float32; TF32 convolutions allowed)."""
    torch.manual_seed(0)
    net = randomize_zero_params(make_network(kind, shape, **sizes))
    x, t = torch.randn(4, *shape), torch.rand(4)
    cpu = net(x, t)
    gpu = net.to("cuda")(x.cuda(), t.cuda())
    for a, b in zip(
        cpu if isinstance(cpu, tuple) else (cpu,), gpu if isinstance(gpu, tuple) else (gpu,), strict=True
    ):
        assert b.device.type == "cuda" and b.dtype == torch.float32
        assert ((b.cpu() - a).norm() / a.norm()).item() < 5e-3
