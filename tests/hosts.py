"""Other hosts for tests: a real supervisord per host, started from the folder `run.py --export` writes."""

import json
import os
import signal
import subprocess
import sys
import xmlrpc.client

from runcontrol import process
from tests.helpers import ROOT, env_for_children, free_port, wait_until

PASSWORD = "s3cret"


def add_hosts(path, names):
    """Give the experiment at `path` one host per name, each its supervisord on a free loopback port."""
    description = json.loads(path.read_text())
    (path.parent / "keys").mkdir(exist_ok=True)
    (path.parent / "keys" / "host.pass").write_text(PASSWORD + "\n")
    description["hosts"] = {name: {"supervisord": f"http://127.0.0.1:{free_port()}/RPC2", "username": "orbit",
                                   "password_file": "keys/host.pass"} for name in names}
    path.write_text(json.dumps(description))
    return description["hosts"]


class Host:
    """A host of the experiment at `path`: its exported folder and a real supervisord run from it."""

    def __init__(self, path, name):
        self.name, self.path = name, path
        self.folder = path.parent / f"host-{name}"
        self.export()
        url = json.loads(path.read_text())["hosts"][name]["supervisord"]
        self.rpc = xmlrpc.client.ServerProxy(url.replace("http://", f"http://orbit:{PASSWORD}@"))
        self.proc = None

    def export(self):
        """`run.py --export` of this host into its folder, as an operator does after changing its programs."""
        made = subprocess.run([sys.executable, "run.py", str(self.path), "--export", self.name, str(self.folder)],
                              cwd=ROOT, env=env_for_children(), capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c",
                                      str(self.folder / "supervisord.conf")], cwd=self.folder, env=env_for_children(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self.answers, 20, 0.1, what=f"host {self.name}'s supervisord to answer")
        return self

    def answers(self):
        try:
            return self.rpc.supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            assert self.proc.poll() is None, f"host {self.name}'s supervisord exited: {self.log()}"
            return False

    def info(self, program):
        return self.rpc.supervisor.getProcessInfo(program)

    def pause(self):
        """Freeze its supervisord (not its programs): it stops answering, as a host that is away."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def log(self):
        path = self.folder / "log" / "supervisord.log"
        return path.read_text()[-2000:] if path.exists() else "(no log)"

    def stop(self):
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)
            process.stop_group(self.proc, 20)
