"""The pid-file watchdog keeping a real server alive (alone, or with a standby started ahead), and the system
recovering by itself."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from runcontrol import pidfile
from runcontrol import discovery
from runcontrol.client.client import Client
from tests.helpers import (ROOT, RawClient, ServerProcess, Watchdog, env_for_children, free_port, pump,
                           registered_names, wait_until, write_experiment)


@pytest.fixture
def kept(experiment_path):
    """A watchdog keeping the test experiment's server, found by its beacon."""
    server = ServerProcess(experiment_path)
    dog = Watchdog(server, "--stale-after", "2", "--grace", "2")
    listener = discovery.BeaconListener(server.beacon_port, experiment=server.name)
    try:
        dog.start()
        server.beacon = wait_until(lambda: listener.wait(0.2), 20, what="the first beacon")
    finally:
        listener.close()
    yield dog
    assert dog.stop() == 0
    assert not dog.pidfile.exists()


@pytest.fixture
def server(kept):
    """The kept server stands in for the plain one, so clients and helper programs use it."""
    return kept.server


def next_beacon(server, old_instance, timeout_s=20):
    listener = discovery.BeaconListener(server.beacon_port, experiment=server.name)
    try:
        return wait_until(lambda: (b := listener.wait(0.2)) and b.instance != old_instance and b, timeout_s,
                          what="a beacon of a new instance")
    finally:
        listener.close()


def test_killed_server_restarted_and_client_back_with_queue(kept, make_client, echo):
    server = kept.server
    sender = make_client("sender")
    first_pid, first_instance = kept.server_pid(), server.beacon.instance
    os.kill(first_pid, signal.SIGKILL)
    pump([sender], lambda: not sender.registered)
    for seq in range(30):
        sender.send("echo", "note", seq=seq)
    server.beacon = next_beacon(server, first_instance)
    assert kept.server_pid() != first_pid
    pump([sender], lambda: sender.registered and sender.instance == server.beacon.instance, 15)
    assert sender.request(None, "_status")["pid"] == kept.server_pid()
    wait_until(lambda: "echo" in registered_names(server.router), 15, interval_s=0.1)
    assert sender.request("echo", "notes", timeout=10) == list(range(30))  # none lost, none doubled
    assert "killed by SIGKILL" in kept.output()


def test_hung_server_killed_and_replaced_and_clients_move_to_the_new_one(kept, make_client, echo):
    client = make_client("mover")
    old_instance = client.instance
    hung = kept.server_pid()
    os.kill(hung, signal.SIGSTOP)
    new_beacon = next_beacon(kept.server, kept.server.beacon.instance)
    kept.server.beacon = new_beacon
    wait_until(lambda: not psutil.pid_exists(hung), 10, what="the hung server to be gone")
    assert new_beacon.pid != hung and kept.server_pid() == new_beacon.pid
    assert f"pid {hung} is hung: pid file" in kept.output() and "not touched for" in kept.output()
    pump([client], lambda: client.registered and client.instance == new_beacon.instance, 20)
    assert client.instance != old_instance and client.router == new_beacon.router
    wait_until(lambda: "echo" in registered_names(new_beacon.router), 15, interval_s=0.1)
    assert client.request("echo", "echo", timeout=10, x=1) == {"x": 1}


@pytest.mark.parametrize("content", ["other-pid", "garbage"])
def test_pid_file_naming_another_pid_or_garbage_counts_as_hang(kept, content):
    first = kept.server_pid()
    if content == "garbage":
        kept.pidfile.write_text("not a pid\n")
        expected = "holds garbage"
    else:
        pidfile.write(kept.pidfile, os.getpid())  # a live process that is not the server: never signalled
        expected = f"names pid {os.getpid()}, not the server's {first}"
    kept.server.beacon = next_beacon(kept.server, kept.server.beacon.instance)
    assert expected in kept.output()
    wait_until(lambda: kept.server_pid() == kept.server.beacon.pid, 10)


@pytest.mark.parametrize("keeper", ["kept", "with_standby"])
def test_the_last_touch_of_a_killed_server_is_not_taken_for_a_hang_of_its_successor(keeper, request):
    dog = request.getfixturevalue(keeper)
    first = dog.server_pid()
    just_now = time.time() + 5   # the killed one touched its pid file as it died (a clock step made it later still)
    os.utime(dog.pidfile, (just_now, just_now))
    os.kill(first, signal.SIGKILL)
    dog.server.beacon = next_beacon(dog.server, dog.server.beacon.instance)
    wait_until(lambda: dog.server_pid() == dog.server.beacon.pid, 10, what="the successor's pid in the file")
    assert "is hung" not in dog.output() and "(restart 2 within" not in dog.output()


def test_command_that_exits_at_once_backs_off_then_gives_up(experiment_path):
    dog = Watchdog(ServerProcess(experiment_path), command=[sys.executable, "-c", "raise SystemExit(3)"]).start()
    try:
        assert dog.proc.wait(60) == 1
    finally:
        dog.stop()
    out = dog.output()
    delays = [float(line.split("restarting in ")[1].split(" s")[0]) for line in out.splitlines()
              if "restarting in" in line]
    assert delays == sorted(delays) and delays[0] == pytest.approx(0.1) and delays[-1] > delays[0]
    assert "exited with status 3" in out
    assert "needed 6 restarts within 30 s (at most 5): giving up" in out


def test_command_that_never_writes_its_pid_file_is_killed_after_its_start_allowance(experiment_path):
    silent = [sys.executable, "-c", "import time; time.sleep(120)"]
    dog = Watchdog(ServerProcess(experiment_path), "--stale-after", "1", "--start-within", "3",
                   "--max-restarts", "1", command=silent).start()
    try:
        assert dog.proc.wait(60) == 1
    finally:
        dog.stop()
    out = dog.output()
    hung = re.findall(r"not written since the start for ([0-9.]+) s \(must be within 3 s\)", out)
    assert len(hung) == 2 and all(float(s) >= 3 for s in hung), out   # not after --stale-after's 1 s
    assert "needed 2 restarts within 30 s (at most 1): giving up" in out


def test_second_watchdog_on_same_pid_file_is_refused(kept):
    second = Watchdog(kept.server).start()
    assert second.proc.wait(20) == 2
    assert f"another watchdog (pid {kept.proc.pid}) already keeps {kept.pidfile}" in second.output()
    assert kept.proc.poll() is None


def test_stale_pid_file_from_dead_process_is_taken_over(experiment_path):
    server = ServerProcess(experiment_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pidfile.write(server.pidfile, dead.pid)
    dog = Watchdog(server, "--stale-after", "5").start()
    try:
        wait_until(lambda: dog.server_pid(), 20, what="the server's pid in the file")
        assert f"names pid {dead.pid}, which is dead: taking it over" in dog.output()
    finally:
        assert dog.stop() == 0


def test_sigterm_leaves_no_process_and_no_pid_file(kept):
    server_pid = kept.server_pid()
    group = [p.pid for p in psutil.Process(kept.proc.pid).children(recursive=True)]
    assert server_pid in group
    assert kept.stop() == 0
    assert not kept.pidfile.exists()
    assert not any(psutil.pid_exists(pid) for pid in group)
    assert "stopping on SIGTERM" in kept.output()


def test_command_that_cannot_start_is_refused_with_its_name(tmp_path):
    result = subprocess.run([sys.executable, "-m", "watchdog", "--pidfile", str(tmp_path / "p.pid"), "--",
                             str(tmp_path / "no-such-server")], cwd=ROOT, env=env_for_children(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"cannot start '{tmp_path / 'no-such-server'}': No such file or directory" in result.stderr


def test_unusable_pid_file_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    result = subprocess.run([sys.executable, "-m", "watchdog", "--pidfile", str(tmp_path / "file" / "p.pid"), "--",
                             "true"], cwd=ROOT, env=env_for_children(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "cannot create the lock file" in result.stderr


# --- with a standby (--standby) -----------------------------------------------------------------------------------

def standbys_ready(dog):
    """The pids of the standbys the watchdog said are ready, in order."""
    return [int(line.split("standby pid ")[1].split()[0]) for line in dog.output().splitlines()
            if line.endswith(" ready") and "standby pid " in line]


def listening_ports(pid):
    return {c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN}


@pytest.fixture
def fixed_ports_path(tmp_path, request):
    """An experiment whose router and event stream are on fixed ports, as a deployed one's are."""
    return write_experiment(tmp_path, "standby-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name[-24:]).strip("-"),
                            router=f"tcp://127.0.0.1:{free_port()}", events=f"tcp://127.0.0.1:{free_port()}")


@pytest.fixture
def with_standby(fixed_ports_path):
    """A watchdog keeping the experiment's server with a standby, once the standby is ready."""
    server = ServerProcess(fixed_ports_path)
    dog = Watchdog(server, "--stale-after", "5", "--grace", "2", "--standby")
    listener = discovery.BeaconListener(server.beacon_port, experiment=server.name)
    try:
        dog.start()
        server.beacon = wait_until(lambda: listener.wait(0.2), 20, what="the first beacon")
    finally:
        listener.close()
    wait_until(lambda: standbys_ready(dog), 20, what="the standby to be ready")
    yield dog
    assert dog.stop() == 0
    assert not dog.pidfile.exists()


def test_a_killed_server_is_replaced_by_its_standby_and_a_new_standby_is_prepared(with_standby):
    dog, server = with_standby, with_standby.server
    first = dog.server_pid()
    standby = standbys_ready(dog)[0]
    assert standby != first and psutil.Process(standby).ppid() == dog.proc.pid
    assert listening_ports(standby) == set()   # waiting, it holds none of the bus's ports
    router_port = int(server.router.rsplit(":", 1)[1])
    assert router_port in listening_ports(first)
    client = Client("returner", experiment=str(server.path))
    try:
        client.connect(10)
        old_instance = client.instance
        os.kill(first, signal.SIGKILL)
        server.beacon = next_beacon(server, server.beacon.instance)
        assert server.beacon.pid == standby and dog.server_pid() == standby   # the pid file names the one serving
        # the watchdog says so once it has told the standby to go: its line may come after the first beacon
        wait_until(lambda: f"standby pid {standby} takes over" in dog.output(), 10, what="the takeover's log line")
        assert router_port in listening_ports(standby)
        pump([client], lambda: client.registered and client.instance == server.beacon.instance, 15)
        assert client.instance != old_instance and client.router == server.router
        assert client.request(None, "_status")["pid"] == standby
        successor = wait_until(lambda: [p for p in standbys_ready(dog) if p != standby], 20,
                               what="a new standby")[0]
        assert successor not in (first, standby) and psutil.Process(successor).ppid() == dog.proc.pid
        assert listening_ports(successor) == set()
    finally:
        client.close()
    assert "restarting in 0.0 s (restart 1 within" in dog.output()


def test_the_standby_serves_the_experiment_as_its_file_is_at_its_turn(with_standby):
    dog, server = with_standby, with_standby.server
    server.description["server"]["heartbeat"] = 0.7   # changed after the standby loaded it
    server.path.write_text(json.dumps(server.description))
    os.kill(dog.server_pid(), signal.SIGKILL)
    server.beacon = next_beacon(server, server.beacon.instance)
    raw = RawClient(server.router)
    try:
        raw.hello("looker")
        assert raw.request({"cmd": "_status"})["result"]["heartbeat"] == 0.7
    finally:
        raw.close()
    assert "changed since the standby loaded it: loading it again" in dog.output()


def test_a_killed_standby_is_replaced_and_counts_as_no_restart(with_standby):
    dog = with_standby
    serving, standby = dog.server_pid(), standbys_ready(dog)[0]
    os.kill(standby, signal.SIGKILL)
    successor = wait_until(lambda: [p for p in standbys_ready(dog) if p != standby], 20, what="a new standby")[0]
    assert f"standby pid {standby} killed by SIGKILL before its turn" in dog.output()
    assert dog.server_pid() == serving and "restarting in" not in dog.output()
    assert not psutil.pid_exists(standby) and psutil.Process(successor).ppid() == dog.proc.pid


def test_the_standby_is_stopped_with_its_watchdog(with_standby):
    dog = with_standby
    serving, standby = dog.server_pid(), standbys_ready(dog)[0]
    assert dog.stop() == 0
    assert not psutil.pid_exists(standby) and not psutil.pid_exists(serving)
    assert f"stopping standby pid {standby}" in dog.output()


def test_a_standby_whose_watchdog_is_killed_ends_by_itself_and_never_serves(fixed_ports_path):
    dog = Watchdog(ServerProcess(fixed_ports_path), "--standby").start()
    try:
        standby = wait_until(lambda: standbys_ready(dog), 20, what="the standby to be ready")[0]
        serving = dog.server_pid()
    finally:
        os.kill(dog.proc.pid, signal.SIGKILL)   # no chance to stop anything
        dog.proc.wait()
    server = psutil.Process(serving)
    try:
        wait_until(lambda: not psutil.pid_exists(standby), 10, what="the orphaned standby to end")
        assert server.is_running() and pidfile.read(dog.pidfile) == serving   # the server goes on alone
    finally:
        os.killpg(serving, signal.SIGTERM)
        server.wait(10)


def test_the_crash_loop_limit_still_ends_a_server_that_keeps_failing_with_a_standby(fixed_ports_path):
    server = ServerProcess(fixed_ports_path)
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", int(server.description["server"]["router"].rsplit(":", 1)[1])))
    taken.listen()   # every server, started or promoted, fails to bind its router
    dog = Watchdog(server, "--standby").start()
    try:
        assert dog.proc.wait(60) == 1
    finally:
        dog.stop()
        taken.close()
    out = dog.output()
    assert "takes over" in out and "cannot bind the server's sockets" in out
    assert "needed 6 restarts within 30 s (at most 5): giving up" in out


def test_a_server_told_it_is_a_standby_by_a_garbage_descriptor_says_so_and_serves_nothing(experiment_path):
    for value, says in (("seven", "ORBIT_STANDBY_FD='seven' is no file descriptor"),
                        ("1000", "ORBIT_STANDBY_FD=1000 names no socket of a watchdog")):
        result = subprocess.run([sys.executable, "-m", "runcontrol.bus.server", "--experiment", str(experiment_path)],
                                cwd=ROOT, env={**env_for_children(), "ORBIT_STANDBY_FD": value}, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 2 and says in result.stderr
