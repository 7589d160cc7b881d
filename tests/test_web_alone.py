"""The web program without damicm: read-only without operators, on loopback by default, refused off loopback
unless --insecure, the operators' file and their sessions, HTTPS with a Secure session cookie, and what it answers
when the bus does not."""

import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runcontrol import process
from runcontrol.errors import ConfigError
from tests import netns
from tests.helpers import (ROOT, ServerProcess, WebSite, env_for_children, free_port, registered_names,
                           start_program, stop_process, wait_until, write_experiment)
from web.__main__ import arguments, settings
from web.auth import Sessions


def web_command(experiment_path, listen, *more):
    return [sys.executable, "-m", "web", "--experiment", str(experiment_path), "--listen", listen, *more]


def test_without_operators_the_page_is_read_only(server, experiment_path):
    listen = f"127.0.0.1:{free_port()}"
    with open(experiment_path.parent / "web.log", "ab") as log:
        proc = subprocess.Popen(web_command(experiment_path, listen), cwd=ROOT, env=env_for_children(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        site = WebSite(f"http://{listen}")
        wait_until(lambda: site.get("/api/status")[0] == 200, 30, 0.2, what="the web program's first snapshot")
        status, snap, _ = site.get("/api/status")
        assert snap["run"] is None and "run" in snap["run_error"]   # no run controller: said, not a failure
        assert site.get("/api/whoami")[1] == {"user": None, "can_act": False}
        for path in ("/api/run/prepare_run", "/api/login", "/api/programs/x/restart", "/api/alarms/x/ack"):
            status, answer, _ = site.post(path, {"name": "anna", "password": "whatever1"})
            assert (status, answer["code"]) == (403, "read_only"), (path, answer)
        status, page, headers = site.get("/")
        assert status == 200 and "<title>Orbit</title>" in page and "uPlot.iife.min.js" in page
        assert site.get("/static/vendor/uplot/uPlot.iife.min.js")[0] == 200   # served here, fetched from nowhere
        assert site.get("/metrics")[0] == 200
        stream = urllib.request.urlopen(site.url + "/api/stream", timeout=30)
        assert stream.readline().startswith(b"event: status")   # the page's live feed
        code, killed = process.stop_group(proc, 30)
        assert (code, killed) == (0, False)   # open pages do not hold the program up when it is stopped
        stream.close()
    finally:
        stop_process(proc)


def test_an_unknown_path_answers_the_json_404_static_files_too(server, experiment_path):
    listen = f"127.0.0.1:{free_port()}"
    with open(experiment_path.parent / "web.log", "ab") as log:
        proc = subprocess.Popen(web_command(experiment_path, listen), cwd=ROOT, env=env_for_children(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        site = WebSite(f"http://{listen}")
        wait_until(lambda: site.get("/api/whoami")[0] == 200, 30, 0.2, what="the web program")
        # %2E%2E/app.py: web/app.py, a file, but not one of the page's
        for path in ("/static/nothing.js", "/static/vendor/", "/static/vendor/uplot/nothing.css",
                     "/static/%2E%2E/app.py", "/nothing"):
            status, answer, headers = site.get(path)
            assert (status, headers["Content-Type"]) == (404, "application/json; charset=utf-8"), (path, answer)
            assert answer["code"] == "not_found" and answer["error"], path
        status, _, headers = site.get("/static/app.js")
        assert status == 200 and "javascript" in headers["Content-Type"]
    finally:
        stop_process(proc)


def test_a_bind_off_loopback_is_refused_without_operators(experiment_path):
    refused = subprocess.run(web_command(experiment_path, "0.0.0.0:18080"), cwd=ROOT, env=env_for_children(),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "off loopback the page needs the operators' password file" in refused.stderr and "--insecure" in \
        refused.stderr
    bad = subprocess.run(web_command(experiment_path, "localhost"), cwd=ROOT, env=env_for_children(),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "give HOST:PORT" in bad.stderr


def test_the_page_listens_on_loopback_by_default_and_off_it_only_with_operators_or_insecure(experiment_path):
    host, port, _ = settings(arguments(["--experiment", str(experiment_path)]))
    assert (host, port) == ("127.0.0.1", 8080)   # the check alone: nothing is bound
    with pytest.raises(ConfigError, match="off loopback the page needs the operators' password file"):
        settings(arguments(["--experiment", str(experiment_path), "--listen", "10.77.0.1:8080"]))
    assert settings(arguments(["--experiment", str(experiment_path), "--listen", "10.77.0.1:8080",
                               "--insecure"]))[:2] == ("10.77.0.1", 8080)


NO_NAMESPACE = netns.unavailable()
ASK = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())"


@pytest.mark.skipif(NO_NAMESPACE is not None, reason=NO_NAMESPACE or "")
def test_insecure_serves_off_loopback_read_only_and_says_so(experiment_path, tmp_path):
    """In a network namespace of its own: off loopback, yet reachable from nowhere else."""
    net = netns.Network(["web"])
    listen = f"{net.address['web']}:{free_port()}"
    log = tmp_path / "web.log"
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(net.run("web", web_command(experiment_path, listen, "--insecure")), cwd=ROOT,
                                    env=env_for_children(), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            def whoami():
                assert proc.poll() is None, log.read_text()
                got = subprocess.run(net.run("web", [sys.executable, "-c", ASK, f"http://{listen}/api/whoami"]),
                                     capture_output=True, text=True, timeout=60)
                return got.returncode == 0 and json.loads(got.stdout)
            assert wait_until(whoami, 30, 0.2, what="the page off loopback") == {"user": None, "can_act": False}
            assert "listening off loopback without operators (--insecure)" in log.read_text()
        finally:
            stop_process(proc)
    finally:
        net.close()


def test_a_session_lasts_12_hours_and_failed_logins_count_for_a_minute():
    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0])   # the clock, the one seam
    token = sessions.open("anna")
    now[0] += 12 * 3600 - 1
    assert sessions.who(token) == "anna"
    now[0] += 2
    assert sessions.who(token) is None
    for _ in range(10):
        assert sessions.may_try("127.0.0.2")
        sessions.failed("127.0.0.2")
    assert not sessions.may_try("127.0.0.2") and sessions.may_try("127.0.0.1")
    now[0] += 60
    assert sessions.may_try("127.0.0.2")


def metric_samples(site):
    status, text, _ = site.get("/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape_while_the_server_is_stopped(site, server):
    """/metrics, then /api/status, while the server is stopped (SIGSTOP): (the samples, the snapshot seen)."""
    server.signal(signal.SIGSTOP)
    try:
        return metric_samples(site), site.get("/api/status")[1]
    finally:
        server.signal(signal.SIGCONT)


def test_when_the_bus_does_not_answer_metrics_keep_the_last_snapshot_and_requests_get_503_or_504(tmp_path):
    path = write_experiment(tmp_path, "silent", timeout=30.0)   # a stopped client stays registered past 5 s
    server = ServerProcess(path).start()
    listen = f"127.0.0.1:{free_port()}"
    with open(tmp_path / "web.log", "ab") as log:
        web = subprocess.Popen(web_command(path, listen), cwd=ROOT, env=env_for_children(), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    run = None
    try:
        site = WebSite(f"http://{listen}")

        def with_the_server():
            status, snap, _ = site.get("/api/status")
            return status == 200 and snap["server"] is not None
        for _ in range(3):   # the refresh under way when the server stopped gives up after 5 s: then again
            wait_until(with_the_server, 30, 0.2, what="a snapshot with the server's figures")
            samples, snap = scrape_while_the_server_is_stopped(site, server)
            if snap["server"] is not None:   # the snapshot from before the stop still stood after the scrape
                break
        else:
            pytest.fail("no scrape answered before the web program gave the stopped server up")
        assert samples[("orbit_server_uptime_seconds", ())] == snap["server"]["uptime"]
        assert samples[("orbit_server_clients", ())] == snap["server"]["clients"] == 1   # the web program

        status, answer, _ = site.get("/api/runs")   # no run controller registered
        assert (status, answer["code"]) == (503, "no_such_client"), answer
        run = start_program("echo_client.py", "run", "--experiment", path, log=tmp_path / "run.log")
        wait_until(lambda: "run" in registered_names(server.router), 30, 0.1, what="a client named run")
        process.signal_group(run.pid, signal.SIGSTOP)   # registered, and answers nothing
        status, answer, _ = site.get("/api/runs")
        assert (status, answer["error"]) == (504, "run did not answer 'runs' within 5 s"), answer
        process.signal_group(run.pid, signal.SIGCONT)
        server.stop()
        status, answer, _ = wait_until(lambda: (got := site.get("/api/runs"))[0] != 504 and got, 30, 0.2)
        assert status == 503 and "not connected to the server" in answer["error"], answer
    finally:
        if run is not None:
            stop_process(run)
        stop_process(web)
        server.kill()   # stopped above, unless the test failed before


def users(experiment_path, *args, password=""):
    return subprocess.run([sys.executable, "-m", "web.users", "--experiment", str(experiment_path), *args],
                          input=password + "\n", cwd=ROOT, env=env_for_children(), capture_output=True, text=True,
                          timeout=60)


def test_the_operators_file_is_made_by_a_command_and_holds_no_password(experiment_path):
    short = users(experiment_path, "add", "anna", password="short")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    bad = users(experiment_path, "add", "an na", password="long enough")
    assert bad.returncode == 2 and "operator name" in bad.stderr
    assert users(experiment_path, "add", "anna", password="long enough").returncode == 0
    assert users(experiment_path, "add", "bob", password="also long enough").returncode == 0
    path = experiment_path.parent / "state" / "web-users.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    held = json.loads(path.read_text())["users"]
    assert set(held) == {"anna", "bob"} and "long enough" not in path.read_text()
    assert held["anna"]["hash"].startswith("scrypt$")
    assert users(experiment_path, "list").stdout.split() == ["anna", "bob"]
    assert users(experiment_path, "remove", "bob").returncode == 0
    gone = users(experiment_path, "remove", "bob")
    assert gone.returncode == 2 and "no operator 'bob'" in gone.stderr


def test_https_with_a_certificate_and_a_secure_session_cookie(server, experiment_path, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("making a test certificate needs the openssl command, which is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                           "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], capture_output=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert users(experiment_path, "add", "anna", password="long enough").returncode == 0
    half = subprocess.run(web_command(experiment_path, "127.0.0.1:18081", "--cert", str(cert)), cwd=ROOT,
                          env=env_for_children(), capture_output=True, text=True, timeout=60)
    assert half.returncode == 2 and "--cert and --key go together" in half.stderr
    listen = f"127.0.0.1:{free_port()}"
    with open(tmp_path / "web.log", "ab") as log:
        proc = subprocess.Popen(web_command(experiment_path, listen, "--cert", str(cert), "--key", str(key)), cwd=ROOT,
                                env=env_for_children(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        site = WebSite(f"https://{listen}", context)
        wait_until(lambda: site.get("/api/whoami")[0] == 200, 30, 0.2, what="the page over HTTPS")
        status, answer, headers = site.post("/api/login", {"name": "anna", "password": "long enough"})
        assert status == 200 and "Secure" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
        assert "SameSite=Strict" in headers["Set-Cookie"]
    finally:
        stop_process(proc)

