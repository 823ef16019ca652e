"""Checkpoints: atomic ``torch.save`` of plain containers, loaded with ``weights_only=True``.

File content (a dict of tensors, numbers, strings, lists, dicts, None; never a pickled object):

    format  "masf-checkpoint"            version  1
    network JSON string of ``net.config`` (kind, state shape, sizes) -> the network is rebuilt from it
    config  JSON string of the run's config (operator, method, normalisation, training hyper-parameters...)
    model   the network's state dict
    optimizer  optimizer state dict or None
    extra   plain containers (``fit`` keeps its resume state under ``extra["train"]``)

The file is written to a temporary name in the same folder and renamed with ``os.replace``, so a killed job
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from masf.errors import CorruptFileError
from masf.io import first_line, fsync_dir
from masf.nets import network_from_config

FORMAT = "masf-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt network (weights loaded) and what was stored with it."""

    net: nn.Module
    config: dict[str, Any]
    network_config: dict[str, Any]
    optimizer: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def check_plain(obj: Any, where: str = "extra") -> None:
    """Raise ValueError unless ``obj`` is built from tensors, numbers, strings, None, lists, tuples, dicts."""
    if obj is None or isinstance(obj, (Tensor, bool, int, float, str)):
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for key, item in obj.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f"{where} has a key of type {type(key).__name__}; allowed: str, int")
            check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(
        f"{where} is a {type(obj).__name__}; a checkpoint holds only tensors, numbers, strings, None, "
        "lists, tuples and dicts (so that it loads with weights_only=True)"
    )


def to_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON-serialisable: {err}") from err


def atomic_torch_save(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_checkpoint(
    path: str | os.PathLike,
    network_config: dict[str, Any],
    model_state: dict[str, Tensor],
    config: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Low-level writer used by ``save_checkpoint`` and ``fit`` (state dict given explicitly)."""
    extra = {} if extra is None else extra
    check_plain(optimizer_state, "optimizer state")
    check_plain(extra, "extra")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "network": to_json(network_config, "the network config"),
        "config": to_json(config, "config"),
        "model": {k: v.detach() for k, v in model_state.items()},
        "optimizer": optimizer_state,
        "extra": extra,
    }
    atomic_torch_save(payload, path)


def save_checkpoint(
    path: str | os.PathLike,
    net: nn.Module,
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``net`` (built by ``masf.nets.make_network``), the run ``config`` and optional optimizer state.

    Raises ValueError if ``net`` has no ``config``, if ``config`` is not JSON-serialisable, or if ``extra``
    holds anything but plain containers of tensors/numbers/strings.
    """
    if not isinstance(getattr(net, "config", None), dict):
        raise ValueError("net has no .config dict; build it with masf.nets.make_network")
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    opt_state = optimizer.state_dict() if optimizer is not None else None
    write_checkpoint(path, net.config, net.state_dict(), config, opt_state, extra)


def read_payload(path: str | os.PathLike, map_location: Any = None) -> dict[str, Any]:
    """Load the raw checkpoint dict with ``weights_only=True``; ``CorruptFileError`` (a ValueError) for a
    truncated, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CorruptFileError(
            f"{path} is not a masf checkpoint: it cannot be loaded with torch.load(weights_only=True) "
            f"(a truncated, corrupt or foreign file; it was not unpickled: {first_line(err)}); delete it and rerun "
            "the pretraining that writes it"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CorruptFileError(
            f"{path} is not a masf checkpoint (no format={FORMAT!r} entry); delete it and rerun the "
            "pretraining that writes it"
        )
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')!r}; this code reads {VERSION}"
        )
    return payload


def check_expected(path: str | os.PathLike, stored: dict[str, Any], expect: dict[str, Any]) -> None:
    """Each ``expect[key]`` must equal the stored value (compared after a JSON round trip)."""
    for key, wanted in expect.items():
        if key not in stored:
            raise ValueError(
                f"checkpoint {path} records no {key!r}; it records: {', '.join(sorted(stored)) or 'nothing'}"
            )
        wanted_plain = json.loads(to_json(wanted, f"expect[{key!r}]"))
        if stored[key] != wanted_plain:
            raise ValueError(
                f"checkpoint {path} was made for {key}={stored[key]!r}, this run uses {key}={wanted!r}"
            )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    expect: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> Checkpoint:
    """Load a checkpoint written by ``save_checkpoint`` or ``fit`` and rebuild its network.

    ``expect``: values the run needs, checked against the stored run config and, for keys it lacks, the
    network config (e.g. ``{"operator": {...}, "state_shape": [2, 128, 128], "kind": "unet2d"}``); a
    mismatch raises ValueError("checkpoint ... was made for operator=..., this run uses operator=...").
    ``device``: where tensors and the network go (default: where they were saved).
    """
    payload = read_payload(path, map_location=device)
    network_config = json.loads(payload["network"])
    config = json.loads(payload["config"])
    if expect:
        check_expected(path, {**network_config, **config}, expect)
    net = network_from_config(network_config)
    net.load_state_dict(payload["model"])
    if device is not None:
        net.to(device)
    return Checkpoint(
        net=net,
        config=config,
        network_config=network_config,
        optimizer=payload["optimizer"],
        extra=payload["extra"],
        path=str(path),
    )
