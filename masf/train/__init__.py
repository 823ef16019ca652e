"""Training of the x0-prediction networks: pretraining, online fine-tuning, checkpoints.

API:
    fit(net, loss_fn, data, *, epochs, batch_size, lr, generator, weight_decay=0.01, betas=(0.9, 0.99),
        clip=1.0, ema=None, val_fraction=0.1, checkpoint_path=None, checkpoint_every=1,
        checkpoint_interval_s=0.0, config=None, progress=True, resume=True, stop=None) -> TrainResult
        ``loss_fn(net, x0_batch, generator) -> scalar`` is the method's loss; AdamW, gradient clipping,
        optional EMA, a validation split whose best weights are returned, exact resume from a checkpoint.
    pretrain(data, loss_fn, *, kind, epochs, batch_size, lr, generator, sizes=None, device=None,
             checkpoint_path=None, config=None, val_fraction=0.1, **fit_options) -> TrainResult
    finetune(net, ensemble, loss_fn, *, epochs, batch_size, lr, generator, val_fraction=0.0,
             progress=False, **fit_options) -> TrainResult   (fresh AdamW, all members by default)
    save_checkpoint(path, net, config, optimizer=None, extra=None)         (atomic)
    load_checkpoint(path, *, expect=None, device=None) -> Checkpoint       (weights_only=True, rebuilds net)
    StopOnSignal, TrainingInterrupted: SIGTERM -> checkpoint at the end of the step, then exit (code 143).
"""

from masf.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from masf.train.loop import LossFn, TrainResult, finetune, fit, pretrain
from masf.train.stop import StopOnSignal, TrainingInterrupted

__all__ = [
    "Checkpoint",
    "LossFn",
    "StopOnSignal",
    "TrainResult",
    "TrainingInterrupted",
    "finetune",
    "fit",
    "load_checkpoint",
    "pretrain",
    "save_checkpoint",
]
