"""Several hosts: respawn through another host's supervisord, bringing up 100 programs on two hosts, idle CPU.

Respawn, in one run, 20 SIGKILLs each: (a) a program of this host under the run
controller (local backend); (b) a program of host daq2 under daq2's supervisord,
driven by the run controller (its host agent tells the exit); (c) supervisord's own
`autorestart` (bench_supervision's). Each program is `bash -c 'echo $$
$EPOCHREALTIME >> FILE; exec sleep 1000'`; a round waits until it has been up
1.3 s, kills it, and measures kill -> the replacement's first instruction.

Bring-up: 100 clients (`tests/programs/echo_client.py`), 50 on each of two hosts
(two supervisord on loopback ports): run controller started -> all 100 RUNNING and
registered. The reference, in the same run: the same 100 clients started directly
(Popen) -> all registered with the server. Then the run controller's CPU over
`--seconds` while they idle; the reference, over the same seconds: the CPU of the two
hosts' supervisord, which keep the same programs (and answer the run controller's
questions).
Targets: (b) median under 50 ms; bring-up under 5 s.

Run: python benchmarks/bench_hosts.py [--kills 20] [--programs 100] [--seconds 20]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import xmlrpc.client

import bench_supervision
import common
import psutil
from figures import Report

from runcontrol.client.client import Client

PROGRAMS = common.ROOT / "tests" / "programs"
PASSWORD = "bench"




class Experiment:
    """A server here, hosts daq2 and daq3 each under a supervisord on loopback, a run controller."""

    def __init__(self, folder, programs):
        self.folder = folder
        self.server = common.BenchServer(name=f"hosts-{os.getpid()}-{folder.name}")
        self.path = self.server.path
        description = json.loads(self.path.read_text())
        (self.path.parent / "keys").mkdir(exist_ok=True)
        (self.path.parent / "keys" / "host.pass").write_text(PASSWORD)
        description["hosts"] = {h: {"supervisord": f"http://127.0.0.1:{common.free_port()}/RPC2",
                                    "username": "orbit", "password_file": "keys/host.pass"} for h in ("daq2", "daq3")}
        description["programs"] = programs
        self.path.write_text(json.dumps(description))
        self.hosts = {}
        self.controller = None

    def start_hosts(self):
        for host in ("daq2", "daq3"):
            out = self.folder / f"host-{host}"
            subprocess.run([sys.executable, "run.py", str(self.path), "--export", host, str(out)], cwd=common.ROOT,
                           check=True, capture_output=True)
            self.hosts[host] = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(out / "supervisord.conf")],
                cwd=out, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for host in self.hosts:
            url = json.loads(self.path.read_text())["hosts"][host]["supervisord"]
            rpc = xmlrpc.client.ServerProxy(url.replace("http://", f"http://orbit:{PASSWORD}@"))
            common.wait_for(lambda: answers(rpc), 30, 0.1)

    def start_controller(self):
        self.controller = subprocess.Popen(
            [sys.executable, "-m", "runcontrol.control.controller", "--experiment", str(self.path), "--log-level", "WARNING"],
            cwd=common.ROOT, start_new_session=True)

    def stop(self):
        if self.controller is not None:
            common.stop_group(self.controller)
        for proc in self.hosts.values():
            common.stop_group(proc)
        self.server.stop()


def answers(rpc):
    try:
        return rpc.supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Error):
        return False


def respawn_under_orbit(folder, kills):
    """(a) and (b): one victim here and one on daq2, under one run controller."""
    stamps = {host: folder / f"{host}.stamps" for host in ("local", "daq2")}
    programs = {f"victim_{host}": {"cmd": ["bash", "-c", bench_supervision.STAMP.format(file=stamps[host])],
                                   "host": host, "max_restarts": 1000, "stop_timeout": 2} for host in stamps}
    experiment = Experiment(folder, programs)
    results = {}
    try:
        experiment.server.start()
        experiment.start_hosts()
        experiment.start_controller()
        for host, stamp_file in stamps.items():
            results[host] = kill_rounds(stamp_file, kills)
    finally:
        experiment.stop()
    return results


def kill_rounds(stamp_file, kills):
    latencies = []
    for round_number in range(1, kills + 1):
        pid, started = bench_supervision.wait_stamps(stamp_file, round_number)[-1]
        time.sleep(max(0.0, started + bench_supervision.UP_BEFORE_KILL_S - time.time()))
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        latencies.append(1000 * (bench_supervision.wait_stamps(stamp_file, round_number + 1)[-1][1] - killed_at))
    return latencies


def registered(op, names):
    listed = {c["name"] for c in op.request(None, "_list")}
    return names <= listed


def bring_up(folder, count, seconds):
    names = [f"c{i:03d}" for i in range(count)]
    programs = {name: {"cmd": ["python", str(PROGRAMS / "echo_client.py"), name], "client": name,
                       "host": "daq2" if i % 2 else "daq3", "stop_timeout": 2} for i, name in enumerate(names)}
    experiment = Experiment(folder, programs)
    direct = []
    try:
        experiment.server.start()
        with Client(f"bench-op-{os.getpid()}", experiment=str(experiment.path)) as op:
            op.connect(20)
            env = {**os.environ, "PYTHONPATH": str(common.ROOT), "ORBIT_EXPERIMENT": str(experiment.path)}
            began = time.monotonic()
            direct = [subprocess.Popen([sys.executable, str(PROGRAMS / "echo_client.py"), name], env=env,
                                       cwd=common.ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL) for name in names]
            wait_polling(op, lambda: registered(op, set(names)), 120)
            reference = time.monotonic() - began
            for proc in direct:
                common.stop_group(proc)
            wait_polling(op, lambda: not set(names) & {c["name"] for c in op.request(None, "_list")}, 60)
            experiment.start_hosts()
            began = time.monotonic()
            experiment.start_controller()
            wait_polling(op, lambda: all_up(op, names), 180)
            orbit = time.monotonic() - began
            watched = [psutil.Process(p.pid) for p in (experiment.controller, *experiment.hosts.values())]
            before = [p.cpu_times() for p in watched]
            began = time.monotonic()
            wait_polling(op, lambda: False, seconds, quiet=True)
            after = [p.cpu_times() for p in watched]
            took = time.monotonic() - began
            idle, *hosts = [100 * ((a.user + a.system) - (b.user + b.system)) / took for b, a in zip(before, after)]
    finally:
        for proc in direct:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        experiment.stop()
    return reference, orbit, idle, sum(hosts)


def all_up(op, names):
    try:
        programs = op.request("run", "status", timeout=5)["programs"]
    except Exception:  # the run controller is not there yet
        return False
    return all(programs[n]["state"] == "RUNNING" and programs[n]["registered"] for n in names)


def wait_polling(op, predicate, timeout_s, quiet=False):
    """Keep the operator client answering heartbeats while waiting."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            if quiet:
                return
            raise RuntimeError("timed out")
        op.poll(0.1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--programs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("hosts", kills=args.kills, programs=args.programs, seconds=args.seconds)
    folder = common.scratch("orbit-bench-hosts-")
    (folder / "respawn").mkdir()
    respawn = respawn_under_orbit(folder / "respawn", args.kills)
    respawn["supervisord"] = [1000 * v for v in bench_supervision.respawn(
        bench_supervision.Supervisord, folder, args.kills)]
    labels = {"local": "(a) local backend, by the run controller",
              "daq2": "(b) daq2's supervisord, driven by the run controller",
              "supervisord": "(c) supervisord `autorestart` alone"}
    for name, ms in respawn.items():
        print(f"respawn {labels[name]}: median {statistics.median(ms):7.1f} ms, max {max(ms):7.1f} ms "
              f"over {len(ms)} kills", flush=True)
    (folder / "up").mkdir()
    reference, orbit, idle, hosts_idle = bring_up(folder / "up", args.programs, args.seconds)
    print(f"{args.programs} clients registered, started directly: {reference:.2f} s; "
          f"on two hosts by the run controller: {orbit:.2f} s ({orbit / reference:.2f} x)")
    print(f"CPU with {args.programs} idle programs on two hosts over {args.seconds:g} s: run controller "
          f"{idle:.2f} % of a core, the two supervisord {hosts_idle:.2f} %")
    report.table(("path", "respawn median", "respawn max"), [
        (labels[name], f"{statistics.median(ms):.1f} ms", f"{max(ms):.1f} ms") for name, ms in respawn.items()],
        title=f"Respawn after SIGKILL, {args.kills} kills each")
    report.table(("", f"all {args.programs} registered"), [
        ("started directly (Popen, the floor)", f"{reference:.2f} s"),
        ("run controller start -> all RUNNING and registered on two hosts", f"{orbit:.2f} s ({orbit / reference:.2f} x)")],
        title="Bring-up")
    report.table(("process", f"CPU over {args.seconds:g} s, {args.programs} idle programs"), [
        ("the run controller", f"{idle:.2f} % of a core"),
        ("the two hosts' supervisord, together", f"{hosts_idle:.2f} % of a core")], title="Idle")
    report.figure("(b) respawn median through daq2's supervisord", statistics.median(respawn["daq2"]), "{:.1f} ms",
                  statistics.median(respawn["supervisord"]), "(c) supervisord's own autorestart", target=("<", 50.0))
    report.figure(f"bring-up of {args.programs} programs on two hosts", orbit, "{:.2f} s", reference,
                  "the same programs started by Popen", target=("<=", 1.5), on="ratio")
    report.figure(f"run controller CPU, {args.programs} idle programs", idle, "{:.2f} %", hosts_idle,
                  "the two supervisord over the same seconds")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
