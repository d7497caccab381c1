"""Ctrl-C and SIGTERM as one exception, so that every command cleans up the same way.

Python turns SIGINT into KeyboardInterrupt but lets SIGTERM (``kill``, a closed terminal session
manager, a CI timeout) end the process on the spot, skipping the ``finally`` blocks that delete
temporary outputs. Inside :class:`Interrupts` both raise :class:`Interrupted`, a
KeyboardInterrupt that remembers its signal, so the exit status can say which one it was
(``128 + signal``: 130 for Ctrl-C, 143 for SIGTERM, as shells report them).
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt raised by SIGINT or SIGTERM; ``signum`` is the signal's number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def signal_of(err: KeyboardInterrupt) -> int:
    """The signal behind an interruption: :class:`Interrupted`'s, SIGINT for a plain
    KeyboardInterrupt."""
    return getattr(err, "signum", signal.SIGINT)


def exit_status(signum: int) -> int:
    """The shell's exit status after signal ``signum``: 128 + its number."""
    return 128 + signum


class Interrupts:
    """While entered (in the main thread), SIGINT and SIGTERM raise :class:`Interrupted`, except
    inside ``deferred()``, where they wait for its end, so that a step such as writing a manifest
    line is never cut in half. A signal the caller ignores (``nohup``, a background job) stays
    ignored; the previous handlers come back on exit. Entered in another thread, it does nothing
    (Python delivers signals to the main thread only)."""

    def __init__(self):
        self._saved, self._deferring, self._pending = {}, False, None
        self.received: int | None = None  # the last signal handled

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved = {}

    def _handle(self, signum, frame):
        self.received = signum
        if self._deferring:
            self._pending = signum
        else:
            raise Interrupted(signum)

    def signum_of(self, err: KeyboardInterrupt) -> int:
        """The signal behind ``err``: its own (:class:`Interrupted`), else the last one handled
        here (a library that catches our exception and raises a plain KeyboardInterrupt in its
        place, as Ray's calls do, loses the signal), else SIGINT."""
        return getattr(err, "signum", None) or self.received or signal.SIGINT

    @contextlib.contextmanager
    def deferred(self):
        """Hold signals until the block ends, then raise the last one that arrived. Blocks nest:
        signals wait for the outermost one."""
        outermost, self._deferring = not self._deferring, True
        try:
            yield
        finally:
            if outermost:
                self._deferring = False
        if outermost and self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)
