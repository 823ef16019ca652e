"""Online fine-tuning (docs/finetuning.md): the training mixture, reset, and optimizer persistence."""

import math

import pytest
import torch

from masf.nets import make_network
from masf.train.online import OnlineTrainer, bank_draws, mixture_draws


def _mse_loss(net, x0, generator):
    t = torch.rand((x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    return (net(x0 + 0.3 * noise, t) - x0).square().mean()


def _flat(net):
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def test_mixture_draws_have_the_replay_fraction_and_the_jitter_width():
    g = torch.Generator().manual_seed(0)
    members = torch.randn(20, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + 100.0  # far from the bank
    bank = torch.randn(500, 3, generator=g)
    n = 40000
    x = mixture_draws(members, bank, replay=0.3, jitter=0.5)(n, torch.Generator().manual_seed(1))
    from_bank = x[:, 0] < 50.0
    assert from_bank.float().mean().item() == pytest.approx(0.3, abs=4 * math.sqrt(0.3 * 0.7 / n))
    # member draws: a member plus 0.5 · (member std) · N(0, 1): the variance of the draws around the
    # members' mean is s² (1 + 0.5²) per entry (s² with ddof 1 against the sample variance with ddof 0)
    s2 = members.var(0, correction=1)
    v = x[~from_bank].var(0, correction=0)
    expected = members.var(0, correction=0) + 0.25 * s2
    torch.testing.assert_close(v, expected, rtol=0.05, atol=0)
    # replay 0 or no bank: members only; jitter 0: exact members
    y = mixture_draws(members, None, replay=0.5, jitter=0.0)(100, torch.Generator().manual_seed(2))
    assert bool((y[:, None, :] == members[None]).all(-1).any(1).all())


def test_bank_and_mixture_arguments_are_checked():
    m = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="replay must be in"):
        mixture_draws(m, m, replay=1.0, jitter=0.0)
    with pytest.raises(ValueError, match="jitter must be"):
        mixture_draws(m, m, replay=0.0, jitter=-1.0)
    with pytest.raises(ValueError, match="bank states"):
        mixture_draws(m, torch.zeros(4, 3), replay=0.5, jitter=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        bank_draws(torch.zeros(0, 2))
    net = make_network("mlp", (2,), width=8, num_blocks=1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        OnlineTrainer(net, lr=1e-3, batch_size=4, optimizer="adam")


def test_reset_returns_to_the_pretrained_weights_and_bounds_the_drift():
    """With reset every cycle starts from the pretrained weights: with a fresh optimizer and the same
    minibatches each cycle ends on exactly the same weights; with the persistent optimizer the distance
    from the pretrained weights levels off; without reset the cycles' excursions add up."""
    g = torch.Generator().manual_seed(0)
    members = torch.randn(16, 4, generator=g) + 3.0
    start = _flat(
        make_network("mlp", (4,), width=16, num_blocks=1, generator=torch.Generator().manual_seed(1))
    )
    dist = {}
    for reset in (True, False):
        for optimizer in ("persistent", "fresh"):
            net = make_network(
                "mlp", (4,), width=16, num_blocks=1, generator=torch.Generator().manual_seed(1)
            )
            trainer = OnlineTrainer(net, lr=1e-2, batch_size=8, reset=reset, optimizer=optimizer)
            d = []
            for _ in range(8):
                trainer.fit_cycle(members, None, _mse_loss, 5, torch.Generator().manual_seed(3))
                d.append((_flat(net) - start).norm().item())
            dist[reset, optimizer] = d
            if reset:  # zero steps: exactly the pretrained weights again
                trainer.fit_cycle(members, None, _mse_loss, 0, torch.Generator().manual_seed(3))
                assert torch.equal(_flat(net), start)
    assert len(set(dist[True, "fresh"])) == 1  # measured 2.63 every cycle
    late = dist[True, "persistent"][4:]  # measured 5.29 .. 5.62
    assert max(late) < 1.15 * min(late)
    for optimizer in ("persistent", "fresh"):  # measured 11.8 and 9.4 after 8 cycles, from 2.63
        assert dist[False, optimizer][-1] > 1.6 * dist[True, "persistent"][-1]
        assert dist[False, optimizer][-1] > 3 * dist[False, optimizer][0]


def test_persistent_optimizer_keeps_its_moments_and_fresh_does_not():
    members = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    steps = {}
    for mode in ("persistent", "fresh"):
        net = make_network("mlp", (4,), width=8, num_blocks=1)
        trainer = OnlineTrainer(net, lr=1e-3, batch_size=4, optimizer=mode)
        for _ in range(3):
            loss = trainer.fit_cycle(members, None, _mse_loss, 4, torch.Generator().manual_seed(1))
            assert math.isfinite(loss)
        state = trainer._optimizer.state[next(iter(net.parameters()))]
        steps[mode] = int(state["step"])
    assert steps == {"persistent": 12, "fresh": 4}


def test_non_finite_loss_is_an_error():
    net = make_network("mlp", (2,), width=8, num_blocks=1)
    trainer = OnlineTrainer(net, lr=1e-3, batch_size=4)

    def bad(net, x0, generator):
        return net(x0, torch.zeros(x0.shape[0])).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="non-finite fine-tuning loss"):
        trainer.fit_cycle(torch.zeros(4, 2), None, bad, 2, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("update", ["fixed", "adaptive"])
def test_finetuning_refits_an_adaptive_normalizer_on_the_forecast_and_keeps_a_fixed_one(update):
    """finetune_model refits an ``adaptive`` normalizer on the forecast members before training; a
    ``fixed`` one keeps the statistics of its first fit (the pretraining climatology)."""
    from masf.diffusion import Normalizer
    from masf.filters.base import Context
    from masf.filters.masf import MASF
    from masf.filters.score_common import ScoreModel, finetune_model

    g = torch.Generator().manual_seed(0)
    climatology = torch.randn(200, 4, generator=g)
    forecast = 3.0 + 0.5 * torch.randn(10, 4, generator=g)
    normalizer = Normalizer("affine", update).fit(climatology)
    net = make_network("mlp", (4,), width=8, num_blocks=1, generator=torch.Generator().manual_seed(1))
    model = ScoreModel(net=net, normalizer=normalizer)
    ctx = Context(generator=torch.Generator().manual_seed(2), cycle=1, train_generator=torch.Generator())
    f = MASF(finetune_epochs=1, finetune_batch=5, finetune_replay=0.0)
    finetune_model(model, forecast, _mse_loss, ctx, f)
    expected = Normalizer("affine").fit(forecast if update == "adaptive" else climatology)
    torch.testing.assert_close(model.normalizer.x_shift, expected.x_shift)
    torch.testing.assert_close(model.normalizer.x_scale, expected.x_scale)


def test_pathwise_draws_come_from_the_fitted_mixture_after_fine_tuning_else_the_climatology():
    """The bridge's x0* draws must come from the distribution the network was last fitted to: the
    trainer's mixture in a fine-tuned cycle (replay 0: the members), the climatology bank otherwise."""
    from masf.diffusion import Normalizer
    from masf.filters.base import Context
    from masf.filters.score_common import ScoreModel, prior_draws

    g = torch.Generator().manual_seed(0)
    climatology = 100.0 + torch.randn(30, 3, generator=g)
    members = torch.randn(6, 3, generator=g)
    normalizer = Normalizer.identity()
    net = make_network("mlp", (3,), width=8, num_blocks=1, generator=torch.Generator().manual_seed(1))
    model = ScoreModel(net=net, normalizer=normalizer)
    ctx = Context(generator=torch.Generator().manual_seed(2), climatology=climatology)

    def rows_of(draws, pool):
        return bool((draws.unsqueeze(1) == pool.unsqueeze(0)).all(-1).any(-1).all())

    untuned = prior_draws(model, members, ctx, "masf")(40, torch.Generator().manual_seed(3))
    assert rows_of(untuned, climatology)
    model.trainer = OnlineTrainer(net, lr=1e-3, batch_size=4, replay=0.0)
    model.tuned = True
    tuned = prior_draws(model, members, ctx, "masf")(40, torch.Generator().manual_seed(3))
    assert rows_of(tuned, members)
