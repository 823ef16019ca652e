"""Climatology: the no-assimilation reference (DAPPER's ``Climatology``), the floor of every table.

Every analysis ignores the measurement and returns N draws of the climatology (``ctx.climatology``,
(M, *S) physical states, e.g. the pretraining snapshots), re-centred on the climatological mean:

    X_a = C[I] − mean(C[I]) + mean(C),   I ~ U{0..M−1}^N  (from the run's ``sampling`` stream)

so the ensemble mean is the climatological mean (its RMSE is the climatological standard deviation) and
the spread is that of the climatology: spread/RMSE ≈ 1 by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from masf.filters.base import Context
from masf.filters.score_common import check_analysis_input


@dataclass(frozen=True)
class Climatology:
    """No assimilation: N re-centred climatology draws per analysis (module docstring). No hyper-parameters."""

    name: ClassVar[str] = "climatology"
    needs_pretraining: ClassVar[bool] = False

    def check_operator(self, operator: Any) -> None:
        """Accepts every operator (the measurement is not used)."""

    def analyse(self, prior: Tensor, z: Tensor, operator: Any, ctx: Context) -> Tensor:
        """(N, *S) climatology draws with the climatological mean; ``prior`` sets N, dtype and device."""
        check_analysis_input(prior, z, self.name)
        clim = ctx.climatology
        if clim is None:
            raise ValueError(
                "climatology: needs climatology states (run(..., climatology=...), `masf assimilate "
                "--climatology SNAPSHOTS.nc`)"
            )
        if tuple(clim.shape[1:]) != tuple(prior.shape[1:]):
            raise ValueError(
                f"climatology: its states {tuple(clim.shape[1:])} differ from the ensemble's {tuple(prior.shape[1:])}"
            )
        clim = clim.to(prior)
        gen = ctx.generator
        idx = torch.randint(0, len(clim), (prior.shape[0],), generator=gen, device=gen.device).to(clim.device)
        draws = clim[idx]
        return draws - draws.mean(0) + clim.mean(0)
