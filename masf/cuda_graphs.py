"""Repeating one fixed tensor program as replays of a CUDA graph (docs/architecture.md, "CUDA graphs").

A time stepper launches the same few hundred small kernels every step; on a GPU at 64²–128² their
launch cost, not their arithmetic, sets the time (``benchmarks/kolmogorov_speed/``: 0.9 ms per inner step
at every batch size). :func:`iterate` records one application of a step function once per
(key, shapes, dtypes, device) and then replays it: one launch per step instead of one per kernel.

The step function must be pure (no in-place writes to its inputs), map tensors to tensors of the same
shapes, dtypes and device, and contain no host synchronisation (no ``.item()``, no data-dependent
Python branches): what it computes is frozen at capture. Tensors it closes over are kept alive by the
cache entry, so the graph's recorded addresses stay valid.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

StepFn = Callable[..., tuple[Tensor, ...]]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    state: tuple[Tensor, ...]  # static buffers: one replay maps them to fn(*state) in place
    fn: StepFn  # kept alive with the tensors it closes over


# Captured graphs, least recently used first; each holds its static buffers and a memory pool.
MAX_GRAPHS = 8
_CACHE: OrderedDict[Hashable, _Captured] = OrderedDict()


def _capture(fn: StepFn, state: tuple[Tensor, ...]) -> _Captured:
    device = state[0].device
    static = tuple(t.clone() for t in state)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up off the capture: FFT plans, library handles, allocator blocks
        for _ in range(2):
            fn(*static)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
        for buffer, new in zip(static, out, strict=True):
            buffer.copy_(new)
    return _Captured(graph=graph, state=static, fn=fn)


def iterate(fn: StepFn, state: tuple[Tensor, ...], times: int, key: Hashable) -> tuple[Tensor, ...]:
    """``times`` applications of ``fn`` to the CUDA tensors ``state``, as replays of one captured graph.

    ``key`` names the program (e.g. the system instance): the same key with the same shapes, dtypes and
    device reuses the graph captured first, so ``fn`` must compute the same thing for equal keys.
    Returns new tensors (the static buffers are copied out).
    """
    if not state or not all(isinstance(t, Tensor) and t.is_cuda for t in state):
        raise ValueError("cuda_graphs.iterate: state must be a non-empty tuple of CUDA tensors")
    full_key = (key, tuple((tuple(t.shape), t.dtype, t.device) for t in state))
    captured = _CACHE.get(full_key)
    if captured is None:
        captured = _capture(fn, state)
        _CACHE[full_key] = captured
        while len(_CACHE) > MAX_GRAPHS:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(full_key)
    for buffer, value in zip(captured.state, state, strict=True):
        buffer.copy_(value)
    for _ in range(times):
        captured.graph.replay()
    return tuple(buffer.clone() for buffer in captured.state)
