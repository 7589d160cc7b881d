"""The pid-file watchdog keeping a real server alive, and the system recovering by itself."""

import os
import signal
import subprocess
import sys

import psutil
import pytest

from runcontrol import pidfile
from runcontrol import discovery
from tests.helpers import ROOT, ServerProcess, Watchdog, env_for_children, pump, registered_names, wait_until


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
