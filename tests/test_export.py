"""Exporting a host: a real supervisord started from the folder run.py --export writes, driven over XML-RPC."""

import json
import subprocess
import sys
import xmlrpc.client

import psutil

import experiments
from runcontrol import process
from runcontrol.supervision.backends import supervisord, supervisordrpc
from tests.helpers import PROGRAMS, ROOT, env_for_children, free_port, wait_until


def experiment_with_a_host(folder, port, client="board"):
    (folder / "keys").mkdir()
    (folder / "keys" / "daq2.pass").write_text("s3cret\n")
    path = folder / "two.json"
    path.write_text(json.dumps({
        "name": "two", "paths": {"logs": "log", "data": "data", "state": "state"},
        "hosts": {"daq2": {"supervisord": f"http://127.0.0.1:{port}/RPC2", "username": "orbit",
                           "password_file": "keys/daq2.pass"}},
        "programs": {"here": {"cmd": ["python", str(PROGRAMS / "crash_after.py"), "600"]},
                     "there": {"cmd": ["python", str(PROGRAMS / "crash_after.py"), "600"], "host": "daq2",
                               "env": {"DETECTOR": "ccd 3"}, "stop_signal": "INT", "stop_timeout": 3,
                               **({"client": client} if client else {})}}}))
    return path


def start_supervisord(folder, client="board"):
    """supervisord on a loopback port of the suite, in the foreground; another port when that one is taken."""
    for _ in range(5):
        port = free_port()
        (folder / str(port)).mkdir()
        path = experiment_with_a_host(folder / str(port), port, client)
        export = folder / str(port) / "daq2"
        made = subprocess.run([sys.executable, "run.py", str(path), "--export", "daq2", str(export)], cwd=ROOT,
                              env=env_for_children(), capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c",
                                 str(export / "supervisord.conf")], cwd=export, env=env_for_children(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        rpc = xmlrpc.client.ServerProxy(f"http://orbit:s3cret@127.0.0.1:{port}/RPC2")

        def answers():
            try:
                return rpc.supervisor.getState()["statename"] == "RUNNING"
            except (OSError, xmlrpc.client.Error):
                return proc.poll() is not None  # it gave up (the port was taken): try another
        wait_until(answers, 20, 0.1, what="supervisord to answer")
        if proc.poll() is None:
            return proc, rpc, export, port
    raise AssertionError("no free port for supervisord after 5 tries")


def test_the_exported_folder_runs_that_hosts_programs_under_its_supervisord_and_only_when_asked(tmp_path):
    proc, rpc, export, port = start_supervisord(tmp_path)
    try:
        assert (export / "supervisord.conf").stat().st_mode & 0o077 == 0  # it holds the password
        assert "supervisord -c supervisord.conf" in (export / "README.md").read_text()
        checked = subprocess.run([sys.executable, "run.py", str(export.parent / "two.json"), "--check"], cwd=ROOT,
                                 env=env_for_children(), capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr
        assert "host daq2 (supervisord http://127.0.0.1:" in checked.stdout
        assert "): there; supervisord answers" in checked.stdout and "warning" not in checked.stdout
        wrong = tmp_path / "wrong.pass"
        wrong.write_text("guess")
        impostor = experiments.HostSpec("daq2", f"http://127.0.0.1:{port}/RPC2", "orbit", wrong)
        assert supervisordrpc.check(impostor) == "refused: 401 Unauthorized (username or password?)"
        listed = {p["name"]: p["statename"] for p in rpc.supervisor.getAllProcessInfo()}
        assert listed.pop("orbit-agent") in ("STARTING", "RUNNING")  # the host agent, its event listener
        assert listed == {"there": "STOPPED"}  # only this host's programs, and none started by itself
        rpc.supervisor.startProcess("there")
        info = rpc.supervisor.getProcessInfo("there")
        assert info["statename"] == "RUNNING"
        log = export / "log" / "there.log"
        wait_until(lambda: log.exists() and "exiting in 600 s" in log.read_text(), 10, 0.1)  # past its exec
        env = psutil.Process(info["pid"]).environ()
        assert (env["ORBIT_NAME"], env["DETECTOR"]) == ("board", "ccd 3")
        assert env["ORBIT_EXPERIMENT"] == str(export / "experiment.json")
        pid = info["pid"]
        psutil.Process(pid).kill()
        wait_until(lambda: rpc.supervisor.getProcessInfo("there")["statename"] == "EXITED", 10, 0.1)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert rpc.supervisor.getProcessInfo("there")["statename"] == "EXITED"  # not restarted: Orbit decides
        rpc.supervisor.startProcess("there")
        rpc.supervisor.stopProcess("there")
        assert rpc.supervisor.getProcessInfo("there")["statename"] == "STOPPED"
    finally:
        process.stop_group(proc, 15)


def test_export_of_an_unknown_host_says_which_there_are(tmp_path):
    path = experiment_with_a_host(tmp_path, 9001)
    made = subprocess.run([sys.executable, "run.py", str(path), "--export", "daq9", str(tmp_path / "out")],
                          cwd=ROOT, env=env_for_children(), capture_output=True, text=True, timeout=60)
    assert made.returncode == 2 and "experiment two has no host 'daq9' (hosts: daq2)" in made.stderr
    (tmp_path / "taken").write_text("a file where the folder should go")
    made = subprocess.run([sys.executable, "run.py", str(path), "--export", "daq2", str(tmp_path / "taken" / "out")],
                          cwd=ROOT, env=env_for_children(), capture_output=True, text=True, timeout=60)
    assert made.returncode == 2 and "Traceback" not in made.stderr
    assert f"cannot write what host daq2 needs into {tmp_path / 'taken' / 'out'}: Not a directory" in made.stderr


def test_check_warns_when_a_hosts_supervisord_does_not_answer(tmp_path):
    path = experiment_with_a_host(tmp_path, 1)  # nothing listens on port 1
    checked = subprocess.run([sys.executable, "run.py", str(path), "--check"], cwd=ROOT, env=env_for_children(),
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr  # a warning, not an error
    assert "host daq2 (supervisord http://127.0.0.1:1/RPC2): there" in checked.stdout
    assert "warning: host daq2's supervisord at http://127.0.0.1:1/RPC2: does not answer" in checked.stdout


def test_the_supervisor_runs_restarts_and_stops_a_program_of_another_host_through_its_supervisord(tmp_path):
    from runcontrol.states import ChildState as S
    from runcontrol.supervision.backends.local import LocalBackend
    from runcontrol.supervision.supervisor import Supervisor
    proc, rpc, export, port = start_supervisord(tmp_path, client=None)
    experiment = experiments.load(export.parent / "two.json")
    events = []
    backends = {"local": LocalBackend(), "daq2": supervisord.SupervisordBackend(experiment.hosts["daq2"])}
    sup = Supervisor(experiment, backends, emit=lambda kind, **fields: events.append((kind, fields)))

    def drive(predicate, timeout_s=20):
        return wait_until(lambda: sup.process(0.05) or predicate(), timeout_s, 0)
    try:
        sup.start_all()
        drive(lambda: sup.programs["there"].state is S.RUNNING and sup.programs["here"].state is S.RUNNING)
        first = drive(lambda: sup.programs["there"].pid)
        assert rpc.supervisor.getProcessInfo("there")["pid"] == first  # it runs there, under that supervisord
        psutil.Process(first).kill()
        drive(lambda: sup.programs["there"].restarts == 1 and sup.programs["there"].pid not in (None, first))
        exited = next(f for k, f in events if k == "program_exited" and f["program"] == "there")
        assert (exited["host"], exited["code"], exited["signal"]) == ("daq2", None, "a signal")  # it does not say which
        assert rpc.supervisor.getProcessInfo("there")["statename"] == "RUNNING"
        sup.stop_all()
        drive(sup.all_stopped)
        assert rpc.supervisor.getProcessInfo("there")["statename"] == "STOPPED"
    finally:
        sup.close()
        process.stop_group(proc, 15)


def test_a_host_that_cannot_be_reached_is_a_failed_start_with_the_reason(tmp_path):
    from runcontrol.states import ChildState as S
    from runcontrol.supervision.backends.local import LocalBackend
    from runcontrol.supervision.supervisor import Supervisor
    experiment = experiments.load(experiment_with_a_host(tmp_path, 1, client=None))  # nothing on port 1
    events = []
    backends = {"local": LocalBackend(), "daq2": supervisord.SupervisordBackend(experiment.hosts["daq2"])}
    sup = Supervisor(experiment, backends, emit=lambda kind, **fields: events.append((kind, fields)))
    try:
        sup.start("there")
        wait_until(lambda: sup.process(0.05) or sup.programs["there"].state is S.BACKOFF, 20, 0)
        exited = next(f for k, f in events if k == "program_exited" and f["program"] == "there")
        assert exited["error"].startswith("cannot start: daq2's supervisord cannot be reached")
    finally:
        sup.close()


def test_a_host_that_answers_nonsense_is_a_host_lost_and_its_orders_wait_for_it(tmp_path):
    """A stranger on the supervisord address: the worker says the host cannot be reached and goes on;
    once a real answer comes, the order that waited goes out."""
    import threading
    from xmlrpc.server import SimpleXMLRPCServer
    from runcontrol.supervision.backends.base import HostChanged
    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
    calls = []
    listing = ["nonsense"]
    server.register_function(lambda name, wait: calls.append(("start", name)) or True, "supervisor.startProcess")
    server.register_function(lambda name: {"pid": 4242, "now": 100, "start": 90, "statename": "RUNNING"},
                             "supervisor.getProcessInfo")
    server.register_function(lambda: listing[0], "supervisor.getAllProcessInfo")
    server.register_function(lambda: {"statename": "RUNNING"}, "supervisor.getState")
    server.register_function(lambda: [[[], [], []]], "supervisor.reloadConfig")
    server.register_function(lambda: 99, "supervisor.getPID")
    server.register_function(lambda name, sig: calls.append(("signal", name, sig)) or True,
                             "supervisor.signalProcess")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    experiment = experiments.load(experiment_with_a_host(tmp_path, server.server_address[1], client=None))
    backend = supervisord.SupervisordBackend(experiment.hosts["daq2"], poll_s=0.05)
    seen = []

    def changes():
        seen.extend(e for e in backend.events() if isinstance(e, HostChanged))
        return seen
    try:
        handle = backend.spawn(next(spec for spec in experiment.programs if spec.name == "there"), {})
        wait_until(lambda: ("start", "there") in calls and changes(), 10)
        assert seen[0].problem == "getAllProcessInfo answered str, not a list of processes"
        assert not backend.reachable and handle.pid == 4242
        backend.kill(handle)
        listing[0] = [{"name": "there", "statename": "RUNNING", "pid": 4242}]
        wait_until(lambda: ("signal", "there", "KILL") in calls, 20)  # the worker lives on, the order waited
        wait_until(lambda: len(changes()) == 2, 10)
        assert seen[1] == HostChanged("daq2", "") and backend.reachable
    finally:
        backend.close()
        server.shutdown()
        server.server_close()


def export(path, host, folder):
    return subprocess.run([sys.executable, "run.py", str(path), "--export", host, str(folder)], cwd=ROOT,
                          env=env_for_children(), capture_output=True, text=True, timeout=60)


def test_a_host_with_curve_needs_keys_only_for_its_clients_and_a_failed_export_leaves_nothing(tmp_path):
    path = experiment_with_a_host(tmp_path, 9001)
    description = json.loads(path.read_text())
    description["server"] = {"curve": {"server_key": "keys/server.key", "clients": "keys/clients"}}
    description["programs"]["ccd"] = {"cmd": ["python", str(PROGRAMS / "crash_after.py"), "600"], "host": "daq2",
                                      "cwd": "."}   # readout hardware: no client name, no key
    path.write_text(json.dumps(description))
    made = subprocess.run([sys.executable, "-m", "runcontrol.bus.keys", str(path)], cwd=ROOT, env=env_for_children(),
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    made = export(path, "daq2", tmp_path / "daq2")
    assert made.returncode == 0, made.stderr
    keys = sorted(p.name for p in (tmp_path / "daq2" / "keys").iterdir())
    assert keys == ["board.key", "board.key_secret", "host.daq2.key", "host.daq2.key_secret", "server.key"]
    copy = json.loads((tmp_path / "daq2" / "experiment.json").read_text())
    assert copy["programs"]["ccd"]["cwd"] == str(tmp_path)  # as supervisord runs it
    conf = (tmp_path / "daq2" / "supervisord.conf").read_text()

    (tmp_path / "keys" / "clients" / "board.key_secret").unlink()  # the client "board" of program "there"
    failed = export(path, "daq2", tmp_path / "again")
    assert failed.returncode == 2 and "board.key" in failed.stderr and "runcontrol.bus.keys" in failed.stderr
    assert not (tmp_path / "again").exists()
    failed = export(path, "daq2", tmp_path / "daq2")   # over the first: it stays as it was
    assert failed.returncode == 2
    assert (tmp_path / "daq2" / "supervisord.conf").read_text() == conf
    assert sorted(p.name for p in (tmp_path / "daq2" / "keys").iterdir()) == keys
    assert sorted(p.name for p in tmp_path.iterdir() if ".export-" in p.name) == []
