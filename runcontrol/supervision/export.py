"""What another host needs to run its programs under its own supervisord, written into one folder.

  python run.py EXPERIMENT --export HOST DIR

Writes into DIR: `supervisord.conf` (an `[inet_http_server]` with the host's
credentials; one `[program:x]` per program of that host, never started or
restarted by supervisord itself, since Orbit alone decides that, with its own
backoff and intensity; stop signal and grace; the whole process group stopped
and killed; environment; directory; log files rotated as the experiment says;
the host agent as an event listener),
a copy of the experiment file (each program's directory made absolute, as
supervisord runs it), the CURVE keys of that host's clients (programs with a
client name, and its agent) and the server's public key when the bus uses CURVE,
and a README with the commands to run there. Everything is written aside first:
an export that fails leaves DIR as it was. Copying DIR and starting supervisord
is the whole deployment. Must not start anything.
"""

import json
import os
import shlex
import shutil
import sys
import tempfile
import urllib.parse
from pathlib import Path

import experiments
from experiments import libabcd
from runcontrol import protocol
from runcontrol.errors import ConfigError

CONF = "supervisord.conf"
AGENT = "orbit-agent"
ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT_COPY = "experiment.json"
README = """# {experiment}: host {host}

What runs here: {programs}. Orbit's run controller starts, stops and restarts them
through this host's supervisord at {url}; supervisord never does on its own.
Beside them supervisord runs Orbit's host agent (`{agent}`, client host.{host}), which
tells the run controller at once when a process changes state and publishes this
host's figures.

On {host}, with Orbit's checkout at the same path as on the controller's host
({root}) and its virtual environment made there (`make test` or `make .venv/.installed`):

    cd {folder} && {python} -m supervisor.supervisord -c {conf}
    {python} -m supervisor.supervisorctl -c {folder}/{conf} status

The first starts supervisord (it goes to the background; its log is log/supervisord.log);
the second shows the programs, STOPPED until the run controller starts them, and the
agent, RUNNING.
"""


def programs_of(experiment, host):
    return [p for p in experiment.programs if p.host == host]


def export(experiment, host, folder):
    """Write what `host` needs into `folder`; returns the files written. ConfigError for an unknown host."""
    spec = experiment.hosts.get(host)
    if spec is None:
        known = ", ".join(experiment.hosts) or "none"
        raise ConfigError(f"experiment {experiment.name} has no host {host!r} (hosts: {known})")
    folder = Path(folder).resolve()
    try:
        if not folder.parent.exists():
            folder.parent.mkdir(parents=True)
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.export-", dir=folder.parent))
        try:
            names = write(experiment, spec, folder, aside)
            return put_in_place(aside, folder, names)
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    except OSError as exc:
        raise ConfigError(f"cannot write what host {host} needs into {folder}: "
                          f"{exc.strerror or exc} ({exc.filename or folder})") from None


def write(experiment, spec, folder, aside):
    """Write every file into `aside` as it must read once in `folder`; their paths relative to it."""
    host = spec.name
    (aside / "log").mkdir()
    copy = aside / EXPERIMENT_COPY
    copy.write_text(json.dumps(with_absolute_directories(experiment), indent=1), encoding="utf-8")
    keys = copy_keys(experiment, host, aside)
    in_folder = {name: folder / path.relative_to(aside) for name, path in keys.items()}
    conf = aside / CONF
    conf.write_text(configuration(experiment, spec, folder, in_folder), encoding="utf-8")
    conf.chmod(0o600)  # it holds the password
    readme = aside / "README.md"
    readme.write_text(README.format(
        experiment=experiment.name, host=host, url=spec.supervisord, folder=folder, conf=CONF,
        root=ROOT, python=sys.executable,
        agent=AGENT, programs=", ".join(p.name for p in programs_of(experiment, host)) or "no program yet"), encoding="utf-8")
    return [path.relative_to(aside) for path in (conf, readme, copy, *keys.values())]


def put_in_place(aside, folder, names):
    """A new folder takes the place of `aside` whole; an existing one (its supervisord may run from it, with its
    logs) gets each file replaced on its own, each replacement atomic."""
    if not folder.exists():
        os.rename(aside, folder)
        return [folder / name for name in names]
    for name in names:
        (folder / name).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(aside / name, folder / name)
    (folder / "log").mkdir(exist_ok=True)
    return [folder / name for name in names]


def with_absolute_directories(experiment):
    """The experiment's description with each program's `cwd` absolute: its agent runs its probes there."""
    raw = experiments.read(experiment.path)
    raw = libabcd.convert(raw) if libabcd.is_libabcd(raw) else raw
    for spec in experiment.programs:
        if isinstance(raw.get("programs", {}).get(spec.name), dict):
            raw["programs"][spec.name]["cwd"] = str(spec.cwd)
    return raw


def configuration(experiment, host, folder, keys):
    address = urllib.parse.urlsplit(host.supervisord)
    port = f"{address.hostname}:{address.port or 9001}"
    password = read_password(host)
    lines = ["[supervisord]", f"logfile={folder / 'log' / 'supervisord.log'}",
             f"pidfile={folder / 'supervisord.pid'}", f"childlogdir={folder / 'log'}", "",
             "[inet_http_server]", f"port={port}"]
    lines += [f"username={host.username}", f"password={password}"] if host.username else []
    lines += ["", "[rpcinterface:supervisor]",
              "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
              "[supervisorctl]", f"serverurl=http://{port}"]
    lines += [f"username={host.username}", f"password={password}"] if host.username else []
    for program in programs_of(experiment, host.name):
        lines += ["", *program_section(experiment, program, folder, keys)]
    lines += ["", *agent_section(experiment, host.name, folder, keys)]
    return "\n".join(lines) + "\n"


def agent_section(experiment, host, folder, keys):
    """The host agent, run by supervisord as an event listener of PROCESS_STATE (and restarted by it)."""
    name = protocol.HOST_AGENT + host
    return [f"[eventlistener:{AGENT}]",
            f"command={shlex.join([sys.executable, '-m', 'clients.hostagent', '--host', host])}",
            f"directory={ROOT}",
            "environment=" + environment(client_env(name, folder, keys)),
            "events=PROCESS_STATE", "autostart=true", "autorestart=true", "startsecs=1", "buffer_size=1000",
            "stopasgroup=true", "killasgroup=true",
            f"stderr_logfile={folder / 'log' / f'{AGENT}.log'}", f"stderr_logfile_maxbytes={experiment.logs.max_bytes}",
            f"stderr_logfile_backups={experiment.logs.keep}"]


def client_env(name, folder, keys):
    """What a client of this host needs to join: its name, the experiment, its CURVE key when there is one."""
    env = {"ORBIT_NAME": name, "ORBIT_EXPERIMENT": str(folder / EXPERIMENT_COPY)}
    if f"{name}.key_secret" in keys:
        env.update(ORBIT_KEY=str(keys[f"{name}.key_secret"]), ORBIT_SERVER_KEY=str(keys["server.key"]))
    return env


def environment(env):
    return ",".join(f'{key}="{quoted(value)}"' for key, value in env.items())


def program_section(experiment, program, folder, keys):
    env = {**program.env, **client_env(program.client or program.name, folder, keys)}
    log = folder / "log" / f"{program.name}.log"
    return [f"[program:{program.name}]",
            f"command={shlex.join(program.argv)}",
            f"directory={program.cwd}",
            "environment=" + environment(env),
            "autostart=false", "autorestart=false", "startsecs=0", "startretries=0",
            f"stopsignal={program.stop_signal.name.removeprefix('SIG')}",
            f"stopwaitsecs={max(1, round(program.stop_timeout_s))}",
            "stopasgroup=true", "killasgroup=true", "redirect_stderr=true",
            f"stdout_logfile={log}", f"stdout_logfile_maxbytes={experiment.logs.max_bytes}",
            f"stdout_logfile_backups={experiment.logs.keep}"]


def quoted(value):
    """A value for supervisord's environment= line: its quotes escaped, its % doubled (it expands %(name)s)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def read_password(host):
    if host.password_file is None:
        return None
    try:
        return host.password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"hosts.{host.name}.password_file: cannot read {host.password_file}: "
                          f"{exc.strerror}") from None


def copy_keys(experiment, host, folder):
    """The CURVE keys of the host's clients and the server's public key, copied under folder/keys.

    A program with a client name, and the host's agent, must have a key; one without may (a key made for
    its program name is copied, for a tool it runs that joins the bus)."""
    curve = experiment.server.curve
    if curve is None:
        return {}
    target = folder / "keys"
    target.mkdir(mode=0o700, exist_ok=True)
    copied = {"server.key": target / "server.key"}
    shutil.copyfile(curve.server_key, copied["server.key"])
    needed = {program.client for program in programs_of(experiment, host) if program.client}
    needed.add(protocol.HOST_AGENT + host)
    optional = {program.name for program in programs_of(experiment, host) if not program.client} - needed
    for name in sorted(needed | optional):
        if name in optional and not (curve.clients / f"{name}.key_secret").exists():
            continue
        for suffix in ("key", "key_secret"):
            source = curve.clients / f"{name}.{suffix}"
            if not source.exists():
                raise ConfigError(f"no CURVE key {source} for {name} (make them with python -m runcontrol.bus.keys)")
            copied[f"{name}.{suffix}"] = target / source.name
            shutil.copyfile(source, copied[f"{name}.{suffix}"])
            if suffix == "key_secret":
                copied[f"{name}.{suffix}"].chmod(0o600)
    return copied
