"""jax-cfd 0.2.1 side of the Kolmogorov benchmark: a worker driven over stdin/stdout by ``run.py``.

Runs in its own virtual environment (jax 0.4.33, see README.md), never in the project's. It sets up the
reference setup of anchors.md §2.4 (semi-implicit Navier-Stokes, Kolmogorov forcing with drag 0.1,
Re = 1000, CFL inner step from max velocity 5 and Courant 0.5, Δt = 0.2) and answers one JSON request
per input line with one JSON line:

    {"cmd": "setup", "n": 64, "batch": 10}                 -> {"inner_steps", "compile_s"}
    {"cmd": "time", "n": 64, "batch": 10, "steps": 5}      -> {"seconds_per_step", "cpu_seconds_per_step"}
    {"cmd": "stats", "n": 64, "members": 8, "seed": 0,
     "spinup": 50, "steps": 50, "out": "/tmp/x.npy"}        -> {"path", "shape"}
    {"cmd": "quit"}

``stats`` saves the velocities at outer steps spinup..spinup+steps as float32 (members, time, 2, n, n),
arrays as jax-cfd holds them: indexed [channel, x, y] on the staggered MAC grid.
"""

from __future__ import annotations

import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import jax.random as jrn
import jax_cfd.base as cfd
import numpy as np

DT, VISCOSITY = 0.2, 1e-3
_CACHE: dict[tuple[int, int], tuple] = {}


def build(n: int) -> tuple:
    """(prior, transition, inner_steps) for an n×n grid, both jitted and vectorized over a batch."""
    grid = cfd.grids.Grid(shape=(n, n), domain=((0, 2 * math.pi), (0, 2 * math.pi)))
    bc = cfd.boundaries.periodic_boundary_conditions(2)
    forcing = cfd.forcings.simple_turbulence_forcing(
        grid=grid,
        constant_magnitude=1.0,
        constant_wavenumber=4.0,
        linear_coefficient=-0.1,
        forcing_type="kolmogorov",
    )
    dt_min = cfd.equations.stable_time_step(
        grid=grid, max_velocity=5.0, max_courant_number=0.5, viscosity=VISCOSITY
    )
    steps = 1 if dt_min > DT else math.ceil(DT / dt_min)
    step = cfd.funcutils.repeated(
        cfd.equations.semi_implicit_navier_stokes(
            grid=grid, forcing=forcing, dt=DT / steps, density=1.0, viscosity=VISCOSITY
        ),
        steps=steps,
    )

    def prior(key):
        u, v = cfd.initial_conditions.filtered_velocity_field(
            key, grid=grid, maximum_velocity=3.0, peak_wavenumber=4.0
        )
        return jnp.stack((u.data, v.data))

    def transition(uv):
        u, v = cfd.initial_conditions.wrap_variables(var=tuple(uv), grid=grid, bcs=(bc, bc))
        u, v = step((u, v))
        return jnp.stack((u.data, v.data))

    prior_b = jax.jit(jnp.vectorize(prior, signature="(K)->(C,H,W)"))
    transition_b = jax.jit(jnp.vectorize(transition, signature="(C,H,W)->(C,H,W)"))
    return prior_b, transition_b, steps


def setup(n: int, batch: int) -> dict:
    if (n, batch) in _CACHE:
        return {"inner_steps": _CACHE[(n, batch)][2], "compile_s": 0.0}
    t0 = time.perf_counter()
    prior, transition, steps = build(n)
    x = prior(jrn.split(jrn.PRNGKey(0), batch))
    x = transition(x).block_until_ready()
    _CACHE[(n, batch)] = (prior, transition, steps, x)
    return {"inner_steps": steps, "compile_s": time.perf_counter() - t0}


def timing(n: int, batch: int, steps: int) -> dict:
    setup(n, batch)
    prior, transition, inner, x = _CACHE[(n, batch)]
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        x = transition(x)
    x.block_until_ready()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not bool(jnp.isfinite(x).all()):
        raise RuntimeError("jax-cfd state became non-finite")
    _CACHE[(n, batch)] = (prior, transition, inner, x)
    return {"seconds_per_step": elapsed / steps, "cpu_seconds_per_step": cpu / steps}


def stats(n: int, members: int, seed: int, spinup: int, steps: int, out: str) -> dict:
    prior, transition, _ = build(n)
    x = prior(jrn.split(jrn.PRNGKey(seed), members))
    for _ in range(spinup):
        x = transition(x)
    frames = [np.asarray(x)]
    for _ in range(steps):
        x = transition(x)
        frames.append(np.asarray(x))
    arr = np.stack(frames, axis=1).astype(np.float32)
    np.save(out, arr)
    return {"path": out, "shape": list(arr.shape)}


def main() -> None:
    versions = {
        "jax": jax.__version__,
        "jax_cfd": getattr(cfd, "__version__", "0.2.1"),
        "numpy": np.__version__,
    }
    print(json.dumps({"ready": True, "versions": versions}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req.pop("cmd")
        if cmd == "quit":
            break
        try:
            if cmd == "setup":
                reply = setup(req["n"], req["batch"])
            elif cmd == "time":
                reply = timing(req["n"], req["batch"], req["steps"])
            elif cmd == "stats":
                reply = stats(**req)
            else:
                raise ValueError(f"unknown cmd {cmd!r}")
        except Exception as exc:  # report to the driver instead of dying silently
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
