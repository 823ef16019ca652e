"""Turn SIGTERM into "save a checkpoint at the end of the current step, then exit" (cluster requeue).

    with StopOnSignal() as stop:
        fit(..., checkpoint_path=path, stop=stop)   # on SIGTERM: saves after the running step, then raises

``fit`` polls ``stop.requested`` after every optimisation step; when set it writes its checkpoint (if it has
a path) and raises ``TrainingInterrupted``, a ``SystemExit`` with code 128 + signal number (143 for
SIGTERM), so an uncaught one ends the process the way the signal would have, but cleanly.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class TrainingInterrupted(SystemExit):
    """Raised by ``fit`` after a stop request, once its checkpoint is written."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


class StopOnSignal:
    """Context manager: while active, the given signals only set ``requested`` (handlers restored on exit).

    Signal handlers can only be installed from the main thread; elsewhere the manager is inert (the
    signals keep their usual effect) and ``active`` is False.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = tuple(signals)
        self.requested = False
        self.signum: int | None = None
        self.active = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
            self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.active = False
