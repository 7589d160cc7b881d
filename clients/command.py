"""The command client: runs only the commands its own configuration lists, each under a timeout.

  python -m clients.command --name shell --config FILE

The configuration (JSON) names each command with its argument vector and the
arguments an operator may fill in, each checked against `choices` or a
`pattern` (the whole value must match); nothing runs through a shell, and
nothing the network sends becomes code:

  {"commands": {"disk": {"argv": ["df", "-h", "{path}"], "timeout": 5,
                         "args": {"path": {"choices": ["/", "/tmp"]}}}}}

Commands: `run` (`command`, `args`), `list`, `status`, `monitor`.
"""

import json
import os
import re
import signal
import string
import subprocess
import tempfile
import time

from runcontrol.client.core import required
from clients.instrument import Instrument, serve_instrument
from runcontrol.errors import ConfigError, Refused

DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 600.0
OUTPUT_LIMIT = 64 * 1024


class Allowed:
    """One configured command: its argv template, argument rules and timeout."""

    def __init__(self, name, entry):
        where = f"commands.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("argv"), list) or not entry["argv"] \
                or not all(isinstance(a, str) for a in entry["argv"]):
            raise ConfigError(f"{where}.argv: must be a non-empty list of strings")
        self.name, self.argv = name, entry["argv"]
        self.timeout_s = entry.get("timeout", DEFAULT_TIMEOUT_S)
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) \
                or not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise ConfigError(f"{where}.timeout: must be a number of seconds, 0 to {MAX_TIMEOUT_S:g}")
        self.rules = entry.get("args", {})
        if not isinstance(self.rules, dict):
            raise ConfigError(f"{where}.args: must be an object")
        placeholders = {field for arg in self.argv for _, field, _, _ in string.Formatter().parse(arg) if field}
        for field in placeholders - set(self.rules):
            raise ConfigError(f"{where}.argv: {{{field}}} has no rule in {where}.args")
        for field, rule in self.rules.items():
            if not isinstance(rule, dict) or not ("choices" in rule or "pattern" in rule):
                raise ConfigError(f"{where}.args.{field}: needs 'choices' (a list) or 'pattern' (a regex)")

    def argv_for(self, args):
        """The argument vector with `args` filled in; Refused if any is missing, unknown or not allowed."""
        if not isinstance(args, dict):
            raise Refused("'args' must be an object", "bad_field")
        unknown = set(args) - set(self.rules)
        if unknown:
            raise Refused(f"{self.name} takes no argument {', '.join(sorted(unknown))}; "
                          f"it takes: {', '.join(sorted(self.rules)) or 'none'}", "bad_field")
        for field, rule in self.rules.items():
            if field not in args:
                raise Refused(f"{self.name} needs the argument {field!r}", "bad_field")
            value = args[field]
            if not isinstance(value, str):
                raise Refused(f"argument {field!r} must be a string", "bad_field")
            if "choices" in rule and value not in rule["choices"]:
                raise Refused(f"argument {field!r}: {value!r} is not one of {', '.join(rule['choices'])}",
                              "not_allowed")
            if "pattern" in rule and not re.fullmatch(rule["pattern"], value):
                raise Refused(f"argument {field!r}: {value!r} does not match {rule['pattern']}", "not_allowed")
        return [arg.format(**args) for arg in self.argv]


def load_config(path):
    try:
        raw = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("commands"), dict):
        raise ConfigError(f"{path}: must hold {{\"commands\": {{NAME: {{\"argv\": [...]}}}}}}")
    try:
        return {name: Allowed(name, entry) for name, entry in raw["commands"].items()}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


class Running:
    def __init__(self, reply, allowed, popen, out, err):
        self.reply, self.allowed, self.popen, self.out, self.err = reply, allowed, popen, out, err
        self.pidfd = os.pidfd_open(popen.pid)
        self.deadline = time.monotonic() + allowed.timeout_s
        self.timed_out = False


class CommandClient(Instrument):
    def __init__(self, name, allowed, **kwargs):
        super().__init__(name, **kwargs)
        self.allowed = allowed
        self.running = []
        self.counts = {"runs": 0, "failures": 0, "timeouts": 0}

    def values(self):
        return {**self.counts, "running": len(self.running)}

    def cmd_list(self, msg):
        """The commands this client may run, with their arguments."""
        return {name: {"argv": a.argv, "args": a.rules, "timeout": a.timeout_s} for name, a in self.allowed.items()}

    def cmd_run(self, msg):
        """Run a configured command (`command`, `args`); answers with its exit status and output."""
        name = required(msg, "command")
        allowed = self.allowed.get(name) if isinstance(name, str) else None
        if allowed is None:
            raise Refused(f"no command {name!r} in this client's configuration; it has: "
                          f"{', '.join(sorted(self.allowed)) or 'none'}", "not_allowed")
        argv = allowed.argv_for(msg.get("args", {}))
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     start_new_session=True)
        except OSError as exc:
            out.close()
            err.close()
            raise Refused(f"{name}: cannot run {argv[0]}: {exc}", "failed") from None
        job = Running(self.defer(msg), allowed, popen, out, err)
        self.running.append(job)
        self.watch(job.pidfd, lambda: self._finish(job))
        self.counts["runs"] += 1
        self.log.info("running %s: %s", name, argv)
        return job.reply

    def tick(self, dt):
        now = time.monotonic()
        for job in self.running:
            if now >= job.deadline and not job.timed_out:
                job.timed_out = True
                self.counts["timeouts"] += 1
                os.killpg(job.popen.pid, signal.SIGKILL)

    def _finish(self, job):
        code = job.popen.wait()
        self.unwatch(job.pidfd)
        os.close(job.pidfd)
        self.running.remove(job)
        output = {"stdout": read_capped(job.out), "stderr": read_capped(job.err)}
        if job.timed_out:
            job.reply.refuse(f"{job.allowed.name} timed out after {job.allowed.timeout_s:g} s and was killed",
                             "timeout")
            return
        if code != 0:
            self.counts["failures"] += 1
        job.reply.resolve({"command": job.allowed.name, "code": code, **output})


def read_capped(file):
    file.seek(0)
    data = file.read(OUTPUT_LIMIT + 1)
    file.close()
    text = data[:OUTPUT_LIMIT].decode("utf-8", "replace")
    return text + ("\n[output cut at 64 KiB]" if len(data) > OUTPUT_LIMIT else "")


def main(argv=None):
    def options(parser):
        parser.add_argument("--config", required=True, help="JSON file listing the commands allowed")

    def make(a):
        return CommandClient(a.name, load_config(a.config), period_s=min(a.period, 0.2), experiment=a.experiment,
                             server=a.server)
    return serve_instrument(make, __doc__.split("\n")[0], options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
