"""Files: atomic writes of NetCDF datasets and other outputs, and reading them back.

Every output is first written to a temporary file in the destination folder, flushed to disk (fsync),
then renamed with ``os.replace`` (atomic on POSIX within one file system), and the folder is fsynced so
the rename itself survives a crash. A job killed half-way, or a node that loses power, therefore leaves
either the old file or no file, never a truncated one that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xarray as xr

from masf.errors import CorruptFileError


def fsync_file(path: str | Path) -> None:
    """Flush the contents of the file at ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def first_line(err: BaseException) -> str:
    """``Type: message`` of an exception, cut to its first line (for one-line error messages)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def corrupt_netcdf(path: Path, err: BaseException) -> CorruptFileError:
    """The one-line error for a NetCDF file at ``path`` that failed to open with ``err``."""
    return CorruptFileError(
        f"{path} cannot be read as NetCDF ({first_line(err)}); it is truncated or corrupt: "
        "delete it and rerun the step that writes it (snakemake reruns it)"
    )


def set_aside(path: str | Path) -> Path:
    """Rename a corrupt file to ``<name>.corrupt`` (``.corrupt-1``, ... if taken) beside it; return the new path."""
    p = Path(path)
    aside = p.with_name(p.name + ".corrupt")
    k = 0
    while aside.exists():
        k += 1
        aside = p.with_name(f"{p.name}.corrupt-{k}")
    os.replace(p, aside)
    return aside


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it, rename it to ``path`` and fsync the
    folder; on error delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # leftovers of a killed earlier attempt at the same file (one writer per target under Snakemake)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(text: str, path: str | Path) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _netcdf_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """NetCDF attributes hold numbers, strings and 1-D numeric arrays; booleans become 0/1, None ''."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif value is None:
            out[key] = ""
        elif isinstance(value, dict):
            out[key] = repr(value)
        else:
            out[key] = value
    return out


def write_dataset(ds: xr.Dataset, path: str | Path) -> None:
    """Write ``ds`` to the NetCDF file ``path`` atomically (netCDF4 engine, zlib-compressed floats)."""
    ds = ds.copy()
    ds.attrs = _netcdf_attrs(dict(ds.attrs))
    for name in ds.data_vars:
        ds[name].attrs = _netcdf_attrs(dict(ds[name].attrs))
    encoding = {
        name: {"zlib": True, "complevel": 1} for name, var in ds.data_vars.items() if var.dtype.kind == "f"
    }
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)


def read_dataset(path: str | Path) -> xr.Dataset:
    """Open a NetCDF file written by :func:`write_dataset` fully into memory (the file is closed).

    ``FileNotFoundError`` when it is missing, :class:`CorruptFileError` when it cannot be read.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such NetCDF file: {p}")
    try:
        with xr.open_dataset(p, engine="netcdf4") as ds:
            return ds.load()
    except (OSError, ValueError, RuntimeError) as err:
        raise corrupt_netcdf(p, err) from err
