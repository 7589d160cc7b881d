"""The web program without damicm: read-only without operators, refused off loopback, the operators' file,
HTTPS with a Secure session cookie."""

import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import urllib.request

import pytest

from runcontrol import process
from tests.helpers import ROOT, WebSite, env_for_children, free_port, stop_process, wait_until


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

