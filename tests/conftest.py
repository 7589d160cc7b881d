import collections
import os
import signal
import threading

import psutil
import pytest

from runcontrol.client.client import Client
from tests.helpers import (RUN_TAG, ServerProcess, System, registered_names, start_program, stop_process,
                           tagged_processes, wait_until, write_experiment)


def interrupted(*_):
    """SIGTERM (a `timeout`, a CI stop) ends the run like Ctrl-C: fixtures tear down and stop their processes."""
    raise KeyboardInterrupt("SIGTERM")


signal.signal(signal.SIGTERM, interrupted)


def pytest_unconfigure(config):
    """In the run's first process: whatever the run started and an interruption left (workers killed before their
    fixtures ran) is stopped here, found by the run's tag."""
    if hasattr(config, "workerinput"):
        return
    for proc in tagged_processes(RUN_TAG):
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (`CI` set) a test that can run here must run: a skip is a failure, with its reason."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where it must run: {reason}"


def pytest_terminal_summary(terminalreporter):
    """One line: how many tests were skipped, and why."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = collections.Counter(
        (r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)).removeprefix("Skipped: ")
        for r in skipped)
    terminalreporter.write_line("skipped: " + ("none" if not skipped else f"{len(skipped)}: " + "; ".join(
        f"{reason} ({count})" for reason, count in reasons.most_common())))


def reap_or_fail(procs, what):
    """Give `procs` a moment to exit; kill any still alive and fail naming them."""
    _, alive = psutil.wait_procs(procs, timeout=5)
    if alive:
        names = []
        for proc in alive:
            try:
                names.append((proc.pid, proc.name()))
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        pytest.fail(f"processes left running after {what}: {names}")


def ours():
    """What this test session started that still lives: our descendants, and tagged processes wherever they went."""
    found = {p.pid: p for p in psutil.Process().children(recursive=True)}
    found.update((p.pid, p) for p in tagged_processes())
    return found


@pytest.fixture(scope="session", autouse=True)
def no_orphans_at_end():
    yield
    reap_or_fail(list(ours().values()), "the test session")


@pytest.fixture(autouse=True)
def no_orphans():
    """Every process a test starts must be gone when it ends, also one handed to init (module fixtures' at the end)."""
    before = set(ours())
    yield
    reap_or_fail([p for pid, p in ours().items() if pid not in before and not started_by(p, before)], "this test")


def started_by(proc, pids):
    """Whether `proc` descends from one of `pids`: a process of a module fixture's (a program it restarted, a
    browser's renderer) is that fixture's to stop, and the session's end checks it."""
    try:
        return any(parent.pid in pids for parent in proc.parents())
    except psutil.Error:
        return False


@pytest.fixture
def experiment_path(tmp_path, request):
    name = "t-" + request.node.name.replace("[", "-").replace("]", "")[:40].strip("-_")
    return write_experiment(tmp_path, name.replace("_", "-"))


@pytest.fixture
def server(experiment_path):
    proc = ServerProcess(experiment_path).start()
    yield proc
    code = proc.stop()
    assert code in (0, -signal.SIGKILL), f"the server exited with status {code}: {proc.log.read_text()[-2000:]}"


@pytest.fixture
def make_client(server):
    """Clients of the test's server, closed at the end; `threaded=True` serves in a thread."""
    made = []

    def make(name, threaded=False, connect=True, **kwargs):
        kwargs.setdefault("experiment", str(server.path))
        client = Client(name, **kwargs)
        made.append([client, None])
        if connect:
            client.connect(10)
        if threaded:
            made[-1][1] = threading.Thread(target=client.run_forever, args=(0.05,), daemon=True)
            made[-1][1].start()
        return client

    yield make
    for client, thread in made:
        if thread is not None:
            client.stop()
            thread.join(5)
        client.close()


@pytest.fixture
def echo_program(server, tmp_path):
    """Start tests/programs/echo_client.py under a name and wait until it is registered."""
    started = []

    def start(name):
        proc = start_program("echo_client.py", name, "--experiment", server.path, log=tmp_path / f"{name}.log")
        started.append(proc)
        wait_until(lambda: name in registered_names(server.router), 15, interval_s=0.1,
                   what=f"{name} to register")
        return proc

    yield start
    for proc in started:
        stop_process(proc)


@pytest.fixture
def echo(echo_program):
    return echo_program("echo")


@pytest.fixture
def system(tmp_path):
    made = []

    def make(programs, alarms=None, notify=None, catalog=None, **server):
        server.setdefault("timeout", 5.0)
        path = write_experiment(tmp_path, "ctl", programs=programs, alarms=alarms, notify=notify, catalog=catalog,
                                **server)
        made.append(System(path))
        return made[-1]
    yield make
    for one in made:
        one.close()
