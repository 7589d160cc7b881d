"""Orbit run control: the protocol, the central server, discovery and supervision."""
