"""masf: the Measurement-Aware Score-based Filter (MASF) and its baselines, batched in PyTorch.

Modules, one concept each: ``systems`` (dynamics), ``operators`` (measurements), ``diffusion`` (the
measurement-aware forward process and samplers), ``nets`` (x0-predictors), ``train`` (pretraining and
fine-tuning), ``filters`` (MASF and baselines), ``assimilate`` (the cycle loop), ``metrics``, ``io``, ``cli``.
"""

__version__ = "0.1.0"
