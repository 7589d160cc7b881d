"""What a client needs to know before it joins: which beacons to follow and which CURVE keys to use.

Reads only the bus settings of an experiment (`experiments.bus_settings`),
never the whole description. Must not open sockets.
"""

import argparse

import zmq.auth

import experiments
from runcontrol import protocol
from runcontrol.errors import ConfigError


def resolve_experiment(experiment):
    """(name to match in beacons, beacon port, beacon address, curve spec or None) for a name or file."""
    if not experiment:
        return None, protocol.DEFAULT_BEACON_PORT, protocol.DEFAULT_BEACON_ADDRESS, None
    try:
        bus = experiments.bus_settings(experiment)
    except experiments.NotFound:
        return experiment, protocol.DEFAULT_BEACON_PORT, protocol.DEFAULT_BEACON_ADDRESS, None
    return bus.name, bus.beacon.port, bus.beacon.address, bus.curve


def curve_keys(curve, name, key_file=None, server_key_file=None):
    """(server public, our public, our secret) when the bus uses CURVE, else None.

    The server's key comes from the experiment (or $ORBIT_SERVER_KEY), never from a
    beacon; ours from `key_file` ($ORBIT_KEY), else the experiment's key of this
    client name, else its operators' key.
    """
    if curve is None and not key_file:
        return None
    server_file = server_key_file or (curve.server_key if curve else None)
    if not server_file:
        raise ConfigError(f"a key ({key_file}) but no server key: set $ORBIT_SERVER_KEY or use the experiment")
    if not key_file:
        own = curve.clients / f"{name}.key_secret"
        key_file = own if own.exists() else curve.clients / "operator.key_secret"
    try:
        server_public, _ = zmq.auth.load_certificate(server_file)
        public, secret = zmq.auth.load_certificate(key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the CURVE keys for {name!r}: {exc} "
                          "(make them with python -m runcontrol.bus.keys EXPERIMENT)") from None
    if secret is None:
        raise ConfigError(f"{key_file} holds no secret key")
    return server_public, public, secret


def host_port(text):
    """`host:port` from a command line (an argparse type) as (host, port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port (e.g. 127.0.0.1:7101)")
    return host, int(port)
