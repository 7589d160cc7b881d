"""The libABCD form of an experiment, `{"run": {"client1": {"cmd": "./exec-client.py client1"}}}`.

Turned into the Orbit form before validation: each entry a program restarted
always, its `cmd` split like a shell would (never run through one).
"""

import shlex

from experiments.errors import ConfigError


def is_libabcd(raw):
    return isinstance(raw, dict) and "run" in raw and "programs" not in raw


def convert(raw):
    """The Orbit form of a libABCD description; hosts it names are declared with defaults."""
    converted = {key: value for key, value in raw.items() if key != "run"}
    run, hosts = raw["run"], raw.get("hosts", {})
    if not isinstance(run, dict) or not isinstance(hosts, dict):
        return raw  # let the schema say what is wrong
    programs, hosts = {}, dict(hosts)
    for name, entry in run.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("cmd"), str) \
                or not isinstance(entry.get("host", ""), str):
            return raw
        try:
            argv = shlex.split(entry["cmd"])
        except ValueError as exc:
            raise ConfigError(f"run.{name}.cmd: cannot be split like a shell command: {exc}",
                              [f"run.{name}.cmd: cannot be split like a shell command: {exc}"]) from None
        program = {"cmd": argv, "restart": "always"}
        host = entry.get("host")
        if host and host != "local":
            program["host"] = host
            hosts.setdefault(host, {})
        programs[name] = program
    converted["programs"] = programs
    if hosts:
        converted["hosts"] = hosts
    return converted
