"""Tests of masf.train: checkpoints, exact resume, SIGTERM, validation, fine-tuning, a learned x0-predictor."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from masf.nets import make_network
from masf.train import (
    StopOnSignal,
    TrainingInterrupted,
    finetune,
    fit,
    load_checkpoint,
    pretrain,
    save_checkpoint,
)
from masf.train import checkpoint as checkpoint_module

TAU, T_END = 1e-5, 0.992


def cosine_a(t: torch.Tensor) -> torch.Tensor:
    """Cosine signal coefficient a(t) (method.md §2.1), t already in [tau, T]."""
    c = 0.008
    return torch.cos((t + c) / (1 + c) * math.pi / 2) / math.cos(c / (1 + c) * math.pi / 2)


def gaussian_forward(x0: torch.Tensor, generator: torch.Generator):
    """Plain VP forward process x_t = a(t) x0 + r(t) ε with t ~ U(tau, T); returns (x_t, t, a, r)."""
    t = TAU + (T_END - TAU) * torch.rand(len(x0), generator=generator, device=generator.device).to(x0)
    a = cosine_a(t)[:, None]
    r = torch.sqrt(1 - a**2)
    eps = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0)
    return a * x0 + r * eps, t, a, r


def x0_loss(net, x0, generator):
    """x0-prediction MSE under the plain Gaussian forward process (method.md §5.2 with VP noise)."""
    xt, t, _, _ = gaussian_forward(x0, generator)
    return ((net(xt, t) - x0) ** 2).mean()


def tiny_setup(seed: int = 0, n: int = 23):
    """A tiny MLP (initial weights from the seed) and data; identical in every process."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(n, 3, generator=gen) * torch.tensor([1.0, 2.0, 0.5]) + 1.0
    net = make_network("mlp", (3,), width=16, num_blocks=1, time_channels=8, generator=gen)
    return net, data


FIT = dict(epochs=4, batch_size=5, lr=1e-2, ema=0.9, val_fraction=0.2, progress=False)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    net, data = tiny_setup()
    fit(net, x0_loss, data, generator=torch.Generator().manual_seed(1), **{**FIT, "epochs": 1})
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x0_loss(net, data, torch.Generator().manual_seed(2)).backward()
    opt.step()
    config = {"operator": {"name": "grid_mask", "stride": 10}, "method": "masf", "sigma": 0.1}
    extra = {"epoch": 3, "gen": torch.Generator().manual_seed(4).get_state(), "losses": [1.0, 0.5]}
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, net, config, optimizer=opt, extra=extra)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind
    ck = load_checkpoint(path, expect={"operator": {"stride": 10, "name": "grid_mask"}, "state_shape": (3,)})
    assert ck.config == config and ck.network_config == net.config
    assert states_equal(ck.net.state_dict(), net.state_dict())
    x, t = torch.randn(4, 3), torch.rand(4)
    assert torch.equal(ck.net(x, t), net(x, t))
    assert torch.equal(ck.extra["gen"], extra["gen"]) and ck.extra["losses"] == [1.0, 0.5]
    opt2 = torch.optim.AdamW(ck.net.parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optimizer)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    net, _ = tiny_setup()
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, {"run": 1})
    before = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, net, {"run": 2})
    assert path.read_bytes() == before  # old file intact, no partial file under the final name
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    monkeypatch.undo()
    with pytest.raises(OSError, match="disk full"):
        monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
        save_checkpoint(tmp_path / "new.pt", net, {})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


UNPICKLED = []


def _record_unpickling() -> str:
    UNPICKLED.append(True)
    return "payload executed"


class Foreign:
    """A custom class; unpickling it would run arbitrary code (here: record that it happened)."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_load_refuses_foreign_and_corrupt_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "masf-checkpoint", "version": 1, "model": Foreign()}, foreign)
    with pytest.raises(ValueError, match=r"not a masf checkpoint.*weights_only=True"):
        load_checkpoint(foreign)
    assert UNPICKLED == []  # the object was never unpickled
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(200))
    with pytest.raises(ValueError, match="truncated, corrupt or foreign"):
        load_checkpoint(corrupt)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(ValueError, match="no format='masf-checkpoint'"):
        load_checkpoint(plain)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_load_checks_expected_config(tmp_path):
    net, _ = tiny_setup()
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, {"operator": "grid_mask", "stride": 10})
    with pytest.raises(
        ValueError, match=r"was made for operator='grid_mask', this run uses operator='center_mask'"
    ):
        load_checkpoint(path, expect={"operator": "center_mask"})
    with pytest.raises(ValueError, match=r"was made for state_shape=\[3\], this run uses state_shape=\(4,\)"):
        load_checkpoint(path, expect={"state_shape": (4,)})
    with pytest.raises(ValueError, match="records no 'normalizer'"):
        load_checkpoint(path, expect={"normalizer": "affine"})
    assert load_checkpoint(path, expect={"stride": 10, "kind": "mlp"}).config["stride"] == 10


def test_save_refuses_what_would_not_load(tmp_path):
    net, _ = tiny_setup()
    with pytest.raises(ValueError, match=r"extra\['obj'\] is a Foreign"):
        save_checkpoint(tmp_path / "a.pt", net, {}, extra={"obj": Foreign()})
    with pytest.raises(ValueError, match="config must be JSON-serialisable"):
        save_checkpoint(tmp_path / "a.pt", net, {"device": torch.device("cpu")})
    with pytest.raises(ValueError, match=r"net has no \.config"):
        save_checkpoint(tmp_path / "a.pt", torch.nn.Linear(2, 2), {})
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------- fit and resume


def test_fit_is_deterministic_and_uses_the_generator():
    nets = []
    for seed in (1, 1, 2):
        net, data = tiny_setup()
        result = fit(net, x0_loss, data, generator=torch.Generator().manual_seed(seed), **FIT)
        nets.append(result.net.state_dict())
        assert len(result.train_loss) == len(result.val_loss) == 4 and result.epochs == 4
    assert states_equal(nets[0], nets[1]) and not states_equal(nets[0], nets[2])


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    gen = torch.Generator().manual_seed(7)
    net, data = tiny_setup()
    straight = fit(net, x0_loss, data, generator=gen, checkpoint_path=tmp_path / "a.pt", **FIT)
    straight_raw = torch.load(tmp_path / "a.pt", weights_only=True)["extra"]["train"]["net"]

    gen2 = torch.Generator().manual_seed(7)
    net2, _ = tiny_setup()
    first = fit(
        net2, x0_loss, data, generator=gen2, checkpoint_path=tmp_path / "b.pt", **{**FIT, "epochs": 2}
    )
    assert first.epochs == 2
    gen3 = torch.Generator().manual_seed(7)  # a new process would start from the seed again
    net3, _ = tiny_setup()
    resumed = fit(net3, x0_loss, data, generator=gen3, checkpoint_path=tmp_path / "b.pt", **FIT)
    resumed_raw = torch.load(tmp_path / "b.pt", weights_only=True)["extra"]["train"]["net"]

    assert resumed.epochs == 4 and resumed.train_loss == straight.train_loss
    assert resumed.val_loss == straight.val_loss and resumed.best_epoch == straight.best_epoch
    assert states_equal(resumed.net.state_dict(), straight.net.state_dict())
    assert states_equal(resumed_raw, straight_raw)
    assert not states_equal(resumed_raw, straight.net.state_dict())  # EMA/best weights differ from raw ones
    assert torch.equal(gen3.get_state(), gen.get_state())
    # the final checkpoint holds the returned weights
    assert states_equal(load_checkpoint(tmp_path / "b.pt").net.state_dict(), straight.net.state_dict())


def test_checkpoint_interval_limits_the_epoch_end_writes(tmp_path, monkeypatch):
    from masf.train import loop

    written: list[int] = []
    real_write = loop.write_checkpoint

    def counting_write(path, *args, **kwargs):
        written.append(args[-1]["train"]["epoch"])
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(loop, "write_checkpoint", counting_write)
    net, data = tiny_setup()
    fit(
        net,
        x0_loss,
        data,
        generator=torch.Generator().manual_seed(7),
        checkpoint_path=tmp_path / "a.pt",
        **FIT,
    )
    assert written == [1, 2, 3, 4]  # every epoch by default
    written.clear()
    net, data = tiny_setup()
    result = fit(
        net,
        x0_loss,
        data,
        generator=torch.Generator().manual_seed(7),
        checkpoint_path=tmp_path / "b.pt",
        checkpoint_interval_s=3600.0,
        **FIT,
    )
    assert written == [1, 4]  # the first and the last epoch are always written, the interval holds the rest
    assert states_equal(load_checkpoint(tmp_path / "b.pt").net.state_dict(), result.net.state_dict())


def test_resume_refuses_other_hyper_parameters(tmp_path):
    net, data = tiny_setup()
    fit(net, x0_loss, data, generator=torch.Generator().manual_seed(0), checkpoint_path=tmp_path / "c.pt",
        **{**FIT, "epochs": 1})  # fmt: skip
    with pytest.raises(ValueError, match="was trained with batch_size=5, this run uses batch_size=4"):
        fit(net, x0_loss, data, generator=torch.Generator().manual_seed(0), checkpoint_path=tmp_path / "c.pt",
            **{**FIT, "batch_size": 4})  # fmt: skip
    # resume=False starts over and overwrites
    result = fit(net, x0_loss, data, generator=torch.Generator().manual_seed(0), checkpoint_path=tmp_path / "c.pt",
                 resume=False, **{**FIT, "batch_size": 4, "epochs": 1})  # fmt: skip
    assert result.epochs == 1


def test_a_corrupt_partial_checkpoint_is_set_aside_and_training_starts_clean(tmp_path):
    """A node that died mid-write leaves a truncated resume checkpoint: the retry moves it aside (kept for
    inspection) and trains from the start, to the same weights as a clean run, instead of failing again."""
    net, data = tiny_setup()
    whole = tmp_path / "whole.pt"
    clean = fit(net, x0_loss, data, generator=torch.Generator().manual_seed(3), checkpoint_path=whole, **FIT)
    half = whole.read_bytes()[: whole.stat().st_size // 2]
    path = tmp_path / "p.pt"
    path.write_bytes(half)
    net2, _ = tiny_setup()
    with pytest.warns(UserWarning, match=r"p\.pt is not a masf checkpoint.*set it aside as p\.pt\.corrupt"):
        again = fit(
            net2, x0_loss, data, generator=torch.Generator().manual_seed(3), checkpoint_path=path, **FIT
        )
    assert (tmp_path / "p.pt.corrupt").read_bytes() == half
    assert again.epochs == clean.epochs and states_equal(net2.state_dict(), net.state_dict())
    assert read_payload_ok(path)


def read_payload_ok(path: Path) -> bool:
    return checkpoint_module.read_payload(path)["format"] == checkpoint_module.FORMAT


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_train import FIT, tiny_setup, x0_loss
    from masf.train import StopOnSignal, fit
    torch.set_num_threads({threads})  # CPU reductions depend on the thread count: match the resuming process

    calls = [0]
    def loss_then_sigterm(net, x0, generator):
        calls[0] += 1
        if calls[0] == 7:  # calls 1-4: epoch 0's steps, 5: its validation, 6-7: epoch 1's first 2 steps
            os.kill(os.getpid(), signal.SIGTERM)
        return x0_loss(net, x0, generator)

    net, data = tiny_setup()
    with StopOnSignal() as stop:
        fit(net, loss_then_sigterm, data, generator=torch.Generator().manual_seed(3),
            checkpoint_path={path!r}, stop=stop, **FIT)
    print("not interrupted")
    """
)


def test_sigterm_saves_mid_epoch_and_resume_is_exact(tmp_path):
    path = tmp_path / "job.pt"
    threads = torch.get_num_threads()
    script = SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path), threads=threads)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "not interrupted" not in proc.stdout
    train = torch.load(path, weights_only=True)["extra"]["train"]
    assert (train["epoch"], train["step"]) == (1, 2)  # saved at the end of the step that got the signal

    net, data = tiny_setup()
    resumed = fit(net, x0_loss, data, generator=torch.Generator().manual_seed(3), checkpoint_path=path, **FIT)
    net2, _ = tiny_setup()
    straight = fit(net2, x0_loss, data, generator=torch.Generator().manual_seed(3), **FIT)
    assert states_equal(resumed.net.state_dict(), straight.net.state_dict())
    assert resumed.train_loss == straight.train_loss


def test_stop_without_checkpoint_path_raises():
    net, data = tiny_setup()
    with StopOnSignal() as stop:
        stop.requested, stop.signum = True, 15
        with pytest.raises(TrainingInterrupted, match="nothing saved") as info:
            fit(net, x0_loss, data, generator=torch.Generator().manual_seed(0), stop=stop, **FIT)
    assert info.value.code == 143


# ------------------------------------------------------------------------------ validation and fine-tuning


def recording_loss(seen: list):
    def loss_fn(net, x0, generator):
        if torch.is_grad_enabled():
            seen.append(x0.clone())
        return x0_loss(net, x0, generator)

    return loss_fn


def test_validation_split_is_held_out_and_selects_the_best_epoch():
    seen = []
    net, data = tiny_setup(n=20)
    options = {**FIT, "ema": None, "val_fraction": 0.25, "epochs": 6, "lr": 5e-2}
    result = fit(net, recording_loss(seen), data, generator=torch.Generator().manual_seed(5), **options)
    trained_rows = torch.unique(torch.cat(seen), dim=0)
    assert len(trained_rows) == 15  # 5 of 20 held out, never trained on
    assert result.best_epoch == min(range(6), key=result.val_loss.__getitem__)
    # the returned weights are those at the end of the best epoch
    net2, _ = tiny_setup(n=20)
    upto = fit(net2, x0_loss, data, generator=torch.Generator().manual_seed(5),
               **{**options, "epochs": result.best_epoch + 1})  # fmt: skip
    assert states_equal(result.net.state_dict(), upto.net.state_dict())


def test_finetune_takes_one_step_per_epoch_on_all_members_in_place():
    seen = []
    net, data = tiny_setup(n=9)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = finetune(net, data, recording_loss(seen), epochs=3, batch_size=32, lr=1e-2,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert result.net is net and result.val_loss == [] and result.best_epoch is None
    assert len(seen) == 3 and all(len(b) == 9 for b in seen)  # one step per epoch on all 9 members
    assert not states_equal(before, net.state_dict())


def test_finetune_carries_no_optimizer_state_between_calls():
    """Each call builds its own AdamW: a call after an unrelated one, from the same weights and seed,
    equals a first call (moments or step counts left over would change the update)."""
    net, data = tiny_setup(n=9)
    start = copy.deepcopy(net.state_dict())
    options = dict(epochs=2, batch_size=4, lr=1e-2)
    first = finetune(net, data, x0_loss, generator=torch.Generator().manual_seed(1), **options)
    expected = copy.deepcopy(first.net.state_dict())
    finetune(net, 3.0 * data + 1.0, x0_loss, generator=torch.Generator().manual_seed(7), **options)
    net.load_state_dict(start)
    again = finetune(net, data, x0_loss, generator=torch.Generator().manual_seed(1), **options)
    assert states_equal(again.net.state_dict(), expected)


def test_bad_arguments_are_refused():
    net, data = tiny_setup()
    gen = torch.Generator()
    cases = [
        (dict(epochs=-1), "epochs must be an int >= 0"),
        (dict(batch_size=0), "batch_size must be an int >= 1"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(val_fraction=1.0), r"val_fraction must be in \[0, 1\)"),
        (dict(ema=1.5), r"ema must be a decay in \(0, 1\)"),
        (dict(clip=0.0), "clip must be > 0 or None"),
        (dict(checkpoint_interval_s=-1.0), "checkpoint_interval_s must be >= 0"),
    ]
    for override, message in cases:
        with pytest.raises(ValueError, match=message):
            fit(net, x0_loss, data, generator=gen, **{**FIT, **override})
    with pytest.raises(ValueError, match="non-finite"):
        fit(net, x0_loss, data * float("nan"), generator=gen, **FIT)
    with pytest.raises(ValueError, match="scalar tensor"):
        fit(net, lambda n, x, g: (n(x, 0.5) - x) ** 2, data, generator=gen, **FIT)
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        fit(net, lambda n, x, g: n(x, 0.5).sum() * float("inf"), data, generator=gen, **FIT)


def test_pretrain_writes_a_loadable_checkpoint(tmp_path):
    _, data = tiny_setup()
    path = tmp_path / "pre.pt"
    config = {"operator": "identity", "method": "test"}
    result = pretrain(data, x0_loss, kind="mlp", sizes=dict(width=8, num_blocks=1), epochs=2, batch_size=8,
                      lr=1e-2, generator=torch.Generator().manual_seed(0), checkpoint_path=path, config=config,
                      progress=False)  # fmt: skip
    ck = load_checkpoint(path, expect={"operator": "identity", "state_shape": [3]})
    assert states_equal(ck.net.state_dict(), result.net.state_dict()) and ck.config == config


# ------------------------------------------------------------------------------- learned x0-predictor


@pytest.mark.slow
def test_learned_x0_predictor_matches_the_gaussian_posterior_mean():
    """method.md §11.10: a small MLP trained with the x0 loss approaches E[x0|x_t] in closed form (R² > 0.99).

    x0 ~ N(μ, P), x_t = a x0 + r ε  =>  E[x0 | x_t] = μ + a P (a² P + r² I)⁻¹ (x_t − a μ).
    """
    torch.manual_seed(0)
    d = 4
    mu = torch.tensor([1.0, -0.5, 0.3, 2.0])
    idx = torch.arange(d)
    cov = 0.8 ** (idx[:, None] - idx[None, :]).abs() * torch.tensor([1.0, 0.5, 2.0, 1.0]).sqrt().outer(
        torch.tensor([1.0, 0.5, 2.0, 1.0]).sqrt()
    )
    chol = torch.linalg.cholesky(cov)
    gen = torch.Generator().manual_seed(0)
    data = mu + torch.randn(4096, d, generator=gen) @ chol.T
    net = make_network("mlp", (d,), width=64, num_blocks=2, time_channels=16, generator=gen)
    result = fit(net, x0_loss, data, epochs=60, batch_size=128, lr=2e-3, ema=0.99, val_fraction=0.1,
                 generator=gen, progress=False)  # fmt: skip

    test_gen = torch.Generator().manual_seed(1)
    x0 = mu + torch.randn(4000, d, generator=test_gen) @ chol.T
    xt, t, a, r = gaussian_forward(x0, test_gen)
    eye = torch.eye(d)
    gain = a[:, :, None] * cov @ torch.linalg.inv(a[:, :, None] ** 2 * cov + r[:, :, None] ** 2 * eye)
    exact = mu + (gain @ (xt - a * mu)[:, :, None])[:, :, 0]
    with torch.no_grad():
        pred = result.net(xt, t)
    r2 = 1 - ((pred - exact) ** 2).sum() / ((exact - exact.mean(0)) ** 2).sum()
    print(f"R^2 = {r2.item():.4f}, train {result.seconds:.1f} s, best epoch {result.best_epoch}")
    assert r2 > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_and_resume_on_cuda(tmp_path):
    """Training on CUDA with a CUDA generator is deterministic and resumes exactly; checkpoints map devices."""

    def run(epochs, path):
        net, data = tiny_setup()
        gen = torch.Generator(device="cuda").manual_seed(11)
        return fit(
            net.cuda(), x0_loss, data.cuda(), generator=gen, checkpoint_path=path, **{**FIT, "epochs": epochs}
        )

    straight = run(4, tmp_path / "a.pt")
    assert next(straight.net.parameters()).device.type == "cuda"
    run(2, tmp_path / "b.pt")
    resumed = run(4, tmp_path / "b.pt")
    assert states_equal(resumed.net.state_dict(), straight.net.state_dict())
    assert resumed.train_loss == straight.train_loss
    ck = load_checkpoint(tmp_path / "a.pt", device="cpu")
    assert next(ck.net.parameters()).device.type == "cpu"
    assert states_equal(ck.net.state_dict(), {k: v.cpu() for k, v in straight.net.state_dict().items()})
