"""Signals that wake a select or poll loop: the handlers record them, a socket pair carries the wake-up.

Used by every loop that waits on file descriptors (the server, the run
controller, the watchdog, the launcher). Must not act on a signal itself.
"""

import signal
import socket

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalWakeup:
    """`received` lists the stop signals in the order they came; `fileno()` is readable after any signal.

    Signals in `wake_only` (SIGCHLD, say) only wake the loop.
    """

    def __init__(self, stop_signals=STOP_SIGNALS, wake_only=()):
        self.received = []
        self._read, self._write = socket.socketpair()
        for end in (self._read, self._write):
            end.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for signum in stop_signals:
            signal.signal(signum, lambda signum, _frame: self.received.append(signum))
        for signum in wake_only:
            signal.signal(signum, lambda *_: None)  # a handler, so the wake-up fd hears it

    @property
    def stop_signal(self):
        """The first stop signal received, or None."""
        return self.received[0] if self.received else None

    def fileno(self):
        return self._read.fileno()

    def drain(self):
        try:
            while self._read.recv(512):
                pass
        except BlockingIOError:
            pass

    def close(self):
        signal.set_wakeup_fd(-1)
        self._read.close()
        self._write.close()
