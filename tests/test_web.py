"""The web program against a live `run.py damicm --headless`: its JSON API and /metrics over plain HTTP, bad input
answered with a 4xx, actions only for a logged-in operator; and the page itself in headless Chromium."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, WebSite, apt_install, damicm_copy, env_for_children, wait_until

pytestmark = pytest.mark.xdist_group(name="web")   # one damicm for the whole module, on one worker

PASSWORD = "correct horse battery"
ARTIFACTS = ROOT / "test-artifacts"
STANDING = {name: {"value": "cryo.values.temperature", "above": -1000, "severity": severity,
                   "actions": ["log", "publish"], "message": f"a standing {severity}, as the page shows it"}
            for name, severity in (("standing_warning", "warning"), ("standing_alarm", "alarm"))}   # always hold


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    path = damicm_copy(folder)
    description = json.loads(path.read_text())
    description["alarms"].update(STANDING)
    path.write_text(json.dumps(description))
    listen = description["programs"]["web"]["cmd"][-1]
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
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("orbit_program_up", (("host", "local"), ("program", "lta1")))] == 1
    assert samples[("orbit_program_state", (("program", "web"), ("state", "RUNNING")))] == 1
    assert samples[("orbit_run_state", (("state", "STOP"),))] == 1
    assert samples[("orbit_server_clients", ())] >= 11   # ten programs with a client, and the run controller
    assert any(name == "orbit_value" and dict(labels)["name"] == "cryo.values.temperature" for name, labels in samples)
    status, text, headers = site.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert headers["Content-Type"].startswith("application/openmetrics-text") and text.rstrip().endswith("# EOF")

    buckets = wait_until(lambda: site.get("/api/history?name=cryo.values.temperature&since=-600&points=50")[1]
                         .get("cryo.values.temperature"), 30, 0.5, what="history through the web program")
    assert all(len(b) == 4 and b[1] <= b[3] <= b[2] for b in buckets) and len(buckets) <= 50
    status, events, _ = site.get("/api/events?n=5")
    assert status == 200 and 0 < len(events) <= 5
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
    "/api/runs?n=", "/api/events?n=", "/api/alarms?log=",
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


def metric_samples(site):
    status, text, _ = site.get("/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


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


@pytest.fixture(scope="module")
def browser(site):
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


def text_of(driver, selector):
    """The text of the first element `selector` finds, read in one go (the page redraws its tables every second)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
                                 selector)


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
    def click(selector, what):
        wait_until(lambda: browser.execute_script(
            "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e", selector), 20, 0.2, what=what)
    browser.get(site.url + "/#status")
    wait_until(lambda: browser.find_elements("css selector", "#login-name"), 20, 0.2)
    browser.find_element("css selector", "#login-name").send_keys("anna")
    browser.find_element("css selector", "#login-password").send_keys(PASSWORD)
    click("#login button", "the login button")
    wait_until(lambda: text_of(browser, "#user") == "operator anna", 20, 0.2, what="logged in")
    click("#do-prepare_run", "the prepare button")
    comment = wait_until(lambda: browser.find_elements("css selector", "#run-comment"), 20, 0.2)[0]
    comment.send_keys("begun from the page")
    click("#do-begin_run", "the begin button")
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
    click("#do-end_run", "the end button")
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
