"""The web page's Sequences page and its API against a real server, run controller, participant, sequencer and web
program: the sequencer's commands by GET and by an operator's POST, refusals with the sequencer's code; and in
headless Chromium an operator queues, starts, pauses, resumes, skips and aborts a sequence while the page follows it,
and an observer only watches."""

import collections
import json
import re

import pytest

from tests.helpers import ControllerProcess, ServerProcess, WebSite, free_port, helper, wait_until, write_experiment
from tests.test_web import ARTIFACTS, chromium, click, log_in, text_of
from web.auth import Users

pytestmark = pytest.mark.xdist_group(name="web-sequences")

PASSWORD = "correct horse battery"
LONG = {"name": "long", "steps": [{"for": {"take": ["one", "two", "three"],
                                            "steps": [{"run": {"comment": "{take}", "seconds": 600}}]}}]}
SHORT = {"name": "short", "variables": {"seconds": 1}, "steps": [
    {"repeat": {"times": 2, "as": "i", "steps": [{"run": {"comment": "short {i}", "seconds": "{seconds}"}}]}}]}

Bench = collections.namedtuple("Bench", "site readonly")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A participant (cam), the sequencer with the sequences `long` and `short`, a web program with the operator anna
    and a read-only one."""
    folder = tmp_path_factory.mktemp("web-sequences")
    (folder / "sequences").mkdir()
    for sequence in (LONG, SHORT):
        (folder / "sequences" / f"{sequence['name']}.json").write_text(json.dumps(sequence))
    Users(folder / "web-users.json").set("anna", PASSWORD)
    listen, readonly = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    path = write_experiment(folder, "t-web-sequences", timeout=5.0, programs={
        "cam": helper("participant.py", "cam", folder / "cam.jsonl", client="cam", participant=True),
        "sequencer": {"cmd": ["python", "-m", "clients.sequencer", "--name", "sequencer",
                              "--folder", str(folder / "sequences"), "--state", str(folder / "sequencer")],
                      "client": "sequencer"},
        "web": {"cmd": ["python", "-m", "web", "--name", "web", "--listen", listen,
                        "--users", str(folder / "web-users.json")], "client": "web"},
        "webro": {"cmd": ["python", "-m", "web", "--name", "webro", "--listen", readonly,
                          "--users", str(folder / "no-operators.json")], "client": "webro"}})
    server = ServerProcess(path).start()
    controller = ControllerProcess(path).start()
    try:
        site = WebSite(f"http://{listen}")
        wait_until(lambda: len(p := site.programs()) == 4 and all(i["state"] == "RUNNING" and i["registered"]
                                                                 for i in p.values())
                   and site.get("/api/status")[1]["sequencer"], 60, 0.2, what="every program up, seen by web")
        yield Bench(site, WebSite(f"http://{readonly}"))
    finally:
        try:
            controller.stop()
        finally:
            server.stop()


def operator_actions(site):
    return [(e["action"], e["target"], e["ok"]) for e in reversed(site.get("/api/events?n=200")[1])
            if e.get("kind") == "operator_action" and e.get("by") == "anna"]


def test_the_sequencer_is_read_by_get_and_driven_by_an_operators_post_refusals_with_its_code(bench):
    site = bench.site
    status, answer, _ = site.get("/api/sequencer/status")
    assert status == 200 and answer["state"] == "stopped" and answer["queue"] == [], answer
    assert site.get("/api/sequencer/sequences")[1]["sequences"] == ["long", "short"]
    assert site.get("/api/sequencer/log?n=5")[0] == 200
    status, answer, _ = site.get("/api/sequencer/explode")
    assert (status, answer["code"]) == (404, "unknown_action"), answer
    assert "status, sequences, log, queue, start, pause, resume, skip, abort, load, dry_run" in answer["error"]
    assert site.get("/api/sequencer/pause")[1]["code"] == "method_not_allowed"
    status, answer, _ = site.post("/api/sequencer/pause", {"at_once": True})
    assert (status, answer["code"]) == (401, "not_logged_in"), answer   # an observer
    status, answer, _ = bench.readonly.post("/api/sequencer/pause", {"at_once": True})
    assert (status, answer["code"]) == (403, "read_only"), answer       # a page without operators

    cookie = site.login("anna", PASSWORD)
    assert site.post("/api/sequencer/status", cookie=cookie)[1]["code"] == "method_not_allowed"
    status, answer, _ = site.post("/api/sequencer/start", cookie=cookie)
    assert (status, answer["code"]) == (409, "bad_state") and "nothing is queued" in answer["error"], answer
    status, answer, _ = site.post("/api/sequencer/queue", {"sequence": "absent"}, cookie=cookie)
    assert (status, answer["code"]) == (400, "bad_field") and "no sequence 'absent'" in answer["error"], answer
    status, answer, _ = site.post("/api/sequencer/abort", {"why": "x" * 501}, cookie=cookie)
    assert (status, answer["code"]) == (400, "bad_request"), answer
    status, verdict, _ = site.post("/api/sequencer/dry_run", {"sequence": "short", "variables": {"seconds": 5}},
                                   cookie=cookie)
    assert status == 200 and verdict["ok"] and (verdict["steps"], verdict["estimate_s"]) == (2, 14.0), verdict
    status, loaded, _ = site.post("/api/sequencer/load", {"sequence": "long"}, cookie=cookie)
    assert status == 200 and loaded["steps"] == 3, loaded
    assert site.get("/api/sequencer/status")[1]["queue"] == []   # nothing was queued
    wait_until(lambda: operator_actions(site)[-4:] == [("start", "sequencer", False), ("queue", "sequencer", False),
                                                       ("dry_run", "sequencer", True), ("load", "sequencer", True)],
               20, 0.2, what="the operator's actions announced with who did them")


def test_without_a_sequencer_its_api_answers_503_and_the_snapshot_says_why(bench):
    site = bench.site
    cookie = site.login("anna", PASSWORD)
    assert site.post("/api/run/stop", {"program": "sequencer"}, cookie=cookie)[0] == 200
    try:
        status, answer, _ = wait_until(lambda: (got := site.get("/api/sequencer/status"))[0] == 503 and got, 60, 0.2,
                                       what="the sequencer gone")
        assert (status, answer["code"]) == (503, "no_such_client") and "sequencer" in answer["error"], answer
        assert site.post("/api/sequencer/start", cookie=cookie)[0] == 503
        snap = wait_until(lambda: (s := site.get("/api/status")[1])["sequencer"] is None and s, 30, 0.2,
                          what="a snapshot without the sequencer")
        assert "sequencer" in snap["sequencer_error"] and snap["run"]["state"] == "STOP"
    finally:
        assert site.post("/api/run/start", {"program": "sequencer"}, cookie=cookie)[0] == 200
    wait_until(lambda: site.get("/api/sequencer/status")[0] == 200, 30, 0.2, what="the sequencer back")


def step(driver, field):
    """A line of the step running, as the Sequences page shows it."""
    return text_of(driver, f'#sequence-step tr[data-field="{field}"] td')


def enabled_buttons(driver):
    """The buttons of the Sequences page one could press now: shown and enabled."""
    return set(driver.execute_script("return [...document.querySelectorAll('#page-sequences button')]"
                                     ".filter(b => !b.disabled && b.offsetParent !== null).map(b => b.textContent)"))


def press(driver, button):
    """Click a button of the Sequences page once it is shown and enabled."""
    wait_until(lambda: driver.execute_script(
        "const b = document.getElementById(arguments[0]);"
        "if (b && !b.disabled && b.offsetParent !== null) { b.click(); return true; } return false", button),
        20, 0.2, what=f"the button {button} enabled")


def why(driver, text):
    field = driver.find_element("css selector", "#sequence-why")
    field.clear()
    field.send_keys(text)


def running_step(driver, site, number, after=0):
    """The run number the page shows for step `number` of 3, once it shows one past run `after` and the run controller
    runs it."""
    def shown():
        run = step(driver, "run")
        return step(driver, "step") == f"{number}/3" and step(driver, "phase") == "running" and \
            (run or "").isdigit() and int(run) > after and site.get("/api/status")[1]["run"]["run"] == int(run) and \
            int(run)
    return wait_until(shown, 60, 0.2, what=f"step {number}/3 and a run past {after} on the page")


def finished(driver, entry):
    """The cells of `entry`'s row among the finished sequences."""
    return driver.execute_script(
        "const row = document.querySelector(`#sequence-finished tr[data-entry='${arguments[0]}']`);"
        "return row && [...row.cells].map(c => c.textContent)", entry)


def sequencer_state(driver):
    return text_of(driver, "#sequencer-state")


@pytest.mark.timeout(900)   # the first to need the browser may wait for its installation
def test_an_operator_takes_a_sequence_through_the_page_and_an_observer_only_watches(bench):
    site = bench.site
    with chromium() as browser:
        from selenium.webdriver.support.ui import Select
        browser.get(site.url + "/#sequences")
        wait_until(lambda: sequencer_state(browser) == "stopped", 20, 0.2, what="the sequencer's state on the page")
        assert enabled_buttons(browser) == set()   # not logged in
        log_in(browser, "anna", PASSWORD)
        wait_until(lambda: browser.find_elements("css selector", '#sequence-name option[value="long"]'), 20, 0.2)
        Select(browser.find_element("css selector", "#sequence-name")).select_by_value("short")
        variables = browser.find_element("css selector", "#sequence-variables")
        variables.clear()
        variables.send_keys('{"seconds": 5}')
        press(browser, "seq-dry-run")
        wait_until(lambda: text_of(browser, "#sequence-verdict") == "ok: 2 steps, about 14s", 20, 0.2,
                   what="the dry run's verdict on the page")
        Select(browser.find_element("css selector", "#sequence-name")).select_by_value("long")
        variables.clear()
        press(browser, "seq-queue")
        entry = wait_until(lambda: browser.execute_script(
            "const row = [...document.querySelectorAll('#sequence-queue tr[data-entry]')]"
            ".find(r => r.cells[1].textContent === 'long'); return row && row.dataset.entry"), 20, 0.2,
            what="long in the queue")
        assert enabled_buttons(browser) == {"Start", "queue", "dry run"}

        press(browser, "seq-start")
        first = running_step(browser, site, 1)
        assert (step(browser, "kind"), step(browser, "loop")) == ("run", "take=one")
        assert sequencer_state(browser) == "running"
        assert step(browser, "where").startswith("long.steps.0.for")
        assert re.fullmatch(rf"run {first}: \d+ s left", step(browser, "waiting for"))
        assert re.fullmatch(r"\d+s in this sequence, \d+s in this step", step(browser, "spent"))
        assert step(browser, "left") == "about 30m of this sequence"   # three runs of 600 s
        assert enabled_buttons(browser) == {"Pause", "Pause now", "Skip", "Abort", "queue", "dry run"}

        press(browser, "seq-pause")   # after its step: the run goes on
        wait_until(lambda: sequencer_state(browser) == "pausing", 20, 0.2, what="pausing on the page")
        assert "after its step: paused by an operator (by anna" in text_of(browser, "#sequencer-paused")
        assert site.get("/api/status")[1]["run"]["run"] == first
        assert enabled_buttons(browser) == {"Pause now", "Resume", "Skip", "Abort", "queue", "dry run"}
        press(browser, "seq-resume")
        wait_until(lambda: sequencer_state(browser) == "running", 20, 0.2, what="running again on the page")

        why(browser, "cryo check")
        press(browser, "seq-pause-now")
        wait_until(lambda: "at once: cryo check (by anna" in (text_of(browser, "#sequencer-paused") or ""), 20, 0.2,
                   what="paused at once, with its reason, on the page")
        wait_until(lambda: site.get("/api/status")[1]["run"]["state"] == "STOP", 30, 0.2, what="the run ended")
        newest = site.get("/api/runs?n=1")[1][0]
        assert (newest["run"], newest["result"]) == (first, "ended")
        wait_until(lambda: enabled_buttons(browser) == {"Resume", "Skip", "Abort", "queue", "dry run"}, 20, 0.2,
                   what="only what applies to a pause offered")

        press(browser, "seq-resume")
        again = running_step(browser, site, 1, after=first)   # the step taken again: a new run
        assert step(browser, "attempt") == "2"
        press(browser, "seq-skip")
        second = running_step(browser, site, 2, after=again)
        assert step(browser, "loop") == "take=two"
        assert browser.execute_script("const bar = document.getElementById('sequence-progress');"
                                      "return [bar.value, bar.max]") == [1, 3]
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "web-sequences.png"))

        click(browser, "#logout", "the logout button")   # an observer watches
        wait_until(lambda: enabled_buttons(browser) == set(), 20, 0.2, what="no button for an observer")
        assert step(browser, "step") == "2/3" and sequencer_state(browser) == "running"
        refused = browser.execute_async_script(
            "fetch('/api/sequencer/abort', {method: 'POST', headers: {'Content-Type': 'application/json'},"
            " body: '{}'}).then(r => r.json().then(a => arguments[0]([r.status, a.code])))")
        assert refused == [401, "not_logged_in"]

        log_in(browser, "anna", PASSWORD)
        why(browser, "enough")
        press(browser, "seq-abort")
        wait_until(lambda: (cells := finished(browser, entry)) and (cells[3], cells[5]) == ("aborted", "enough"),
                   30, 0.2, what="the sequence aborted, with why, among the finished ones")
        wait_until(lambda: sequencer_state(browser) == "stopped" and step(browser, "step") is None, 20, 0.2,
                   what="no step running")
        sequence_events = text_of(browser, "#sequence-events tbody")
        aborted = f"Sequence long ({entry}) aborted: enough"
        browser.get(site.url + "/#events")
        wait_until(lambda: aborted in (text_of(browser, "#events tbody") or ""), 20, 0.2,
                   what="the abort in the page's event lines")
        events = text_of(browser, "#events tbody")
        browser.get(site.url + "/#sequences")
        browser.refresh()   # a page opened afterwards lists them too
        wait_until(lambda: aborted in (text_of(browser, "#sequence-events tbody") or ""), 20, 0.2,
                   what="the abort among the Sequences page's events, after a reload")
    for line in (f"Queued long ({entry}, 3 steps)", f"Sequence long ({entry}) started: 3 steps", "long step 1/3: run",
                 f"long step 1: run {first}", "long paused by anna: cryo check", "Sequences resumed by anna",
                 "long: step 1 skipped", "long step 2/3: run", f"long step 2: run {second}"):
        assert line in events and line in sequence_events, line
    runs = [(r["comment"], r["result"]) for r in reversed(site.get("/api/runs?n=3")[1])]
    assert runs == [("one", "ended"), ("one", "ended"), ("two", "aborted")]
    assert operator_actions(site)[-8:] == [(action, "sequencer", True) for action in (
        "queue", "start", "pause", "resume", "pause", "resume", "skip", "abort")]
