"""Real hosts on one machine: Linux network namespaces of our own, joined by a bridge inside a namespace we made.

No address is added to the machine's own interfaces: every veth pair is made inside
the bridge's namespace with its peer moved straight into a host's namespace, and
every address lives in a host's namespace. `close()` removes every namespace (and
with them the links), also after a failure. Needs root; `unavailable()` says why not.
"""

import os
import random
import subprocess

SUBNET = "10.77.0"


def unavailable():
    """None when namespaces can be made here, else the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root; the loopback variant (test_hosts.py) runs instead"
    probe = f"orbit-probe-{os.getpid()}-{random.randrange(1 << 20)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Network:
    """One namespace per host name, each with `eth0` at 10.77.0.<n>/24 on one bridge."""

    def __init__(self, names):
        self.prefix = f"orbit{os.getpid() % 10000}-{random.randrange(1 << 16):04x}"
        self.bridge = f"{self.prefix}-br"
        self.spaces = {name: f"{self.prefix}-{name}" for name in names}
        self.address = {name: f"{SUBNET}.{i + 1}" for i, name in enumerate(names)}
        self.broadcast = f"{SUBNET}.255"
        self.made = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self):
        for space in (self.bridge, *self.spaces.values()):
            ip("netns", "add", space)
            self.made.append(space)
        ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, (name, space) in enumerate(self.spaces.items()):
            ip("-n", self.bridge, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", space)
            ip("-n", self.bridge, "link", "set", f"v{i}", "master", "br0", "up")
            ip("-n", space, "addr", "add", f"{self.address[name]}/24", "broadcast", self.broadcast, "dev", "eth0")
            ip("-n", space, "link", "set", "eth0", "up")
            ip("-n", space, "link", "set", "lo", "up")

    def run(self, name, argv):
        """argv run inside host `name`'s namespace (the same process: ip execs it)."""
        return ["ip", "netns", "exec", self.spaces[name], *argv]

    def close(self):
        for space in reversed(self.made):
            subprocess.run(["ip", "netns", "del", space], capture_output=True)
        self.made = []


def ip(*args):
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
