"""Stopping a training cleanly on SIGTERM, SIGINT (Ctrl-C) or SIGUSR1.

Cluster schedulers send SIGTERM some time before they kill a job (SLURM can send SIGUSR1 earlier
still, with ``--signal``). ``Preemption`` catches these three signals for the block it guards and
restores the previous handlers after it. Inside ``deferred()`` (the training loop) a signal only
records the request: the trainer finishes the step it is in (or the validation, stopping at the
epoch end), writes ``last.pt`` with its position inside the epoch, logs one line and raises
``Preempted``. Outside it (building the data, the final evaluation) there is no step to finish and
nothing to save, so the signal raises ``Preempted`` at once. The first signal decides; later ones
are ignored until the process has stopped (SIGKILL still ends it). The exit code is the shell's for
the signal: 130 after SIGINT, 143 after SIGTERM, and 143 after SIGUSR1 too, as for the SIGTERM it
announces.

Under torchrun a signal may reach one process only, or the processes at different steps, yet all
must stop after the same step (they run collectives together, and rank 0 writes what every rank
resumes from). ``requested`` therefore takes the decision together: after every step, every process
adds its flag with one all_reduce of a single integer. On the CPU (gloo) that costs about as much as
the step's own gradient all_reduce of a small model, a latency small beside the step's computation;
checking less often would only delay the stop.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Callable

import torch
import torch.distributed as dist

from .distributed import World, barrier

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 143}


class Preempted(BaseException):
    """A signal stopped the run; ``exit_code`` is what the process should exit with. ``reported``:
    the line saying where the run stopped is already logged. A BaseException, as KeyboardInterrupt
    is: raised at any point, it must not be taken for an error there (``except Exception``)."""

    def __init__(self, signum: int, reported: bool = False):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.reported = signum, reported

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


def ignore_signals() -> None:
    """Ignore the three signals from now on: for a process on its way out after a stop (under
    torchrun the launcher signals the processes still ending once one has exited)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class Preemption:
    """Catch SIGTERM, SIGINT and SIGUSR1 while the ``with`` block runs (in the main thread only, the
    one place Python runs handlers; elsewhere it does nothing). ``on_signal(signum)``, if given, is
    called on the first signal, e.g. to pass it on to child processes."""

    def __init__(self, on_signal: Callable[[int], None] | None = None):
        self.signum: int | None = None
        self.on_signal = on_signal
        self._deferring = False
        self._previous: dict = {}

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if self.on_signal is not None:
            self.on_signal(signum)
        if not self._deferring:
            raise Preempted(signum)

    @contextlib.contextmanager
    def deferred(self):
        """Inside the block a signal is only recorded; the code there asks ``requested``."""
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False

    def requested(self, world: World, device: torch.device) -> bool:
        """Whether any process has received a signal: a collective call under torchrun (every rank
        calls it at the same point and gets the same answer; a rank that received nothing takes
        the signal another one received, for its exit code)."""
        if not world.distributed:
            return self.signum is not None
        flag = torch.tensor([self.signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())

    def stop(self, save: Callable[[], None], where: str, step: int):
        """Write the point reached (``save``: last.pt on rank 0), say so in one line and raise
        ``Preempted``. Every rank waits for rank 0's write: under torchrun a rank that exits early
        has the others killed."""
        save()
        barrier()
        stopped = Preempted(self.signum, reported=True)
        logging.getLogger("raccnn").info("%s %s (step %d); last.pt holds this point: continue with --resume auto",
                                         stopped, where, step)
        raise stopped
