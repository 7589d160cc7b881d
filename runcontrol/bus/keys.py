"""CURVE key pairs for an experiment: the server's, the run controller's, each program's, an operator's.

  python -m runcontrol.bus.keys EXPERIMENT [--force]

Writes, where the experiment's `server.curve` says: the server's pair at
`server_key` (public) and `server_key`_secret; in the `clients` folder one pair
per client name (`<name>.key`, `<name>.key_secret`) for every program with a
client name, for the run controller (`run`), for each host's agent
(`host.<name>`) and for operators' tools (`operator`). Secret keys are
readable by their owner only (0600), the folder too (0700). Existing pairs are kept unless --force. Exit status 0, or 2 with the
reason.
"""

import argparse
import os
import sys
from pathlib import Path

import zmq.auth

import experiments
from runcontrol import protocol
from runcontrol.errors import ConfigError

OPERATOR = "operator"
CONTROLLER = "run"


def secret_path(public_path):
    return Path(f"{public_path}_secret")


def make_pair(public_path, force=False):
    """Create the pair whose public key is `public_path`; False when it existed and was kept."""
    public_path = Path(public_path)
    if public_path.exists() and secret_path(public_path).exists() and not force:
        return False
    folder = public_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    old = os.umask(0o077)
    try:
        made_public, made_secret = zmq.auth.create_certificates(folder, public_path.stem)
    finally:
        os.umask(old)
    os.replace(made_public, public_path)
    os.replace(made_secret, secret_path(public_path))
    os.chmod(secret_path(public_path), 0o600)
    os.chmod(public_path, 0o644)
    return True


def client_names(experiment):
    agents = {protocol.HOST_AGENT + host for host in experiment.hosts}
    return sorted({p.client for p in experiment.programs if p.client} | {CONTROLLER, OPERATOR} | agents)


def make_all(experiment, force=False):
    """Every pair the experiment needs; returns [(path, created)]."""
    curve = experiment.server.curve
    if curve is None:
        raise ConfigError(f"{experiment.path}: no server.curve: add "
                          '"curve": {"server_key": "keys/server.key", "clients": "keys/clients"} to "server"')
    made = [(curve.server_key, make_pair(curve.server_key, force))]
    for name in client_names(experiment):
        path = curve.clients / f"{name}.key"
        made.append((path, make_pair(path, force)))
    return made


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m runcontrol.bus.keys", description=__doc__.split("\n")[0])
    parser.add_argument("experiment", help="experiment name or file")
    parser.add_argument("--force", action="store_true", help="replace existing key pairs")
    args = parser.parse_args(argv)
    try:
        made = make_all(experiments.load(args.experiment), args.force)
    except (ConfigError, OSError) as exc:
        print(f"keys: {exc}", file=sys.stderr)
        return 2
    for path, created in made:
        print(f"{'created' if created else 'kept   '} {path} (+ {secret_path(path).name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
