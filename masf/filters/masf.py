"""MASF: the Measurement-Aware Score-based Filter (arXiv 2604.02889; method.md §2–6, §12).

Analysis step, in normalized space (``Normalizer``, the same statistics for states and measurements):

1. a network ``D_θ(x_t, t) ≈ E[x0 | x_t]`` trained with the x0-prediction loss
   ``‖D_θ(x_t, t) − x0‖²``, ``t ~ U(τ, T)``, ``x_t = a(t) x0 + (1 − a(t)) H_n(x0) + σ_n r(t) ε``
   (pretrained once per operator on climatology snapshots, fine-tuned online on each forecast ensemble);
2. one posterior particle per forecast member from ``masf.diffusion.sample`` with the chosen sampler:
   ``"bridge"`` (exact for mask operators), ``"reference"`` (the paper's guided sampler) or
   ``"nonlinear"`` (dual-head endpoint-Gaussian scheme for any operator; the network then also predicts
   ``E[H_n(x0) | x_t]`` with the loss ``‖x̂ − x0‖² + ‖ĥ − (H_n(x0) + σ_n ε')‖²``).

``score_model="gaussian"`` replaces the network by the exact x0-predictor of a Gaussian fitted to the
forecast ensemble (``GaussianDenoiser``; mask operators, small states: it builds a D×D covariance). It needs
no training and makes MASF-bridge an exact Kalman-type update for Gaussian priors: a known-answer check.

``scratch=True`` is the paper's "scratch" mode (no pretraining): the first analysis trains a fresh network
on the forecast ensemble for ``scratch_epochs`` epochs and every later one fine-tunes for as many.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from masf.diffusion import GaussianDenoiser, MeasurementAwareProcess, sample
from masf.diffusion.samplers import SAMPLERS
from masf.filters.base import Context
from masf.filters.enkf import check_inflation
from masf.filters.hybrid import (
    MAX_DIM,
    ResidualDenoiser,
    check_dim,
    climatology_gaussian,
    gaussian_fit,
    hybrid_sample,
)
from masf.filters.hybrid_fft import stationary_gaussian, taper_spectrum
from masf.filters.letkf import LETKF
from masf.filters.localization import taper_matrix
from masf.filters.score_common import (
    STATE_KEY,
    ScoreModel,
    check_analysis_input,
    check_int,
    check_number,
    check_training_fields,
    climatology_bank,
    make_normalizer,
    network_kind,
    network_sizes,
    prepared_model,
    pretrain_filter,
    prior_draws,
    timed,
    uniform,
)
from masf.nets import make_network
from masf.train import finetune
from masf.train.online import bank_draws

EVAL_TIMES = ("current", "next")
SCORE_MODELS = ("network", "gaussian")
X0_UNCERTAINTIES = ("pathwise", "none")
MEMBER_UPDATES = ("updated", "redrawn")
_HYBRID_KEY = "masf_hybrid"


def _weights(value: Any, parameter: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        w = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        w = ()
    if len(w) != 3:
        raise ValueError(f"masf: {parameter} must be (min, max, power) or null, got {value!r}")
    return w  # type: ignore[return-value]


@dataclass(frozen=True)
class MASF:
    """Hyper-parameters of MASF (defaults: method.md §13 at 128², with the bridge sampler).

    Attributes:
        sampler: ``bridge`` | ``reference`` | ``nonlinear``.
        nfe: denoiser evaluations per analysis (reverse steps).
        score_weights, guidance_weights: (min, max, power) of the reference/nonlinear samplers' w_s and
            w_g (``None``: the paper's defaults for that sampler).
        eval_time: nonlinear sampler only: ``current`` (fixed) or ``next`` (the reference's B8).
        T, tau: clamp of the schedule.
        network, width, depth: network kind (``auto``: by state shape; ``dual_unet2d`` for the nonlinear
            sampler) and sizes (``None``: the class defaults).
        pretrain_epochs, pretrain_batch, pretrain_lr: pretraining on climatology snapshots.
        x0_uncertainty: bridge sampler only: ``pathwise`` (Matheron's rule with draws of the prior the
            network was fitted to: exact for Gaussian priors at any nfe; two network batches per step) or
            ``none`` (the plug-in mean; under-dispersed at small nfe). docs/bridge-sampler.md.
        finetune_epochs, finetune_batch, finetune_lr: online fine-tuning from the second analysis on,
            ceil(finetune_epochs · N / finetune_batch) AdamW steps per analysis (0 epochs: none).
        finetune_reset, finetune_replay, finetune_jitter, finetune_optimizer: see docs/finetuning.md
            (start each cycle from the pretrained weights; fraction of climatology in the training
            mixture; kernel width of the members in units of their std; ``persistent`` or ``fresh``
            AdamW).
        scratch, scratch_epochs: train from scratch on the ensemble instead of pretraining.
        score_model: ``network`` (learned) or ``gaussian`` (exact for a Gaussian fit of the ensemble).
        normalize, norm_form, norm_update: per-channel normalization (``affine``/``scale_only``,
            ``fixed``/``adaptive``).
        compile: compile the pretrained network for sampling and fine-tuning (``torch.compile``; CUDA
            graphs on a GPU; ``score_common.compile_network``). Same numbers up to float rounding.
        hybrid: sample under the hybrid prior, the pretrained climatology times the localized forecast
            Gaussian N(x̄_f, L∘P_f), deconvolved (``masf.filters.hybrid``, docs/hybrid.md). Bridge sampler,
            no fine-tuning; dense algebra up to 2048 state entries, matrix-free above
            (``masf.filters.hybrid_fft``: FFT taper, stationary climatology, CG; states on a ring or torus).
        radius, inflation: hybrid only: the Gaspari–Cohn half-width c (grid cells, as LETKF's) of L and
            the multiplicative inflation ρ >= 1 of the forecast anomalies.
        draws: hybrid with ``members: updated`` only: the number of bridge draws averaged for the analysis
            mean (``None``: one per member); the Monte-Carlo error of the mean falls as 1/√draws.
        gaussian_residual: the network predicts the residual of the exact x0-predictor of the climatology
            Gaussian (``hybrid.ResidualDenoiser``; mask operators, states of at most 2048 entries; the
            Gaussian is fitted at pretraining and stored in the checkpoint).
        members: hybrid only: ``updated`` (the analysis mean of the draws with the LETKF's analysis
            anomalies of the same radius and inflation: members keep their forecast alignment) or
            ``redrawn`` (the posterior draws themselves).
    """

    name: ClassVar[str] = "masf"

    sampler: str = "bridge"
    nfe: int = 150
    x0_uncertainty: str = "pathwise"
    score_weights: tuple[float, float, float] | None = None
    guidance_weights: tuple[float, float, float] | None = None
    eval_time: str = "current"
    T: float = 0.992
    tau: float = 1e-5
    network: str = "auto"
    width: int | None = None
    depth: int | None = None
    levels: int | None = None
    pretrain_epochs: int = 200
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-4
    finetune_epochs: int = 120
    finetune_batch: int = 32
    finetune_lr: float = 3e-4
    finetune_reset: bool = True
    finetune_replay: float = 0.5
    finetune_jitter: float = 0.0
    finetune_optimizer: str = "persistent"
    compile: bool = False
    scratch: bool = False
    scratch_epochs: int = 200
    score_model: str = "network"
    normalize: bool = True
    norm_form: str = "affine"
    norm_update: str = "fixed"
    hybrid: bool = False
    radius: float = 5.0
    inflation: float = 1.0
    members: str = "updated"
    draws: int | None = None
    gaussian_residual: bool = False

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"masf: sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        check_int(self.nfe, "nfe", "masf", 1)
        check_int(self.scratch_epochs, "scratch_epochs", "masf", 1)
        for field in ("score_weights", "guidance_weights"):
            object.__setattr__(self, field, _weights(getattr(self, field), field))
        if self.sampler == "bridge" and (self.score_weights or self.guidance_weights):
            raise ValueError("masf: the bridge sampler has no score_weights/guidance_weights (no guidance)")
        if self.x0_uncertainty not in X0_UNCERTAINTIES:
            raise ValueError(
                f"masf: x0_uncertainty must be one of {', '.join(X0_UNCERTAINTIES)}, got {self.x0_uncertainty!r}"
            )
        if self.eval_time not in EVAL_TIMES:
            raise ValueError(
                f"masf: eval_time must be one of {', '.join(EVAL_TIMES)}, got {self.eval_time!r}"
            )
        tau = check_number(self.tau, "tau", "masf", low=0.0)
        T = check_number(self.T, "T", "masf", low=tau)
        if T >= 1.0:
            raise ValueError(f"masf: T must be < 1 (A(t) must stay invertible), got {self.T!r}")
        if self.score_model not in SCORE_MODELS:
            raise ValueError(
                f"masf: score_model must be one of {', '.join(SCORE_MODELS)}, got {self.score_model!r}"
            )
        if self.score_model == "gaussian" and self.sampler == "nonlinear":
            raise ValueError(
                "masf: score_model 'gaussian' needs a mask operator (sampler bridge or reference)"
            )
        if not isinstance(self.scratch, bool):
            raise ValueError(f"masf: scratch must be True or False, got {self.scratch!r}")
        check_training_fields(self, "masf")
        if self.sampler == "nonlinear" and self.network not in ("auto", "dual_unet2d"):
            raise ValueError(
                f"masf: the nonlinear sampler needs a dual-head network (network: auto or dual_unet2d), "
                f"got {self.network!r}"
            )
        self._check_hybrid()
        if not isinstance(self.gaussian_residual, bool):
            raise ValueError(f"masf: gaussian_residual must be True or False, got {self.gaussian_residual!r}")
        if self.gaussian_residual and (self.sampler == "nonlinear" or self.score_model != "network"):
            raise ValueError(
                "masf: gaussian_residual needs a mask operator's sampler (bridge or reference) and "
                "score_model: network"
            )

    def _check_hybrid(self) -> None:
        if not isinstance(self.hybrid, bool):
            raise ValueError(f"masf: hybrid must be True or False, got {self.hybrid!r}")
        object.__setattr__(self, "radius", check_number(self.radius, "radius", "masf", low=0.0))
        object.__setattr__(self, "inflation", check_inflation(self.inflation, "masf"))
        if self.members not in MEMBER_UPDATES:
            raise ValueError(
                f"masf: members must be one of {', '.join(MEMBER_UPDATES)}, got {self.members!r}"
            )
        if self.draws is not None:
            check_int(self.draws, "draws", "masf", 1)
        if not self.hybrid:
            if (self.radius, self.inflation, self.members, self.draws) != (5.0, 1.0, "updated", None):
                raise ValueError(
                    "masf: radius, inflation, members and draws apply to the hybrid prior only; set "
                    "hybrid: true or remove them"
                )
            return
        if self.draws is not None and self.members != "updated":
            raise ValueError(
                "masf: draws applies to members: updated only (redrawn keeps one draw per member)"
            )
        needs = {
            "sampler": (self.sampler, "bridge"),
            "score_model": (self.score_model, "network"),
            "scratch": (self.scratch, False),
            "finetune_epochs": (self.finetune_epochs, 0),
        }
        for key, (got, want) in needs.items():
            if got != want:
                raise ValueError(
                    f"masf: hybrid needs {key}: {want} (the forecast enters through the hybrid prior), "
                    f"got {got!r}"
                )

    # ------------------------------------------------------------------------------ interface helpers
    @property
    def needs_pretraining(self) -> bool:
        """Whether the pipeline must pretrain a network before assimilating (not in scratch mode)."""
        return self.score_model == "network" and not self.scratch

    @property
    def dual_head(self) -> bool:
        return self.sampler == "nonlinear"

    def check_operator(self, operator: Any) -> None:
        """``bridge`` and ``reference`` need a mask operator; ``nonlinear`` takes any operator."""
        if self.sampler in ("bridge", "reference") and not (operator.linear and operator.mask is not None):
            raise ValueError(
                f"masf: sampler {self.sampler!r} needs a mask (linear) operator, got {operator.name!r}; "
                "use sampler: nonlinear for nonlinear operators"
            )

    def kind(self, state_shape: tuple[int, ...]) -> str:
        """The network kind for states of ``state_shape``."""
        if not self.dual_head:
            return network_kind(self.network, state_shape)
        if len(state_shape) != 3:
            raise ValueError(
                "masf: the nonlinear sampler needs a dual-head network, which exists for 2-D fields "
                f"(C, n, n) only; got state shape {state_shape}"
            )
        return "dual_unet2d"

    def _sizes(self, kind: str) -> dict[str, Any]:
        return network_sizes(kind, self.width, self.depth, self.levels, time_conditioned=True)

    def _process_record(self) -> dict[str, Any]:
        """The forward-process keys a checkpoint records (``gaussian_residual`` only when set)."""
        record = {"T": self.T, "tau": self.tau, "dual": self.dual_head}
        return {**record, "gaussian_residual": True} if self.gaussian_residual else record

    def _expect(self, operator: Any) -> dict[str, Any]:
        return {"method": "masf", "operator": operator.params(), **self._process_record()}

    def process(self, operator: Any, normalizer: Any) -> MeasurementAwareProcess:
        """The measurement-aware forward process of ``operator`` in ``normalizer``'s space."""
        return MeasurementAwareProcess(operator, normalizer, T=self.T, tau=self.tau)

    def loss(self, process: MeasurementAwareProcess, gaussian: dict[str, Tensor] | None = None):
        """The training loss ``loss(net, x0 (B,*S) normalized, generator) -> scalar``; with ``gaussian``
        (``hybrid.gaussian_fit``) the network is the residual of a :class:`ResidualDenoiser`."""

        def x0_loss(net: torch.nn.Module, x0: Tensor, generator: torch.Generator) -> Tensor:
            t = uniform(x0.shape[0], process.tau, process.T, generator, x0)
            x_t = process.forward(x0, t, generator=generator)
            out = self.denoiser(net, process, gaussian)(x_t, t)
            if not self.dual_head:
                return (out - x0).square().mean()
            x0_hat, h_hat = out
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            h_target = process.H_n(x0) + process.sigma_n(x0) * noise
            return (x0_hat - x0).square().mean() + (h_hat - h_target).square().mean()

        return x0_loss

    def denoiser(self, net: Any, process: MeasurementAwareProcess, gaussian: dict[str, Tensor] | None):
        """The x0-predictor of ``net``: itself, or with ``gaussian`` the :class:`ResidualDenoiser` around it."""
        if not self.gaussian_residual:
            if gaussian is not None:
                raise ValueError(
                    "masf: the checkpoint holds a Gaussian-residual network; set gaussian_residual: true"
                )
            return net
        if gaussian is None:
            raise ValueError(
                "masf: gaussian_residual needs the checkpoint's climatology Gaussian (pretrain again)"
            )
        return ResidualDenoiser(net, gaussian["mean"], gaussian["cov"], process)

    # ------------------------------------------------------------------------------------ pretraining
    def pretrain(
        self,
        data: Tensor,
        operator: Any,
        *,
        checkpoint: str,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
        progress: bool = True,
        stop: Any = None,
    ) -> None:
        """Train the x0-predictor on climatology snapshots ``data`` (M, *S) and write ``checkpoint``."""
        self.check_operator(operator)
        normalizer = make_normalizer(self.normalize, self.norm_form, self.norm_update)
        normalizer.fit(data.to(device))
        gaussian = None
        if self.gaussian_residual:
            check_dim(data[0].numel(), "masf")
            gaussian = gaussian_fit(normalizer.norm_x(data.to(device)))
        process = self.process(operator, normalizer).to(torch.device(device))
        pretrain_filter(
            self,
            data,
            operator,
            self.loss(process, gaussian),
            process=self._process_record(),
            extra=None if gaussian is None else {"gaussian": gaussian},
            checkpoint=checkpoint,
            generator=generator,
            device=device,
            progress=progress,
            stop=stop,
            kind=self.kind(tuple(data.shape[1:])),
            normalizer=normalizer,
        )

    # --------------------------------------------------------------------------------------- analysis
    def _scratch_model(self, prior: Tensor, ctx: Context) -> ScoreModel:
        """Scratch mode: a network trained on the ensemble itself (fresh at cycle 0, then fine-tuned)."""
        model = ctx.state.get(STATE_KEY)
        if ctx.train_generator is None:
            raise ValueError("masf: scratch mode needs ctx.train_generator")
        started = time.perf_counter()
        if model is None:
            normalizer = make_normalizer(self.normalize, self.norm_form, self.norm_update).fit(prior)
            kind = self.kind(tuple(prior.shape[1:]))
            net = make_network(
                kind, tuple(prior.shape[1:]), generator=ctx.train_generator, **self._sizes(kind)
            )
            model = ScoreModel(net=net.to(device=prior.device, dtype=prior.dtype), normalizer=normalizer)
            ctx.state[STATE_KEY] = model
        elif model.normalizer.update == "adaptive":
            model.normalizer.fit(prior)
        process = self.process(ctx.state["operator"], model.normalizer)
        finetune(
            model.net,
            model.normalizer.norm_x(prior),
            self.loss(process),
            epochs=self.scratch_epochs,
            batch_size=self.finetune_batch,
            lr=self.finetune_lr,
            generator=ctx.train_generator,
        )
        model.net.eval()
        ctx.add_time("finetune", time.perf_counter() - started)
        return model

    def _analyse_gaussian(self, prior: Tensor, z: Tensor, operator: Any, ctx: Context) -> Tensor:
        norm = make_normalizer(self.normalize, self.norm_form, "adaptive").fit(prior)
        process = self.process(operator, norm)
        prior_n = norm.norm_x(prior)
        flat = prior_n.reshape(prior.shape[0], -1)
        denoiser = GaussianDenoiser(prior_n.mean(0), torch.cov(flat.T).reshape(flat.shape[1], -1), process)
        draws = denoiser.draw if self._pathwise() else None
        return timed(
            lambda: self._draw(denoiser, process, norm, z, prior_n, ctx, draws), ctx, "sampling", prior
        )

    def _pathwise(self) -> bool:
        return self.sampler == "bridge" and self.x0_uncertainty == "pathwise"

    def _draw(self, denoiser, process, norm, z: Tensor, prior_n: Tensor, ctx: Context, draws) -> Tensor:
        """One posterior draw per member with the configured sampler, denormalized (N, *S)."""
        options = self._sampler_options()
        if draws is not None:
            options["prior_draws"] = draws
        post_n = sample(
            denoiser,
            process,
            norm.norm_z(z),
            prior_n,
            sampler=self.sampler,
            nfe=self.nfe,
            generator=ctx.generator,
            **options,
        )
        return norm.denorm_x(post_n)

    def _sampler_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.score_weights is not None:
            options["score_weights"] = self.score_weights
        if self.guidance_weights is not None:
            options["guidance_weights"] = self.guidance_weights
        if self.sampler == "nonlinear":
            options["eval_time"] = self.eval_time
        return options

    def analyse(self, prior: Tensor, z: Tensor, operator: Any, ctx: Context) -> Tensor:
        """Posterior ensemble (N, *S) from the forecast ``prior`` (N, *S) and measurement ``z`` (*S)."""
        check_analysis_input(prior, z, "masf")
        self.check_operator(operator)
        if self.score_model == "gaussian":
            return self._analyse_gaussian(prior, z, operator, ctx)
        if self.scratch:
            ctx.state["operator"] = operator
            model = self._scratch_model(prior, ctx)
        else:
            model = prepared_model(
                self,
                prior,
                ctx,
                self._expect(operator),
                lambda m: self.loss(self.process(operator, m.normalizer), m.extra.get("gaussian")),
            )
        norm = model.normalizer
        process = self.process(operator, norm)
        prior_n = norm.norm_x(prior)
        net = self.denoiser(model.net, process, model.extra.get("gaussian"))
        if self.hybrid:
            return self._analyse_hybrid(net, model, process, prior, prior_n, z, operator, ctx)
        draws = None
        if self._pathwise():
            # scratch networks are fitted to the members themselves
            draws = bank_draws(prior_n) if self.scratch else prior_draws(model, prior, ctx, "masf")
        return timed(lambda: self._draw(net, process, norm, z, prior_n, ctx, draws), ctx, "sampling", prior)

    # -------------------------------------------------------------------------------- hybrid prior
    def _hybrid_terms(self, model: ScoreModel, prior: Tensor, ctx: Context):
        """(climatology Gaussian, taper) of the hybrid prior, computed once per run (docs/hybrid.md): for
        the dense algebra (full climatology covariance, taper matrix) on states of at most ``MAX_DIM``
        entries, for the matrix-free one above (stationary climatology, taper spectrum; "Matrix-free")."""
        cached = ctx.state.get(_HYBRID_KEY)
        if cached is None:
            shape = tuple(prior.shape[1:])
            bank = climatology_bank(ctx, model.normalizer, prior)
            if bank is None:
                raise ValueError(
                    "masf: hybrid needs climatology states to fit its climatology Gaussian "
                    "(run(..., climatology=...), `masf assimilate --climatology`)"
                )
            if prior[0].numel() <= MAX_DIM:
                taper = taper_matrix(shape, self.radius).to(prior.device)
                cached = (climatology_gaussian(bank), taper)
            else:
                taper = taper_spectrum(shape, self.radius).to(prior.device)
                cached = (stationary_gaussian(bank), taper)
            ctx.state[_HYBRID_KEY] = cached
        return cached

    def _analyse_hybrid(
        self,
        net: Any,
        model: ScoreModel,
        process,
        prior: Tensor,
        prior_n: Tensor,
        z: Tensor,
        operator: Any,
        ctx: Context,
    ) -> Tensor:
        clim, taper = self._hybrid_terms(model, prior, ctx)
        norm = model.normalizer

        start = prior_n
        if self.members == "updated" and self.draws is not None:
            start = prior_n.repeat(-(-self.draws // len(prior_n)), *([1] * (prior_n.ndim - 1)))[: self.draws]

        def draw() -> Tensor:
            post_n = hybrid_sample(
                net,
                process,
                norm.norm_z(z),
                prior_n,
                clim,
                taper,
                inflation=self.inflation,
                nfe=self.nfe,
                generator=ctx.generator,
                pathwise=self.x0_uncertainty == "pathwise",
                start=start,
            )
            return norm.denorm_x(post_n.to(prior.dtype))

        post = timed(draw, ctx, "sampling", prior)
        if self.members == "redrawn":
            return post
        letkf = LETKF(radius=self.radius, inflation=self.inflation).analyse(prior, z, operator, ctx)
        return letkf - letkf.mean(0) + post.mean(0)
