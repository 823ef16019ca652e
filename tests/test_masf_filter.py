"""MASF as a filter: arguments, checkpoints, and the Kalman filter as a known answer on a linear system."""

import numpy as np
import pytest
import torch

from masf.assimilate import run
from masf.filters import Context, make_filter
from masf.filters.masf import MASF
from masf.filters.score_common import STATE_KEY
from masf.operators import Sigmoid, every_kth, grid_mask
from masf.rng import generator
from masf.systems import LinearGaussian, Lorenz96


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"sampler": "ddim"}, "sampler must be one of"),
        ({"nfe": 0}, "nfe must be an integer >= 1"),
        ({"sampler": "bridge", "guidance_weights": [1, 1, 1]}, "bridge sampler has no"),
        ({"sampler": "reference", "score_weights": [1, 2]}, r"score_weights must be \(min, max, power\)"),
        ({"T": 1.0}, "T must be < 1"),
        ({"eval_time": "later"}, "eval_time must be one of"),
        ({"sampler": "nonlinear", "network": "unet2d"}, "needs a dual-head network"),
        ({"score_model": "exact"}, "score_model must be one of"),
        ({"finetune_epochs": -1}, "finetune_epochs must be an integer >= 0"),
        ({"pretrain_lr": 0}, "pretrain_lr must be a finite number > 0"),
        ({"compile": "yes"}, "compile must be True or False"),
    ],
)
def test_bad_hyper_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        MASF(**params)


def test_factory_and_operator_check():
    f = make_filter("masf", sampler="reference", nfe=10, score_weights=[1, 1, 1])
    assert f.score_weights == (1.0, 1.0, 1.0) and f.needs_pretraining
    assert not make_filter("masf", scratch=True).needs_pretraining
    with pytest.raises(ValueError, match="has no hyper-parameter 'bogus'"):
        make_filter("masf", bogus=1)
    with pytest.raises(ValueError, match="needs a mask"):
        MASF(sampler="bridge").check_operator(Sigmoid(alpha=2.0, noise_std=0.1, state_shape=(8,)))
    with pytest.raises(ValueError, match="2-D fields"):
        MASF(sampler="nonlinear").kind((40,))
    with pytest.raises(ValueError, match="score_model 'gaussian' needs a mask operator"):
        MASF(sampler="nonlinear", score_model="gaussian")
    for sampler in ("bridge", "reference"):  # the exact Gaussian x0-predictor with a mask sampler is fine
        assert MASF(sampler=sampler, score_model="gaussian").score_model == "gaussian"


def _kalman(system, mask, sigma, obs, mean, cov):
    F, Q = system.F.numpy(), system.Q.numpy()
    H = np.diag(mask)[mask > 0]
    R = sigma**2 * np.eye(H.shape[0])
    means, variances = [], []
    for z in obs:
        mean, cov = F @ mean, F @ cov @ F.T + Q
        K = cov @ H.T @ np.linalg.inv(H @ cov @ H.T + R)
        mean = mean + K @ (H @ z - H @ mean)
        cov = (np.eye(len(mean)) - K @ H) @ cov
        means.append(mean)
        variances.append(np.diag(cov))
    return np.array(means), np.array(variances)


@pytest.mark.slow
@pytest.mark.parametrize("nfe", [10, 30])
def test_bridge_with_gaussian_denoiser_tracks_the_kalman_filter(nfe):
    """Linear-Gaussian dynamics, half the components observed: MASF-bridge with the exact x0-predictor of
    the forecast ensemble's Gaussian fit reproduces the Kalman filter's analysis mean and variance at the
    nfe the shipped configs run (10, 30)."""
    system = LinearGaussian.default(4)
    operator = every_kth((4,), k=2, noise_std=0.5)
    seed, n_cycles, n_members = 7, 5, 20000
    x = system.sample_initial(1, generator=generator(seed, "truth"), dtype=torch.float64)
    truth = []
    for _ in range(n_cycles):
        x = system.step(x, generator=generator(seed, "truth"))
        truth.append(x[0])
    truth = torch.stack(truth)
    obs = operator.observe(truth, generator=generator(seed, "obs_noise"))
    ens = system.sample_initial(n_members, generator=generator(seed, "ensemble"), dtype=torch.float64)
    f = MASF(sampler="bridge", nfe=nfe, score_model="gaussian")
    ds = run(system, operator, f, obs, ens, truth=truth, seed=seed, keep_members=True)
    kf_mean, kf_var = _kalman(
        system, operator.mask.numpy(), 0.5, obs.numpy(), system.mean0.numpy(), system.cov0.numpy()
    )
    err = np.abs(ds["mean"].values - kf_mean)
    assert err.max() < 5 * np.sqrt(kf_var.max() / n_members) + 0.01, err.max()
    var = ds["members"].values.var(axis=1, ddof=1)
    np.testing.assert_allclose(var, kf_var, rtol=0.05)
    kf_rmse = np.sqrt(((kf_mean - truth.numpy()) ** 2).mean(1))
    np.testing.assert_allclose(ds["rmse"].values, kf_rmse, atol=0.02)


def test_pretrain_analyse_and_checkpoint_guard(tmp_path):
    system = Lorenz96(dim=16)
    operator = every_kth((16,), k=4, noise_std=1.0)
    data = system.sample_climatology(64, generator=generator(0, "pretrain_data"), spinup_steps=40)
    f = MASF(sampler="bridge", nfe=8, pretrain_epochs=2, pretrain_batch=16, finetune_epochs=1, width=16)
    ckpt = tmp_path / "net.pt"
    f.pretrain(data, operator, checkpoint=str(ckpt), generator=generator(0, "train"), progress=False)
    assert ckpt.exists()
    prior = data[:6]
    z = operator.observe(data[6:7], generator=generator(0, "obs_noise"))[0]
    ctx = Context(
        generator=generator(0, "sampling"),
        train_generator=generator(0, "train"),
        pretrained=str(ckpt),
        climatology=data,  # the pathwise x0 draws and the fine-tuning replay
    )
    for cycle in range(2):
        ctx.cycle = cycle
        post = f.analyse(prior, z, operator, ctx)
        assert post.shape == prior.shape and torch.isfinite(post).all()
    assert ctx.timings["sampling"] > 0 and ctx.timings["finetune"] > 0
    # the denoiser is conditioned on the diffusion time
    net = ctx.state[STATE_KEY].net
    assert net.config["time_conditioned"]
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        early, late = net(x, torch.full((3,), 0.1)), net(x, torch.full((3,), 0.9))
    assert float((early - late).abs().max()) > 1e-6  # exactly 0 for a time-free net
    # observed entries are pulled to the measurement (bridge starts from z on them)
    obs_idx = operator.observed_index()
    assert (post[:, obs_idx].mean(0) - z[obs_idx]).abs().mean() < (
        prior[:, obs_idx].mean(0) - z[obs_idx]
    ).abs().mean()
    other = every_kth((16,), k=2, noise_std=1.0)
    ctx2 = Context(generator=generator(0, "sampling"), pretrained=str(ckpt))
    with pytest.raises(ValueError, match="operator"):
        f.analyse(prior, z, other, ctx2)


def test_reference_sampler_on_a_grid_runs_with_scratch_training():
    operator = grid_mask((2, 8, 8), stride=2, noise_std=0.1)
    gen = torch.Generator().manual_seed(0)
    prior = torch.randn(4, 2, 8, 8, generator=gen)
    z = operator.observe(prior[:1], generator=gen)[0]
    f = MASF(sampler="reference", nfe=5, scratch=True, scratch_epochs=2, finetune_batch=4, width=8)
    ctx = Context(generator=generator(1, "sampling"), train_generator=generator(1, "train"))
    post = f.analyse(prior, z, operator, ctx)
    assert post.shape == prior.shape and torch.isfinite(post).all()
    assert ctx.state[STATE_KEY].net.config["time_conditioned"]  # a denoiser of (x_t, t), also from scratch


def test_dual_head_loss_known_answer():
    """The nonlinear sampler's two-head loss is ‖x̂0 − x0‖² + ‖ĥ − (H_n(x0) + σ_n ξ)‖² (means): with
    x0 = 0 and a net returning (0, H_n(0)) it is E[σ_n² ξ²] = σ_n²."""
    from masf.diffusion.normalizer import Normalizer

    op = Sigmoid(alpha=2.0, noise_std=0.3, state_shape=(1, 8, 8))
    f = MASF(sampler="nonlinear")
    process = f.process(op, Normalizer.identity())
    x0 = torch.zeros(400, 1, 8, 8, dtype=torch.float64)
    h0 = process.H_n(x0)

    def net(x, t):
        return torch.zeros_like(x), h0

    loss = f.loss(process)(net, x0, torch.Generator().manual_seed(0))
    assert float(loss) == pytest.approx(0.3**2, rel=0.02)


def test_compiled_network_gives_the_same_analyses(tmp_path):
    """``compile=True`` (torch.compile of the network, CUDA graphs on a GPU) changes the kernels, not the
    method: two analyses (the second after a fine-tuning step) equal the eager ones to float32 rounding."""
    system = Lorenz96(dim=16)
    operator = every_kth((16,), k=4, noise_std=1.0)
    data = system.sample_climatology(64, generator=generator(0, "pretrain_data"), spinup_steps=40)
    sizes = {"network": "mlp", "width": 16, "nfe": 4, "pretrain_epochs": 1, "pretrain_batch": 16}
    ckpt = tmp_path / "net.pt"
    MASF(**sizes).pretrain(
        data, operator, checkpoint=str(ckpt), generator=generator(0, "train"), progress=False
    )
    prior = data[:6]
    z = operator.observe(data[6:7], generator=generator(0, "obs_noise"))[0]
    posts = {}
    for compiled in (False, True):
        f = MASF(sampler="bridge", finetune_epochs=1, finetune_batch=8, compile=compiled, **sizes)
        ctx = Context(
            generator=generator(0, "sampling"),
            train_generator=generator(0, "train"),
            pretrained=str(ckpt),
            climatology=data,
        )
        out = []
        for cycle in range(2):
            ctx.cycle = cycle
            out.append(f.analyse(prior, z, operator, ctx))
        assert ctx.timings["finetune"] > 0
        assert (ctx.state[STATE_KEY].net._compiled_call_impl is not None) is compiled
        posts[compiled] = torch.stack(out)
    torch.testing.assert_close(posts[True], posts[False], rtol=1e-4, atol=1e-4)
