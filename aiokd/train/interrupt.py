"""Stopping a training run without losing its work: Ctrl-C (SIGINT) or SIGTERM.

The first signal asks the loop to stop before its next update: the stage's checkpoint is saved
at the update just made and the command ends (exit status 130), so that running it again goes on
from there, bit for bit as if never stopped.  Checkpoints are otherwise written every
``train.save_every`` updates, which on a CPU can be an hour of work.  A second Ctrl-C stops at
once, losing the updates since the last checkpoint.  Under ``torchrun`` every process stops at
the same update: the requests are summed over the processes before every logged update
(``train.log_every``; before every update when a time budget is checked too).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on request after saving its checkpoint; the message says where."""


class StopRequest:
    """Whether a signal asked the training to stop (:attr:`asked`), while :meth:`installed`."""

    def __init__(self) -> None:
        self.asked = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.asked = True
        print("\naiokd: stopping after this update to save a checkpoint "
              "(Ctrl-C again: stop at once)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle :data:`SIGNALS` within the block (signals can only be handled in the main
        thread: elsewhere nothing is installed and they keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {number: signal.signal(number, self._handle) for number in SIGNALS}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
