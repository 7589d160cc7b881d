"""Checks a schema cannot express: dependencies, cycles, shared client names, hosts, alarms; start order."""

import json
import re
import shutil
import stat
import urllib.parse
from pathlib import Path

SECRET = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def cross_check(raw):
    """Every problem of the programs' relations, as 'json.path: sentence'."""
    programs = raw.get("programs")
    if not isinstance(programs, dict):
        return []
    programs = {n: p for n, p in programs.items() if isinstance(p, dict)}
    hosts = raw.get("hosts") if isinstance(raw.get("hosts"), dict) else {}
    problems = []
    owners = {}
    for name, program in programs.items():
        for dep in program.get("depends_on", []) if isinstance(program.get("depends_on"), list) else []:
            if isinstance(dep, str) and dep not in programs:
                problems.append(f"programs.{name}.depends_on: {dep!r} names no program")
        client = program.get("client")
        if isinstance(client, str):
            if client in owners:
                problems.append(f"programs.{name}.client: {client!r} is already the client name of "
                                f"program {owners[client]!r}")
            owners.setdefault(client, name)
        host = program.get("host", "local")
        if isinstance(host, str) and host != "local" and host not in hosts:
            known = ", ".join(["local", *hosts]) if hosts else "local"
            problems.append(f"programs.{name}.host: {host!r} is not a known host ({known})")
    cycle = find_cycle(dependencies(programs))
    if cycle:
        problems.append(f"programs: dependency cycle {' -> '.join(cycle)}")
    return problems


def network_exposure(raw):
    """A router or event address off loopback needs CURVE keys, or an explicit `insecure`."""
    server = raw.get("server") if isinstance(raw.get("server"), dict) else {}
    if "curve" in server or server.get("insecure") is True:
        return []
    return [f"server.{key}: {server[key]} can be reached from the network: give server.curve "
            "(keys made by python -m runcontrol.bus.keys) or set server.insecure to true"
            for key in ("router", "events") if isinstance(server.get(key), str) and not is_loopback(server[key])]


def legacy_exposure(raw):
    """The libABCD gateway off loopback needs an explicit `legacy.insecure`: its wire has no encryption."""
    server = raw.get("server") if isinstance(raw.get("server"), dict) else {}
    legacy = server.get("legacy") if isinstance(server.get("legacy"), dict) else {}
    address = legacy.get("address", "127.0.0.1")
    if not legacy or not isinstance(address, str) or is_loopback_host(address) or legacy.get("insecure") is True:
        return []
    return [f"server.legacy.address: {address} can be reached from the network, and libABCD's wire has no "
            "encryption: keep it on loopback, or set server.legacy.insecure to true on a private DAQ network"]


def host_credentials(raw):
    """A host's supervisord off loopback needs a username and a password file: its HTTP has no encryption."""
    hosts = raw.get("hosts") if isinstance(raw.get("hosts"), dict) else {}
    problems = []
    for name, host in hosts.items():
        url = host.get("supervisord") if isinstance(host, dict) else None
        if not isinstance(url, str) or is_loopback_url(url):
            continue
        if not host.get("username") or not host.get("password_file"):
            problems.append(f"hosts.{name}.supervisord: {url} is off loopback: give hosts.{name}.username and "
                            f"hosts.{name}.password_file (supervisord's HTTP interface has no encryption: keep it "
                            "on a private DAQ network, with a password)")
    return problems


CONDITIONS = ("above", "below", "band", "unchanged", "missing")


def alarm_definitions(raw):
    """Each alarm has one condition; limits that make sense; commands only to the experiment's clients."""
    alarms = raw.get("alarms") if isinstance(raw.get("alarms"), dict) else {}
    programs = raw.get("programs") if isinstance(raw.get("programs"), dict) else {}
    clients = {p["client"] for p in programs.values() if isinstance(p, dict) and isinstance(p.get("client"), str)}
    clients.add("run")
    problems = []
    for name, alarm in alarms.items():
        if not isinstance(alarm, dict):
            continue
        where = f"alarms.{name}"
        given = [c for c in CONDITIONS if c in alarm]
        if len(given) != 1:
            problems.append(f"{where}: give exactly one condition of {', '.join(CONDITIONS)}"
                            + (f" (it has {', '.join(given)})" if given else ""))
        if "relative_to" in alarm and not {"above", "below", "band"} & set(given):
            problems.append(f"{where}.relative_to: only with above, below or band")
        band = alarm.get("band")
        if isinstance(band, list) and len(band) == 2 and all(isinstance(b, (int, float)) for b in band) \
                and not band[0] < band[1]:
            problems.append(f"{where}.band: the low limit {band[0]} must be below the high one {band[1]}")
        actions = alarm.get("actions") if isinstance(alarm.get("actions"), list) else []
        for i, action in enumerate(actions):
            send = action.get("send") if isinstance(action, dict) else None
            if isinstance(send, dict) and isinstance(send.get("to"), str) and send["to"] not in clients:
                problems.append(f"{where}.actions.{i}.send.to: {send['to']!r} is the client of no program "
                                f"(known: {', '.join(sorted(clients))})")
    return problems


def epics_section(raw):
    """The epics section against the rest: each writable setting exported, of a program with a client; settings
    served off loopback only with `insecure`; imported names once each, not from its own prefix; alarms that name
    an imported channel by its Orbit name, `missing` ones longer than its republications."""
    epics = raw.get("epics")
    if not isinstance(epics, dict):
        return []
    writable = [n for n in listed(epics, "writable") if ".config." in n]
    problems = epics_writable(writable, listed(epics, "export"), raw.get("programs"))
    exposed = [a for a in listed(epics, "interfaces") if not is_loopback_host(a)]
    if writable and exposed and epics.get("insecure") is not True:
        problems.append(f"epics.interfaces: {', '.join(exposed)} can be reached from the network, and Channel Access "
                        "has no authentication (a put names the user and host its client says): keep writable settings "
                        "on loopback, or set epics.insecure to true on a private network")
    return problems + epics_imports(epics, raw.get("alarms"), raw.get("programs"))


def epics_writable(writable, export, programs):
    programs = programs if isinstance(programs, dict) else {}
    problems = []
    for i, name in enumerate(writable):
        program = name.split(".config.", 1)[0]
        if program not in programs:
            problems.append(f"epics.writable.{i}: {program!r} is no program of the experiment")
        elif not isinstance(programs[program], dict) or not programs[program].get("client"):
            problems.append(f"epics.writable.{i}: program {program!r} has no client (its settings come with its "
                            "client's registration)")
        if not matches_any(export, name):
            problems.append(f"epics.writable.{i}: {name!r} is not exported: add it (or a pattern covering it) to "
                            "epics.export")
    return problems


def epics_imports(epics, alarms, programs):
    imports = epics.get("import") if isinstance(epics.get("import"), dict) else {}
    client, prefix = epics.get("client", "epics"), epics.get("prefix")
    programs = programs if isinstance(programs, dict) else {}
    clients = {p.get("client") for p in programs.values() if isinstance(p, dict)}
    problems, names = [], {}
    for pv, entry in imports.items():
        name = entry.get("as") if isinstance(entry, dict) else None
        if isinstance(prefix, str) and pv.startswith(prefix):
            problems.append(f"epics.import.{pv}: {prefix!r} is this experiment's own prefix: it would import what it "
                            "serves")
        if not isinstance(name, str):
            continue
        if name in names:
            problems.append(f"epics.import.{pv}.as: {name!r} is already the name of {names[name]}")
        names.setdefault(name, pv)
    republish = epics.get("republish", 5)
    for alarm_name, alarm in (alarms.items() if isinstance(alarms, dict) else ()):
        value = alarm.get("value") if isinstance(alarm, dict) else None
        if not isinstance(value, str):
            continue
        if value in names and value.split(".", 1)[0] not in clients:
            problems.append(f"alarms.{alarm_name}.value: {value!r} is imported from {names[value]}, published as "
                            f"{client}.{value}: name it so")
        missing = alarm.get("missing")
        if value.removeprefix(f"{client}.") in names and value.startswith(f"{client}.") \
                and isinstance(missing, (int, float)) and isinstance(republish, (int, float)) and missing <= republish:
            problems.append(f"alarms.{alarm_name}.missing: {missing} s is not more than epics.republish ({republish} "
                            "s), how often an imported value that does not change is published again")
    return problems


def listed(section, key):
    """The strings of a list in a section not yet validated."""
    value = section.get(key)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def matches_any(patterns, name):
    """Whether `name` is one of `patterns`, or starts with one that ends in `*` (`cryo.values.*`)."""
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in patterns)


PROBES = ("exec", "tcp", "http")


def liveness_probes(raw):
    """Each liveness probe has one kind; `send` and `expect` only where they mean something; a usable port."""
    programs = raw.get("programs") if isinstance(raw.get("programs"), dict) else {}
    problems = []
    for name, program in programs.items():
        probe = program.get("liveness") if isinstance(program, dict) else None
        if not isinstance(probe, dict):
            continue
        where = f"programs.{name}.liveness"
        given = [kind for kind in PROBES if kind in probe]
        if len(given) != 1:
            problems.append(f"{where}: give exactly one probe of {', '.join(PROBES)}"
                            + (f" (it has {', '.join(given)})" if given else ""))
        if "send" in probe and given != ["tcp"]:
            problems.append(f"{where}.send: only with a tcp probe")
        if "expect" in probe and "send" not in probe:
            problems.append(f"{where}.expect: only with send (the answer to what was sent)")
        port = probe["tcp"].rsplit(":", 1)[-1] if isinstance(probe.get("tcp"), str) else ""
        if port.isdigit() and not 0 < int(port) < 65536:
            problems.append(f"{where}.tcp: port {port} is not from 1 to 65535")
    return problems


def is_loopback_url(url):
    return is_loopback_host(urllib.parse.urlsplit(url).hostname or "")


def is_loopback(address):
    return is_loopback_host(address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]"))


def is_loopback_host(host):
    return host == "localhost" or host.startswith("127.") or host == "::1"


def dependencies(programs):
    def named(p):
        deps = p.get("depends_on")
        return deps if isinstance(deps, list) else []
    return {name: [d for d in named(p) if isinstance(d, str) and d in programs] for name, p in programs.items()}


def find_cycle(graph):
    """One dependency cycle as [a, b, ..., a], or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in graph[node]:
            if state.get(dep) == "open":  # on the current path: a cycle
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in graph:
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def start_order(programs):
    """Program names so that each comes after its dependencies; ties keep the file's order."""
    graph = dependencies(programs)
    order, placed = [], set()
    while len(order) < len(graph):
        for name in graph:
            if name not in placed and all(dep in placed for dep in graph[name]):
                order.append(name)
                placed.add(name)
                break
    return order


def renamed_keys(raw):
    """Warnings for keys read under their earlier names."""
    return [f"programs.{name}.run: now called participant (read as such)"
            for name, program in raw["programs"].items() if "run" in program]


def missing_commands(specs):
    """Warnings for local commands that cannot be found here (they may exist where they run)."""
    warnings = []
    for spec in specs:
        if spec.host != "local":
            continue
        command = spec.argv[0]
        found = shutil.which(command) if "/" not in command else (Path(spec.cwd) / command).exists()
        if not found:
            warnings.append(f"programs.{spec.name}.cmd: {command!r} is not found on this host")
    return warnings


def notify_problems(notify, folder):
    """Rules naming routes that do not exist; a secrets file that is missing, readable by others, or lacks a
    ${NAME} a URL uses."""
    routes = notify.get("routes", {})
    problems = []
    for i, rule in enumerate(notify.get("rules", [])):
        for key in ("route", "escalate_to"):
            if key in rule and rule[key] not in routes:
                problems.append(f"notify.rules.{i}.{key}: {rule[key]!r} is not a route ({', '.join(routes)})")
        if ("escalate_after" in rule) != ("escalate_to" in rule):
            problems.append(f"notify.rules.{i}: escalate_after and escalate_to go together")
    heartbeat = notify.get("heartbeat") if isinstance(notify.get("heartbeat"), dict) else {}
    wanted = {(name, "notify.routes") for urls in routes.values() for url in urls for name in SECRET.findall(url)}
    wanted |= {(name, "notify.heartbeat.url") for name in SECRET.findall(str(heartbeat.get("url", "")))}
    if "secrets" not in notify:
        return problems + [f"{where}: ${{{name}}} needs notify.secrets, a file that holds it"
                           for name, where in sorted(wanted)]
    path = folder / notify["secrets"]
    try:
        mode = path.stat().st_mode
        secrets = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return problems + [f"notify.secrets: cannot read {path}: {exc.strerror}"]
    except ValueError as exc:
        return problems + [f"notify.secrets: {path} is not valid JSON: {exc}"]
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(f"notify.secrets: {path} can be read by others (mode {stat.S_IMODE(mode):o}): "
                        f"chmod 600 {path}")
    if not isinstance(secrets, dict) or not all(isinstance(v, str) for v in secrets.values()):
        return problems + [f"notify.secrets: {path} must hold one JSON object of strings {{NAME: value}}"]
    return problems + [f"{where}: ${{{name}}} is not in {path}" for name, where in sorted(wanted)
                       if name not in secrets]


def fill_secrets(url, secrets):
    """`url` with each ${NAME} taken from `secrets`."""
    return SECRET.sub(lambda m: secrets[m[1]], url)


CONDITION = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*(=|!=|<=|>=|<|>|~)\S.*$")


def catalog_problems(catalog):
    """Two catalog values of one name; a rule's condition that is no KEY OP VALUE."""
    problems, seen = [], {}
    for i, value in enumerate(catalog.get("values", [])):
        named = value if isinstance(value, str) else value.get("name") or value["value"]
        name = named.rpartition(".")[2]
        if name in seen:
            problems.append(f"catalog.values.{i}: the name {name!r} is taken by catalog.values.{seen[name]} "
                            "(give one a \"name\")")
        seen.setdefault(name, i)
    for i, rule in enumerate(catalog.get("rules", [])):
        for j, word in enumerate(rule["when"]):
            if not CONDITION.match(word):
                problems.append(f"catalog.rules.{i}.when.{j}: {word!r} is no condition KEY OP VALUE "
                                "(OP one of = != < <= > >= ~), e.g. \"temperature.max<145\"")
    return problems
