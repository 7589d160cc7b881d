import os
import signal
import threading

import psutil
import pytest

from clients.client import Client
from tests.helpers import ServerProcess, write_experiment


@pytest.fixture(autouse=True)
def no_orphans():
    """Every process a test starts must be gone when it ends; leftovers are killed and fail it."""
    yield
    me = psutil.Process()
    gone, alive = psutil.wait_procs(me.children(recursive=True), timeout=5)
    if alive:
        for proc in alive:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        pytest.fail(f"processes left running: {[(p.pid, p.name()) for p in alive]}")


@pytest.fixture
def experiment_path(tmp_path, request):
    name = "t-" + request.node.name.replace("[", "-").replace("]", "")[:40].strip("-_")
    return write_experiment(tmp_path, name.replace("_", "-"))


@pytest.fixture
def server(experiment_path):
    proc = ServerProcess(experiment_path).start()
    yield proc
    proc.stop()


@pytest.fixture
def make_client(server):
    """Clients of the test's server, closed at the end; `threaded=True` serves in a thread."""
    made = []

    def make(name, threaded=False, connect=True, **kwargs):
        kwargs.setdefault("experiment", str(server.path))
        client = Client(name, **kwargs)
        if connect:
            client.connect(10)
        thread = None
        if threaded:
            thread = threading.Thread(target=client.run_forever, args=(0.05,), daemon=True)
            thread.start()
        made.append((client, thread))
        return client

    yield make
    for client, thread in made:
        if thread is not None:
            client.stop()
            thread.join(5)
        client.close()
