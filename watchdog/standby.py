"""The watchdog's standby: a copy of the kept command, started ahead, prepared, waiting for its turn.

Owns starting such a copy (in its own session, handed its end of runcontrol.standby's handshake),
hearing that it is ready, telling it to take over, and stopping it. Must not decide when: the
keeper does, and tells it to take over only once the process it replaces has been reaped.
"""

import os
import subprocess

from runcontrol import process, standby


class StandbyProcess:
    """A copy of `argv` waiting for its turn; `fileno()` is readable when it said something (or ended)."""

    def __init__(self, argv):
        ours, theirs = standby.pair()
        try:
            self.proc = subprocess.Popen(argv, start_new_session=True, pass_fds=(theirs.fileno(),),
                                         env={**os.environ, standby.ENV: str(theirs.fileno())})
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.pair = ours
        self.pid = self.proc.pid
        self.ready = False
        self.heard_all = False   # its end closed: nothing more to read

    def fileno(self):
        return self.pair.fileno()

    def read(self):
        """Take in what it said; True when that made it ready."""
        try:
            data = self.pair.recv(64)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.heard_all = True
            return False
        was_ready, self.ready = self.ready, self.ready or standby.READY in data
        return self.ready and not was_ready

    def promote(self):
        """Tell it to take over: its Popen, now the command that serves; None when it is gone."""
        try:
            if self.proc.poll() is not None:
                return None
            self.pair.send(standby.GO)
            return self.proc
        except OSError:
            return None
        finally:
            self.pair.close()

    def stop(self, grace_s):
        """Stop it (SIGTERM to its group, SIGKILL after `grace_s`), reaped; its return code."""
        self.pair.close()
        return process.stop_group(self.proc, grace_s)[0]
