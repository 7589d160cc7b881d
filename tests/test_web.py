"""The web program against a live `run.py damicm --headless`: its JSON API, live stream and /metrics over plain HTTP,
bad input answered with a 4xx, actions only for a logged-in operator (a 12 h session; failed logins limited per
address); and the page itself in headless Chromium, notifications and maintenance windows included."""

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runcontrol.control import commands
from tests.helpers import (DAMICM_PROGRAMS, ROOT, System, WebSite, apt_install, damicm_copy, env_for_children,
                           free_port, helper, wait_until, write_experiment)
from tests.test_notify import Hook

pytestmark = pytest.mark.xdist_group(name="web")   # one damicm for the whole module, on one worker

PASSWORD = "correct horse battery"
ARTIFACTS = ROOT / "test-artifacts"
STANDING = {name: {"value": "cryo.values.temperature", "above": -1000, "severity": severity,
                   "actions": ["log", "publish"], "message": f"a standing {severity}, as the page shows it"}
            for name, severity in (("standing_warning", "warning"), ("standing_alarm", "alarm"))}   # always hold
TO_ACK = "standing_to_acknowledge"
LINKED = "standing_linked"   # its message's link is followed in the browser


@pytest.fixture(scope="module")
def pager():
    """A chat service's webhook (an HTTP receiver on loopback): the route `pager`, refusing when a test says so."""
    hook = Hook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def site_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("web")


@pytest.fixture(scope="module")
def site(site_folder, pager):
    path = damicm_copy(site_folder)
    description = json.loads(path.read_text())
    description["alarms"].update(STANDING, **{TO_ACK: {**STANDING["standing_warning"], "message": "acknowledge me"},
                                              LINKED: {**STANDING["standing_alarm"], "message": "follow my link"}})
    listen = description["programs"]["web"]["cmd"][-1]
    description["notify"]["routes"]["pager"] = [pager.url()]
    description["notify"].update(link=f"http://{listen}", retry={"first": 0.5, "max": 1, "alarm_after": 2})
    path.write_text(json.dumps(description))
    made = subprocess.run([sys.executable, "-m", "web.users", "--experiment", str(path), "add", "anna"],
                          input=PASSWORD + "\n", cwd=ROOT, env=env_for_children(), capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    proc = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT, env=env_for_children(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        s = WebSite(f"http://{listen}")
        wait_until(lambda: (p := s.programs()) and all(i["state"] == "RUNNING" and i["registered"] is not False
                                                       for i in p.values()), 90, 0.5, what="damicm up, seen by web")
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_status_runs_events_history_and_metrics_over_plain_http(site):
    status, snap, _ = site.get("/api/status")
    assert status == 200 and snap["server"]["experiment"] == "damicm" and snap["run"]["state"] == "STOP"
    assert {"lta1", "lta2", "web", "historian"} <= set(snap["run"]["programs"])
    status, text, headers = site.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    status, text, headers = site.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert headers["Content-Type"].startswith("application/openmetrics-text") and text.rstrip().endswith("# EOF")

    buckets = wait_until(lambda: site.get("/api/history?name=cryo.values.temperature&since=-600&points=50")[1]
                         .get("cryo.values.temperature"), 30, 0.5, what="history through the web program")
    assert all(len(b) == 4 and b[1] <= b[3] <= b[2] for b in buckets) and len(buckets) <= 50
    newest = wait_until(lambda: (few := site.get("/api/events?n=8")[1]) == site.get("/api/events?n=200")[1][:8]
                        and few, 20, 0.2, what="the same newest events twice")   # none came between the two
    assert len(newest) == 8 and [e["ts"] for e in newest] == sorted((e["ts"] for e in newest), reverse=True)
    assert site.get("/api/runs")[0] == 200 and site.get("/api/alarms?log=5")[1].keys() >= {"alarms", "log"}
    assert site.get("/api/whoami")[1] == {"user": None, "can_act": True}


LOGIN = {"name": "anna", "password": "wrong"}


@pytest.mark.parametrize("method, path, raw, extra, status, code", [
    ("POST", "/api/run/prepare_run", b"{}", {}, 401, "not_logged_in"),
    ("POST", "/api/programs/lta1/restart", b"{}", {"cookie": "forged-session-token"}, 401, "not_logged_in"),
    ("POST", "/api/login", json.dumps(LOGIN).encode(), {}, 401, "bad_login"),
    ("POST", "/api/login", b"{not json", {}, 400, "bad_json"),
    ("POST", "/api/login", b"[1, 2]", {}, 400, "bad_json"),
    ("POST", "/api/login", b"x" * 100_000, {}, 413, "request_entity_too_large"),
    ("POST", "/api/login", b"name=anna", {"headers": {"Content-Type": "text/plain"}}, 415, "not_json"),
    ("GET", "/api/runs?n=abc", None, {}, 400, "bad_request"),
    ("GET", "/api/runs?n=%C2%B2", None, {}, 400, "bad_request"),   # a digit to str.isdigit, not to int()
    ("GET", "/api/events?n=100000", None, {}, 400, "bad_request"),
    ("GET", "/api/history", None, {}, 400, "bad_request"),
    ("GET", "/api/history?name=cryo.values.temperature&since=nan", None, {}, 400, "bad_request"),
    ("GET", "/api/history?name=cryo.values.temperature&until=soon", None, {}, 400, "bad_request"),
    ("GET", "/api/nothing", None, {}, 404, "not_found"),
    ("GET", "/static/nothing.js", None, {}, 404, "not_found"),
])
def test_bad_input_gets_a_4xx_with_a_message(site, method, path, raw, extra, status, code):
    got, answer, headers = site.call(method, path, raw=raw, **extra)
    assert headers["Content-Type"].startswith("application/json"), answer
    assert (got, answer["code"]) == (status, code), answer
    assert answer["error"]


@pytest.mark.parametrize("path", [
    "/api/history?name=cryo.values.temperature&since=-3600&until=&points=500",   # the README's own example
    "/api/history?name=cryo.values.temperature&since=&until=&points=",
    "/api/runs?n=", "/api/events?n=", "/api/alarms?log=", "/api/run/runs?n=", "/api/run/config_log?n=&program=",
])
def test_an_empty_query_parameter_means_its_default(site, path):
    status, answer, _ = wait_until(lambda: (got := site.get(path))[0] != 503 and got, 30, 0.5,
                                   what="the web program sees the historian")
    assert status == 200, answer
    if "history" in path:
        assert list(answer) == ["cryo.values.temperature"]


def test_actions_need_an_operator_and_are_logged_with_who(site):
    cookie = site.login("anna", PASSWORD)
    assert site.get("/api/whoami", cookie=cookie)[1] == {"user": "anna", "can_act": True}
    status, answer, _ = site.post("/api/programs/nosuch/restart", cookie=cookie)
    assert status == 404 and "nosuch" in answer["error"]
    status, answer, _ = site.post("/api/run/explode", cookie=cookie)
    assert status == 404 and answer["code"] == "unknown_action"
    status, answer, _ = site.post("/api/alarms/nothing/ack", cookie=cookie)
    assert status == 404 and answer["code"] == "no_such_alarm"
    status, answer, _ = site.post("/api/run/end_run", cookie=cookie)
    assert status == 409 and "needs state RUN" in answer["error"]
    assert site.post("/api/run/prepare_run", cookie=cookie)[0] == 200
    status, began, _ = site.post("/api/run/begin_run", {"comment": "from a script"}, cookie=cookie)
    assert status == 200 and began["state"] == "RUN"
    assert site.post("/api/run/end_run", cookie=cookie)[0] == 200
    newest = site.get("/api/runs?n=1")[1][0]
    assert (newest["run"], newest["comment"], newest["result"]) == (began["run"], "from a script", "ended")
    actions = [e for e in site.get("/api/events?n=200")[1] if e.get("kind") == "operator_action"]
    assert {(e["by"], e["action"], e["ok"]) for e in actions} >= {("anna", "begin_run", True),
                                                                  ("anna", "restart", False)}
    assert site.get("/api/config")[1]["lta1"]["values"]["samples"] == 1
    status, answer, _ = site.post("/api/programs/bias/config", {"values": {"ramp_rate": 5}}, cookie=cookie)
    assert status == 200 and answer["changes"] == {"ramp_rate": [10, 5]}
    status, answer, _ = site.post("/api/programs/bias/config", {"values": {"volts": 500}}, cookie=cookie)
    assert status == 400 and answer["code"] == "bad_config" and "volts: 500 is greater than the maximum" in \
        answer["error"]
    assert site.post("/api/programs/bias/config", {"values": {"volts": 60}})[0] == 401   # not logged in
    assert site.post("/api/programs/bias/config", {"values": []}, cookie=cookie)[0] == 400
    assert any(e.get("kind") == "config_changed" and e.get("by") == "anna" for e in site.get("/api/events?n=200")[1])
    site.post("/api/logout", cookie=cookie)
    assert site.post("/api/run/prepare_run", cookie=cookie)[0] == 401   # the session is gone


def test_a_login_opens_a_12_hour_session_in_a_cookie_scripts_cannot_read(site):
    status, answer, headers = site.post("/api/login", {"name": "anna", "password": PASSWORD})
    assert status == 200 and answer == {"user": "anna"}
    cookie = headers["Set-Cookie"]
    assert "Max-Age=43200" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    assert "Secure" not in cookie, cookie   # plain HTTP on loopback


def login_from(site, address, password):
    """POST /api/login from `address` (any of 127/8 is loopback): (status, answer)."""
    host, port = site.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60, source_address=(address, 0))
    try:
        connection.request("POST", "/api/login", json.dumps({"name": "anna", "password": password}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_after_ten_failed_logins_in_a_minute_an_address_gets_429_and_only_that_one(site):
    assert [login_from(site, "127.0.0.2", "wrong")[0] for _ in range(10)] == [401] * 10
    status, answer = login_from(site, "127.0.0.2", PASSWORD)   # the right password too, for that minute
    assert (status, answer.get("code")) == (429, "throttled"), answer
    assert login_from(site, "127.0.0.1", PASSWORD) == (200, {"user": "anna"})


def operator_actions(site):
    return {(e["action"], e["target"], e["ok"]) for e in site.get("/api/events?n=200")[1]
            if e.get("kind") == "operator_action" and e.get("by") == "anna"}


def test_an_operator_aborts_a_run_restarts_a_program_and_acknowledges_an_alarm(site):
    cookie = site.login("anna", PASSWORD)
    status, prepared, _ = site.post("/api/run/prepare_run", cookie=cookie)
    assert status == 200 and prepared["state"] == "READY", prepared
    status, aborted, _ = site.post("/api/run/abort_run", cookie=cookie)
    assert status == 200 and aborted["state"] == "STOP", aborted
    newest = site.post("/api/run/prepare_run", cookie=cookie)[1]
    assert site.post("/api/run/abort_run", cookie=cookie)[0] == 200
    runs = site.get("/api/runs?n=2")[1]   # newest first
    assert [(r["run"], r["result"]) for r in runs] == [(newest["run"], "aborted"), (prepared["run"], "aborted")]

    before = site.programs()["lta1"]["pid"]
    status, answer, _ = site.post("/api/programs/lta1/restart", cookie=cookie)   # answered once the new one is up
    assert status == 200 and answer["lta1"]["state"] == "RUNNING" and answer["lta1"]["pid"] != before, answer
    assert not psutil.pid_exists(before)

    status, answer, _ = site.post(f"/api/alarms/{TO_ACK}/ack", cookie=cookie)
    assert status == 200 and answer["acked"][0]["acked"]["by"] == "anna", answer
    standing = {a["alarm"]: a for a in site.get("/api/alarms")[1]["alarms"]}
    assert standing[TO_ACK]["state"] == "active" and standing[TO_ACK]["acked"]["by"] == "anna"
    assert standing["standing_alarm"]["acked"] is None
    assert operator_actions(site) >= {("abort_run", "run", True), ("restart", "lta1", True), ("ack", TO_ACK, True)}


# How each command of the run controller's table is reached through the web API with an answer that changes nothing:
# (the query or the body, the status and the code expected). A command added to the table needs its line here.
REACH = {
    "status": ("", 200, None),
    "runs": ("?n=2", 200, None),
    "alarms": ("?log=3", 200, None),
    "config": ("?program=bias", 200, None),
    "config_log": ("?n=0", 400, "bad_field"),
    "run_config": ("?run=999999", 404, "no_such_run"),
    "config_diff": ("?a=999999&b=", 404, "no_such_run"),
    "start": ({"program": "nosuch"}, 404, "unknown_program"),
    "stop": ({"program": "nosuch"}, 404, "unknown_program"),
    "restart": ({"program": 7}, 400, "bad_field"),
    "reload": ({}, 200, None),
    "prepare_run": ({"timeout": -1}, 400, "bad_field"),
    "begin_run": ({"params": []}, 400, "bad_field"),
    "pause_run": ({"timeout": -1}, 400, "bad_field"),
    "resume_run": ({"timeout": 0}, 400, "bad_field"),
    "end_run": ({"timeout": 601}, 400, "bad_field"),
    "abort_run": ({"timeout": "soon"}, 400, "bad_field"),
    "exclude": ({"program": "nosuch"}, 404, "no_such_client"),
    "include": ({"program": "nosuch"}, 404, "no_such_client"),
    "ack": ({"alarm": "nothing"}, 404, "no_such_alarm"),
    "set_config": ({"program": "nosuch", "values": {"volts": 1}}, 404, "unknown_program"),
    "notifications": ("?n=2000", 400, "bad_field"),
    "notify_test": ({"route": 7}, 400, "bad_field"),
    "maintenance": ({"minutes": 0, "reason": "cryostat"}, 400, "bad_field"),
    "record": ("?number=999999", 404, "no_such_run"),
    "find": ("?limit=0", 400, "bad_field"),
    "flag": ({"number": 999999, "flag": "maybe"}, 400, "bad_field"),
}


def test_every_command_of_the_run_controller_is_reachable_reads_by_get_actions_by_an_operators_post(site):
    assert set(REACH) == set(commands.COMMANDS)
    cookie = site.login("anna", PASSWORD)
    answers = {}
    for name, (given, status, code) in REACH.items():
        if commands.COMMANDS[name].ACTS:
            assert site.post(f"/api/run/{name}", given)[0] == 401, name   # actions need an operator
            assert site.get(f"/api/run/{name}")[1]["code"] == "method_not_allowed"
            got, answers[name], _ = site.post(f"/api/run/{name}", given, cookie=cookie)
        else:
            assert site.post(f"/api/run/{name}", {}, cookie=cookie)[1]["code"] == "method_not_allowed"
            got, answers[name], _ = site.get(f"/api/run/{name}{given}")
        assert got == status and (code is None or answers[name]["code"] == code), (name, answers[name])
    assert answers["status"]["experiment"] == "damicm" and len(answers["runs"]) <= 2
    assert "volts" in answers["config"]["values"] and answers["reload"]["removed"] == []
    assert answers["prepare_run"]["error"] == "'timeout': -1 must be more than 0"
    assert answers["config_log"]["error"] == "'n': 0 must be at least 1"   # a query's number is a number
    acting = {name for name, module in commands.COMMANDS.items() if module.ACTS}
    assert {(action, ok) for action, _, ok in operator_actions(site)} >= {(n, n == "reload") for n in acting}
    assert site.get("/api/status")[1]["run"]["state"] == "STOP"


class Stream(threading.Thread):
    """The page's live feed (/api/stream) read in a thread of its own: every (kind, data) in order."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.response = urllib.request.urlopen(url + "/api/stream", timeout=60)
        self.frames, self.stopping = [], threading.Event()
        self.start()

    def run(self):
        kind = None
        while not self.stopping.is_set() and (line := self.response.readline()):
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                self.frames.append((kind, json.loads(line.removeprefix("data: "))))

    def of(self, kind):
        return [data for k, data in list(self.frames) if k == kind]

    def close(self):
        self.stopping.set()
        self.join(30)   # a status comes each second: the loop ends at the next
        self.response.close()


def test_the_live_stream_sends_a_status_each_second_and_every_event(site):
    cookie = site.login("anna", PASSWORD)
    stream = Stream(site.url)
    try:
        wait_until(lambda: len(stream.of("status")) >= 2, 30, 0.1, what="the stream's first statuses")
        assert site.post("/api/run/prepare_run", cookie=cookie)[0] == 200
        assert site.post("/api/run/abort_run", cookie=cookie)[0] == 200

        def operator(action):
            return next((e for e in stream.of("event") if e["kind"] == "operator_action" and e["action"] == action),
                        None)
        wait_until(lambda: operator("abort_run") and len(stream.of("status")) >= 4, 60, 0.1,
                   what="the abort and four statuses on the stream")
    finally:
        stream.close()
    taken = [status["taken"] for status in stream.of("status")]
    assert all(later - earlier >= 0.99 for earlier, later in zip(taken, taken[1:])), taken   # a new one each second
    assert {"server", "run", "rates"} <= set(stream.of("status")[-1])
    streamed = [(e["kind"], e["ts"]) for e in stream.of("event")]
    first, last = (streamed.index((e["kind"], e["ts"])) for e in (operator("prepare_run"), operator("abort_run")))
    logged = [(e["kind"], e["ts"]) for e in reversed(site.get("/api/events?n=200")[1])]   # oldest first
    # every event the server logged from the first action to the last, in its order (the run's among them)
    assert streamed[first:last + 1] == logged[logged.index(streamed[first]):logged.index(streamed[last]) + 1]
    assert {kind for kind, _ in streamed[first:last + 1]} >= {"operator_action", "run_state"}


def metric_samples(site):
    status, text, _ = site.get("/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metrics_and_their_snapshot(site, wanted):
    """/metrics and the snapshot it was made from (/api/status shows that one before and after the scrape), once
    `wanted(snapshot)` holds."""
    def same():
        before = site.get("/api/status")[1]
        samples = metric_samples(site)
        after = site.get("/api/status")[1]
        return before["taken"] == after["taken"] and wanted(after) and (samples, after)
    return wait_until(same, 30, 0.1, what="one snapshot read before and after a scrape")


PROGRAM_FIGURES = {"orbit_program_restarts_total": "restarts", "orbit_program_uptime_seconds": "uptime",
                   "orbit_program_cpu_percent": "cpu_percent", "orbit_program_rss_bytes": "rss",
                   "orbit_program_heartbeat_age_seconds": "heartbeat_age"}


def test_metrics_give_every_family_the_readme_lists_with_the_snapshots_values(site):
    cookie = site.login("anna", PASSWORD)
    run = site.post("/api/run/prepare_run", cookie=cookie)[1]["run"]
    assert site.post("/api/run/abort_run", cookie=cookie)[0] == 200
    assert site.post(f"/api/alarms/{TO_ACK}/ack", cookie=cookie)[0] == 200
    samples, snap = metrics_and_their_snapshot(site, lambda snap: (snap["last_run"], snap["run"]["state"]) == (
        run, "STOP") and any(a["alarm"] == TO_ACK and a["acked"] for a in snap["run"]["alarms"]))

    def value(family, **labels):
        return samples[(family, tuple(sorted(labels.items())))]
    programs = snap["run"]["programs"]
    assert set(programs) == DAMICM_PROGRAMS
    for name, info in programs.items():
        states = {dict(labels)["state"]: v for (family, labels), v in samples.items()
                  if family == "orbit_program_state" and dict(labels)["program"] == name}
        assert states[info["state"]] == 1 and sum(states.values()) == 1, (name, states)
        assert value("orbit_program_up", program=name, host=info["host"]) == (info["state"] == "RUNNING")
        for family, key in PROGRAM_FIGURES.items():
            if info[key] is not None:
                assert value(family, program=name) == info[key], (family, name)
    assert all(info[key] is not None for info in programs.values() for key in PROGRAM_FIGURES.values()
               if key != "heartbeat_age")
    assert value("orbit_program_heartbeat_age_seconds", program="lta1") >= 0   # a client's, the boards have none
    total = snap["stats"]["total"]
    for key in ("msgs_in", "msgs_out", "bytes_in", "bytes_out"):
        assert value(f"orbit_server_{key}_total") == total[key] > 0
        assert value(f"orbit_server_{key}_per_second") == total[f"{key}_per_s"]
    assert value("orbit_server_dropped_total") == snap["stats"]["dropped"]
    assert value("orbit_server_clients") == snap["server"]["clients"] >= 11   # ten programs' clients, the run's
    assert [value("orbit_run_state", state=state) for state in ("STOP", "READY", "RUN")] == [1, 0, 0]
    assert value("orbit_run_number") == run
    cryo = snap["retained"]["cryo.values"]["data"]
    assert value("orbit_value", name="cryo.values.temperature") == cryo["temperature"]
    assert value("orbit_value", name="cryo.values.set_point") == cryo["set_point"]
    assert ("orbit_value", (("name", "cryo.values.unit"),)) not in samples   # a text is no number
    assert (value("orbit_alarm_active", alarm="standing_alarm", severity="alarm"),
            value("orbit_alarm_acknowledged", alarm="standing_alarm", severity="alarm")) == (1, 0)
    assert (value("orbit_alarm_active", alarm=TO_ACK, severity="warning"),
            value("orbit_alarm_acknowledged", alarm=TO_ACK, severity="warning")) == (1, 1)


def test_the_run_number_stays_after_the_run_and_through_a_restart_of_the_web_program(site):
    cookie = site.login("anna", PASSWORD)
    assert site.post("/api/run/prepare_run", cookie=cookie)[0] == 200
    run = site.post("/api/run/begin_run", {"comment": "numbered"}, cookie=cookie)[1]["run"]
    assert site.post("/api/run/end_run", cookie=cookie)[0] == 200

    def stopped_with_the_number():   # one scrape: the snapshot before the run was in STOP too
        samples = metric_samples(site)
        return samples.get(("orbit_run_state", (("state", "STOP"),))) == 1 and \
            samples.get(("orbit_run_number", ())) == run
    wait_until(stopped_with_the_number, 20, 0.2, what=f"STOP and run number {run} in /metrics")
    assert site.get("/api/status")[1]["last_run"] == run
    before = site.programs()["web"]["pid"]
    os.kill(before, signal.SIGKILL)   # its successor has seen no run: it reads the run log
    # Reaped, not only a zombie: its other threads hold the listening socket a little longer, and reset a request.
    wait_until(lambda: not psutil.pid_exists(before), 30, 0.1, what="the killed web program reaped")
    wait_until(lambda: (p := site.programs()) and p["web"]["pid"] != before, 60, 0.5, what="a new web program")
    assert metric_samples(site).get(("orbit_run_number", ())) == run
    assert site.get("/api/status")[1]["last_run"] == run


# --- the page in a real browser -------------------------------------------------------------------


def install_chromium():
    """Debian's Chromium and its driver; skipped with the reason where they cannot be had."""
    installed = apt_install(["chromium", "chromium-driver"], ["chromium", "chromedriver"])
    if installed is not None and (installed.returncode != 0 or not shutil.which("chromedriver")):
        pytest.skip(f"the browser tests need Debian's chromium and chromium-driver, which could not be installed: "
                    f"{installed.stderr[-300:]!r}")


@contextlib.contextmanager
def chromium():
    """Headless Chromium driven by selenium, quit at the end."""
    install_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser(site):
    with chromium() as driver:
        yield driver


def text_of(driver, selector):
    """The text of the first element `selector` finds, read in one go (the page redraws its tables every second)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
                                 selector)


def click(driver, selector, what):
    """Click the first element `selector` finds, once there is one."""
    wait_until(lambda: driver.execute_script(
        "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e", selector), 20, 0.2, what=what)


def log_in(driver, name, password):
    """Log in through the page's form (the page is open), and wait until the page says who is logged in."""
    wait_until(lambda: [e for e in driver.find_elements("css selector", "#login-name") if e.is_displayed()], 20, 0.2,
               what="the login form")
    for field, text in (("#login-name", name), ("#login-password", password)):
        driver.find_element("css selector", field).clear()
        driver.find_element("css selector", field).send_keys(text)
    click(driver, "#login button", "the login button")
    wait_until(lambda: text_of(driver, "#user") == f"operator {name}", 20, 0.2, what="logged in")


def setting_row(driver, program, name):
    """What the settings page offers for one setting: an input, a button, and the text of its last cell."""
    return driver.execute_script(
        "const row = [...document.querySelectorAll('#settings tr[data-program]')]"
        ".find(r => r.cells[0].textContent === arguments[0] && r.cells[1].textContent === arguments[1]);"
        "return row ? {input: !!row.querySelector('input'), button: !!row.querySelector('button'),"
        " last: row.cells[row.cells.length - 1].textContent} : null", program, name)


def running_rows(driver):
    return set(driver.execute_script("return [...document.querySelectorAll('#programs tr[data-program]')]"
                                     ".filter(r => r.querySelector('td.state').textContent === 'RUNNING')"
                                     ".map(r => r.dataset.program)"))


@pytest.mark.timeout(900)   # the first to need the browser may wait for its installation
def test_the_page_follows_a_restart_live_and_offers_no_action_read_only(site, browser):
    browser.get(site.url + "/")
    names = set(site.programs())
    wait_until(lambda: running_rows(browser) == names, 30, 0.2, what="every program RUNNING on the page")
    assert browser.find_elements("css selector", ".action") == []   # not logged in: read-only
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web-status.png"))
    browser.execute_script("window.notReloaded = true")
    before = site.programs()["lta1"]
    os.kill(before["pid"], signal.SIGKILL)
    wait_until(lambda: text_of(browser, '#programs tr[data-program="lta1"] td.restarts') == str(before["restarts"] + 1)
               and "lta1" in running_rows(browser), 60, 0.2, what="lta1 restarted, on the page")
    assert browser.execute_script("return window.notReloaded") is True


@pytest.mark.timeout(900)
def test_a_run_begun_from_the_page_by_a_logged_in_operator_is_in_the_run_log(site, browser):
    browser.get(site.url + "/#status")
    log_in(browser, "anna", PASSWORD)
    click(browser, "#do-prepare_run", "the prepare button")
    comment = wait_until(lambda: browser.find_elements("css selector", "#run-comment"), 20, 0.2)[0]
    comment.send_keys("begun from the page")
    click(browser, "#do-begin_run", "the begin button")
    wait_until(lambda: text_of(browser, "#run-state") == "RUN", 30, 0.2, what="RUN on the page")
    run = site.get("/api/status")[1]["run"]["run"]
    browser.get(site.url + "/#settings")   # during the run a frozen setting is read-only, and says why
    wait_until(lambda: setting_row(browser, "bias", "volts") == {"input": False, "button": False,
                                                                 "last": f"read-only: run {run} is on"}
               and setting_row(browser, "bias", "ramp_rate") == {"input": True, "button": True, "last": "apply"},
               20, 0.2, what="bias.volts read-only during the run, bias.ramp_rate (live) still offered")
    browser.get(site.url + "/#runs")
    wait_until(lambda: "begun from the page" in (text_of(browser, "#runs tbody") or ""), 20, 0.2,
               what="the run in the page's run log")
    browser.get(site.url + "/#status")
    click(browser, "#do-end_run", "the end button")
    wait_until(lambda: text_of(browser, "#run-state") == "STOP", 30, 0.2, what="STOP on the page")
    assert f"STOP number {run}" in text_of(browser, "#run")   # the last run's number, kept
    assert any(e.get("kind") == "operator_action" and e["by"] == "anna" and e["action"] == "end_run"
               for e in site.get("/api/events?n=100")[1])

    browser.get(site.url + "/#settings")   # a setting changed from the page
    field = 'input[data-setting="cryo.set_point"]'
    wait_until(lambda: browser.execute_script("return !!document.querySelector(arguments[0])", field), 20, 0.2,
               what="the settings page")
    wait_until(lambda: setting_row(browser, "bias", "volts") == {"input": True, "button": True, "last": "apply"},
               20, 0.2, what="bias.volts offered again once the run ended")
    browser.execute_script("const input = document.querySelector(arguments[0]); input.value = '138';"
                           "input.closest('tr').querySelector('button').click()", field)
    wait_until(lambda: site.get("/api/config")[1]["cryo"]["values"]["set_point"] == 138, 20, 0.2,
               what="the new set point")


def rgb(css):
    return tuple(int(part) for part in re.findall(r"\d+", css)[:3])


@pytest.mark.timeout(900)
def test_a_warning_on_the_banner_looks_unlike_an_alarm(site, browser):
    browser.get(site.url + "/#status")

    def backgrounds():
        return browser.execute_script(
            "return [...arguments].map(name => {"
            " const e = document.querySelector(`#alarms-banner [data-alarm='${name}']`);"
            " return e ? getComputedStyle(e).backgroundColor : null; })", *STANDING)
    warning, alarm = map(rgb, wait_until(lambda: all(b := backgrounds()) and b, 30, 0.2,
                                         what="both standing alarms on the banner"))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web-alarms.png"))
    assert alarm[0] > 2 * max(alarm[1:]), alarm   # red
    assert warning[1] > 2 * warning[2] and warning[1] > 0.4 * warning[0], warning   # amber: red and green, no blue


def open_logged_out(driver, url):
    """Open `url` afresh (loaded again, not only a new fragment) with no session, as a link followed on a phone."""
    driver.delete_all_cookies()
    driver.get("about:blank")
    driver.get(url)


def marked_alarms(driver):
    return driver.execute_script("return [...document.querySelectorAll('#alarms tr.focus')].map(r => r.dataset.alarm)")


@pytest.mark.timeout(900)
def test_a_messages_link_opens_the_alarms_page_with_its_alarm_marked_to_acknowledge_after_logging_in(
        site, site_folder, browser):
    sink = site_folder / "var" / "run" / "notifications.jsonl"   # damicm's shift route

    def message():
        told = [json.loads(line) for line in sink.read_text().splitlines()] if sink.exists() else []
        return next((m for m in told if m["title"] == f"[damicm] ALARM {LINKED}"), None)
    body = wait_until(message, 60, 0.5, what="the standing alarm's message to the shift")["body"]
    link = re.search(r"acknowledge it \(after logging in\): (\S+)", body)[1]
    assert link == f"{site.url}/#alarms/{LINKED}"
    open_logged_out(browser, link)
    wait_until(lambda: marked_alarms(browser) == [LINKED], 30, 0.2, what="the alarm marked on the alarms page")
    assert browser.execute_script("return document.getElementById('page-alarms').hidden") is False
    assert text_of(browser, "nav a.current") == "Alarms"
    assert browser.find_elements("css selector", "#alarms tr.focus button") == []   # read-only until logged in
    log_in(browser, "anna", PASSWORD)
    click(browser, "#alarms tr.focus button", "the marked alarm's acknowledge button")
    wait_until(lambda: ({a["alarm"]: a for a in site.get("/api/alarms")[1]["alarms"]}[LINKED]["acked"] or {})
               .get("by") == "anna", 30, 0.2, what="the alarm acknowledged by anna")
    wait_until(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#notify-sent tr')].some(r => r.cells[3].textContent === arguments[0]"
        " && r.cells[2].textContent === 'raised' && r.cells[6].textContent === 'sent')", LINKED), 30, 0.2,
        what="the message among the notifications sent")


def maintenance_banner(driver):
    return driver.execute_script("return [...document.querySelectorAll('#maintenance-banner div')]"
                                 ".map(e => e.textContent)")


@pytest.mark.timeout(900)
def test_an_operator_starts_and_ends_maintenance_on_the_page_and_every_page_shows_it(site, browser):
    open_logged_out(browser, site.url + "/#alarms")
    log_in(browser, "anna", PASSWORD)
    wait_until(lambda: browser.find_element("css selector", "#maintenance-controls").is_displayed(), 20, 0.2,
               what="the maintenance form, for an operator")
    for field, text in (("#maintenance-reason", "warming up"), ("#maintenance-programs", "cryo")):
        browser.find_element("css selector", field).send_keys(text)
    try:
        click(browser, "#maintenance-start", "the button that starts maintenance")
        banner = wait_until(lambda: maintenance_banner(browser), 30, 0.2, what="the maintenance banner")
        assert len(banner) == 1 and re.fullmatch(r"MAINTENANCE until (\d{4}-\d\d-\d\d )?\d\d:\d\d UTC \(anna\): "
                                                 r"warming up; alarms of cryo held back notifications", banner[0])
        windows = site.get("/api/run/notifications?n=1")[1]["maintenance"]
        assert [(w["by"], w["reason"], w["programs"], round((w["until"] - w["from"]) / 60)) for w in windows] == \
            [("anna", "warming up", ["cryo"], 120)]
        browser.get(site.url + "/#status")
        assert maintenance_banner(browser) == banner
        browser.get(site.url + "/#alarms")
        click(browser, "#maintenance-end", "the button that ends maintenance")
        wait_until(lambda: maintenance_banner(browser) == [], 30, 0.2, what="the banner gone")
        said = [(e["kind"], e["message"]) for e in site.get("/api/events?n=200")[1]
                if e["kind"] in ("maintenance", "maintenance_ended")]
        assert said[:2] == [("maintenance_ended", "maintenance ended by anna"),
                            ("maintenance", "maintenance by anna for 120 min (cryo): warming up")]
        assert {("maintenance", "run", True)} <= operator_actions(site)
    finally:   # whatever failed, no window is left to hold back the other tests' messages
        site.post("/api/run/maintenance", {"end": True}, cookie=site.login("anna", PASSWORD))


def notifications_summary(driver):
    return text_of(driver, "#notify-summary")


@pytest.mark.timeout(900)
def test_a_route_that_refuses_shows_as_failing_on_the_alarms_page_with_its_alarm_until_it_takes_messages_again(
        site, browser, pager):
    cookie = site.login("anna", PASSWORD)
    pager.status = 500
    try:
        status, answer, _ = site.post("/api/run/notify_test", {"route": "pager"}, cookie=cookie)
        assert status == 200 and [(r["url"], r["ok"]) for r in answer["sent"]] == [(0, False)], answer
        browser.get(site.url + "/#alarms")
        wait_until(lambda: notifications_summary(browser) == "1 waiting to be sent, 1 failing", 60, 0.2,
                   what="the failing delivery counted on the page")
        waiting = browser.execute_script("return [...document.querySelectorAll('#notify-pending tbody tr')]"
                                         ".map(r => [...r.cells].map(c => c.textContent))")
        assert [(row[1], row[2]) for row in waiting] == [("pager", "test")] and int(waiting[0][5]) >= 2, waiting
        assert waiting[0][7], "the last error"
        wait_until(lambda: browser.find_elements("css selector", '#alarms tr[data-alarm="notify.delivery"]'), 30,
                   0.2, what="the notify.delivery alarm standing on the page")
    finally:
        pager.status = 200
    wait_until(lambda: notifications_summary(browser) == "0 waiting to be sent, 0 failing", 60, 0.2,
               what="the delivery made once the route takes messages again")
    assert pager.titles() == ["[damicm] test: WARNING test"]
    sent = browser.execute_script("return [...document.querySelectorAll('#notify-sent tbody tr')]"
                                  ".map(r => [...r.cells].map(c => c.textContent))")
    tries = [row[6] for row in sent if row[1:4] == ["pager", "test", "test"]]   # newest first
    assert tries[0] == "sent" and len(tries) >= 3 and "sent" not in tries[1:], tries   # failed twice at least
    wait_until(lambda: {a["alarm"]: a["state"] for a in site.get("/api/alarms")[1]["alarms"]}
               .get("notify.delivery") == "cleared", 30, 0.2, what="the notify.delivery alarm cleared")
    assert site.post("/api/alarms/notify.delivery/ack", cookie=cookie)[0] == 200


# --- a run paused, resumed, and its end held, on the page -----------------------------------------------------------


@pytest.fixture
def held_site(tmp_path):
    """A system of its own: a server, the run controller, the web program (operator anna) and one participant,
    `drain`, that holds the end of a run for 6 s (deferring, with progress; its defer_limit 60 s)."""
    listen = f"127.0.0.1:{free_port()}"
    drain = helper("participant.py", "drain", tmp_path / "drain.jsonl", "--defer", "end", 6, client="drain",
                   participant=True, transitions={"defer_limit": 60})
    web_program = {"cmd": ["python", "-m", "web", "--name", "web", "--listen", listen], "client": "web",
                   "cwd": str(ROOT)}
    path = write_experiment(tmp_path, "held", timeout=5.0, programs={"drain": drain, "web": web_program})
    made = subprocess.run([sys.executable, "-m", "web.users", "--experiment", str(path), "add", "anna"],
                          input=PASSWORD + "\n", cwd=ROOT, env=env_for_children(), capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    system = System(path)
    try:
        site = WebSite(f"http://{listen}")
        wait_until(lambda: (p := site.programs()) and all(i["state"] == "RUNNING" and i["registered"] is not False
                                                       for i in p.values()), 30, 0.2, what="drain and web up")
        yield system, site
    finally:
        system.close()


def run_buttons(driver):
    """The run buttons the page offers: their ids, and whether each can be pressed."""
    return driver.execute_script("return [...document.querySelectorAll('#run-controls button')]"
                                 ".map(b => [b.id, !b.disabled])")


def shown(driver, selector):
    return driver.execute_script("const e = document.querySelector(arguments[0]); return !!e && !e.hidden", selector)


def held_on_page(driver):
    """What the page shows of a transition under way, read in one go: its text, drain's line, where it came from
    (the status or a run_progress event), and the run buttons."""
    return driver.execute_script(
        "const node = document.getElementById('run-transition'), holder = node.querySelector('[data-holder=drain]');"
        "return {text: node.hidden ? null : node.textContent, holder: holder && holder.textContent,"
        " from: node.dataset.from, buttons: [...document.querySelectorAll('#run-controls button')]"
        ".map(b => [b.id, !b.disabled])}")


def colour(driver, selector):
    return driver.execute_script("const e = document.querySelector(arguments[0]); const s = getComputedStyle(e);"
                                 "return [s.color, s.backgroundColor]", selector)


@pytest.mark.timeout(900)   # the browser may have to be installed first
def test_an_operator_pauses_and_resumes_a_run_on_the_page_and_sees_who_holds_its_end(held_site):
    s, site = held_site
    cookie = site.login("anna", PASSWORD)
    with chromium() as driver:
        driver.get(site.url + "/#status")
        log_in(driver, "anna", PASSWORD)
        assert site.post("/api/run/prepare_run", cookie=cookie)[0] == 200
        run = site.post("/api/run/begin_run", {"comment": "paused from the page"}, cookie=cookie)[1]["run"]
        wait_until(lambda: run_buttons(driver) == [["do-pause_run", True], ["do-end_run", True],
                                                   ["do-abort_run", True]], 20, 0.2, what="RUN's buttons")
        assert text_of(driver, "#run-state") == "RUN" and not shown(driver, "#run-pause")
        running_look = colour(driver, "#run-state")
        driver.find_element("css selector", "#run-why").send_keys("fill the dewar")
        click(driver, "#do-pause_run", "the pause button")

        wait_until(lambda: text_of(driver, "#run-state") == "PAUSED", 20, 0.2, what="PAUSED on the page")
        status = s.op.request("run", "status")
        pause = status["current_run"]["pauses"][-1]
        assert status["state"] == "PAUSED" and (pause["why"], pause["by"]["operator"]) == ("fill the dewar", "anna")
        wait_until(lambda: shown(driver, "#run-pause") and text_of(driver, "#run-pause-why") == "fill the dewar",
                   20, 0.2, what="the pause's why on the page")
        assert re.fullmatch(r"PAUSED since .+ \(\d+s\) by anna: fill the dewar", text_of(driver, "#run-pause"))
        assert colour(driver, "#run-state") != running_look   # a style of its own
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "web-paused.png"))
        wait_until(lambda: run_buttons(driver) == [["do-resume_run", True], ["do-end_run", True],
                                                   ["do-abort_run", True]], 20, 0.2, what="PAUSED's buttons")
        click(driver, "#do-resume_run", "the resume button")
        wait_until(lambda: text_of(driver, "#run-state") == "RUN" and not shown(driver, "#run-pause"), 20, 0.2,
                   what="RUN again on the page")
        assert s.op.request("run", "status")["state"] == "RUN"

        # The end, held 6 s by drain: asked with a 0.5 s timeout, for which the web program waits 5.5 s, and as long
        # as progress comes.
        ended = {}
        ending = threading.Thread(target=lambda: ended.update(answer=site.post("/api/run/end_run", {"timeout": 0.5},
                                                                                cookie=cookie)))
        ending.start()
        try:
            # one look at the page: the end lasts only 6 s
            shown_live = wait_until(lambda: (seen := held_on_page(driver))["from"] == "run_progress" and
                                    "draining" in (seen["holder"] or "") and seen, 20, 0.05,
                                    what="drain holding the end, live from a run_progress event, on the page")
            driver.save_screenshot(str(ARTIFACTS / "web-held.png"))
            assert re.fullmatch(r"held by drain \d+%: draining \d+ of 30 \(for \d+s\)", shown_live["holder"])
            assert shown_live["text"].startswith(f"ending run {run}: stage 1 of 1, waiting for drain")
            assert shown_live["buttons"] == [["do-pause_run", False], ["do-end_run", False], ["do-abort_run", False]]
        finally:
            ending.join(60)
        status, answer, _ = ended["answer"]
        assert status == 200 and answer["state"] == "STOP" and set(answer["deferred"]) == {"drain"}, answer
        wait_until(lambda: text_of(driver, "#run-state") == "STOP" and not shown(driver, "#run-transition"), 20,
                   0.2, what="STOP on the page, no transition shown")

        assert site.post("/api/run/exclude", {"program": "drain", "why": "keeps deferring"}, cookie=cookie)[0] == 200
        wait_until(lambda: shown(driver, "#run-excluded") and re.fullmatch(
            r"left out of runs: drain \(keeps deferring, by anna, .+\)", text_of(driver, "#run-excluded")), 20, 0.2,
            what="drain left out, on the page")
        assert site.post("/api/run/include", {"program": "drain"}, cookie=cookie)[0] == 200
        wait_until(lambda: not shown(driver, "#run-excluded"), 20, 0.2, what="no one left out")
    record = s.op.request("run", "runs", n=1)[-1]
    assert record["run"] == run and [p["why"] for p in record["pauses"]] == ["fill the dewar"]
