"""The web page's run catalog and logbook against a real server, run controller, reader, historian, logbook program
and web program: in headless Chromium the Runs page finds runs by a query and shows the error of a bad one, a run's
page shows its record, plots its value and downloads its file byte for byte, an operator flags a run, and on the
Logbook page an operator writes a note with attachments, finds it and edits it; over plain HTTP the routes' errors
(a bad query, a file no record names or outside the data folder, an upload over the logbook's limit)."""

import base64
import collections
import csv
import hashlib
import io
import json
import random
import struct
import urllib.error
import urllib.request
import zlib

import pytest

from clients.logbook import ATTACHMENT_MAX
from runcontrol.control.operator import Operator
from tests.helpers import ROOT, ControllerProcess, ServerProcess, WebSite, free_port, wait_until, write_experiment
from tests.test_web import ARTIFACTS, chromium, click, log_in, text_of
from web.auth import Users

pytestmark = pytest.mark.xdist_group(name="web-catalog")

PASSWORD = "correct horse battery"
CATALOG = {"values": [{"value": "cam.values.t", "name": "t", "units": "K"}],
           "rules": [{"flag": "bad", "when": ["result!=ended"], "why": "did not end as planned"},
                     {"flag": "good", "when": ["result=ended", "t.max<150"]}]}
# A reader taking part in runs: it publishes cam.values.t, and at each run's end writes a file under the data
# folder (and, for a run with params {"outside": true}, names one outside it too) and reports them with its counters.
READER = '''
import hashlib, random, signal, sys
from pathlib import Path
from runcontrol.client.client import Client

class Reader(Client):
    config_schema = {"type": "object", "properties": {"volts": {"type": "number", "default": 60}}}

    def __init__(self, data, outside):
        super().__init__("cam", meta={"participant": True})
        self.data, self.outside, self.params = Path(data), Path(outside), {}
        self.timers.every(0.1, lambda: self.publish("values", {"t": round(random.uniform(120, 130), 3)}))

    def on_begin(self, run):
        self.params = dict(run.params or {})

    def on_end(self, run):
        folder = self.data / "cam"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"run_{run.number:06d}.bin"
        path.write_bytes(random.randbytes(150_000 + run.number))
        files = [path] + ([self.outside] if self.params.get("outside") else [])
        return {"state": "STOP", "run": run.number, "lost_packets": 0, "resyncs": 2, "files": len(files),
                "files_written": [{"path": str(p), "size": p.stat().st_size, "images": 3,
                                   "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files]}

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with Reader(sys.argv[1], sys.argv[2]) as reader:
    reader.connect(30)
    reader.run_forever()
'''

Bench = collections.namedtuple("Bench", "site cookie folder path runs")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The experiment up, and three runs made through the web API by anna: `warm-up at 60 V` (ended), `dark at 70 V`
    (ended, cam.volts changed to 70 before it) and `aborted on purpose` (aborted; its reader names a file outside
    the data folder too)."""
    folder = tmp_path_factory.mktemp("web-catalog")
    Users(folder / "web-users.json").set("anna", PASSWORD)
    (folder / "reader.py").write_text(READER)
    (folder / "outside.txt").write_text("not a file of the data folder\n")
    listen = f"127.0.0.1:{free_port()}"
    path = write_experiment(folder, "t-web-catalog", timeout=5.0, catalog=CATALOG, programs={
        "cam": {"cmd": ["python", str(folder / "reader.py"), str(folder / "data"), str(folder / "outside.txt")],
                "client": "cam", "participant": True, "cwd": str(ROOT)},
        "historian": {"cmd": ["python", "-m", "clients.historian", "--name", "historian"], "client": "historian",
                      "cwd": str(ROOT)},
        "logbook": {"cmd": ["python", "-m", "clients.logbook", "--name", "logbook"], "client": "logbook",
                    "cwd": str(ROOT)},
        "web": {"cmd": ["python", "-m", "web", "--name", "web", "--listen", listen,
                        "--users", str(folder / "web-users.json")], "client": "web", "cwd": str(ROOT)}})
    server = ServerProcess(path).start()
    controller = ControllerProcess(path).start()
    try:
        site = WebSite(f"http://{listen}")
        wait_until(lambda: len(p := site.programs()) == 4 and all(i["state"] == "RUNNING" and i["registered"]
                                                                 for i in p.values())
                   and site.get("/api/logbook?limit=1")[0] == 200, 60, 0.2, what="every program up, seen by web")
        cookie = site.login("anna", PASSWORD)
        first = make_run(site, cookie, {"comment": "warm-up at 60 V"})
        assert site.post("/api/programs/cam/config", {"values": {"volts": 70}}, cookie=cookie)[0] == 200
        second = make_run(site, cookie, {"comment": "dark at 70 V", "params": {"exposure": 30}})
        third = make_run(site, cookie, {"comment": "aborted on purpose", "params": {"outside": True}}, "abort_run")
        yield Bench(site, cookie, folder, path, (first, second, third))
    finally:
        try:
            controller.stop()
        finally:
            server.stop()


def make_run(site, cookie, begin, end="end_run"):
    """Prepare, begin, and end a run once the history holds values of it; its number, once its record is
    complete."""
    assert site.post("/api/run/prepare_run", cookie=cookie)[0] == 200
    status, begun, _ = site.post("/api/run/begin_run", begin, cookie=cookie)
    assert status == 200, begun
    run = begun["run"]
    start = site.get("/api/run/status")[1]["current_run"]["start"]
    wait_until(lambda: len(site.get(f"/api/history?name=cam.values.t&since={start}")[1].get("cam.values.t", [])) >= 3,
               20, 0.2, what="values of the run in the history")
    assert site.post(f"/api/run/{end}", cookie=cookie)[0] == 200
    wait_until(lambda: (got := site.get(f"/api/run/record?number={run}"))[0] == 200 and not got[1]["pending"], 30,
               0.2, what=f"run {run}'s record complete")
    return run


@pytest.fixture(scope="module")
def browser(bench):
    with chromium() as driver:
        yield driver


def download(url, **headers):
    """(status, body bytes, headers) of a GET."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def multipart(fields, files):
    """(body, Content-Type) of a multipart/form-data form: `fields` {name: text}, `files` [(field, name, bytes)]."""
    boundary = f"----orbit{random.randrange(1 << 48):x}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'.encode()
             for name, text in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
              f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n"
              for field, name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_form(site, path, fields, files, cookie, **headers):
    body, content_type = multipart(fields, files)
    return site.call("POST", path, cookie=cookie, raw=body, headers={"Content-Type": content_type, **headers})


def png(width, height):
    """A valid PNG picture of `width` x `height` grey pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes([128]) * width for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def table_runs(driver):
    return driver.execute_script("return [...document.querySelectorAll('#runs tbody tr')].map(r => +r.dataset.run)")


def find_runs(driver, query):
    field = driver.find_element("css selector", "#catalog-query")
    field.clear()
    field.send_keys(query)
    click(driver, "#catalog-find", "the find button")


def logged_in(driver, site, page):
    """Open `page` as anna, logged in."""
    driver.get(f"{site.url}/{page}")
    wait_until(lambda: text_of(driver, "#link") == "live", 20, 0.2, what="the page live")
    if text_of(driver, "#user") != "operator anna":
        log_in(driver, "anna", PASSWORD)


# --- in the browser ------------------------------------------------------------------------------------


@pytest.mark.timeout(900)   # the first to need the browser may wait for its installation
def test_the_runs_page_finds_runs_by_a_query_exports_them_and_shows_the_error_of_a_bad_one(bench, browser):
    site, (first, second, third) = bench.site, bench.runs
    browser.get(site.url + "/#runs")
    wait_until(lambda: table_runs(browser) == [third, second, first], 20, 0.2, what="every run, newest first")
    find_runs(browser, "cam.volts=70 flag=good t.max<1000")
    wait_until(lambda: table_runs(browser) == [second], 20, 0.2, what="the good run at 70 V alone")
    headers = browser.execute_script("return [...document.querySelectorAll('#runs thead th')].map(h => h.textContent)")
    assert headers[-2:] == ["cam.volts", "t.max"]
    cells = browser.execute_script("return [...document.querySelector('#runs tbody tr').cells].map(c => c.textContent)")
    assert cells[0] == str(second) and cells[1] == "good" and cells[5] == "dark at 70 V" and cells[-2] == "70", cells
    assert "1 run(s) found" in text_of(browser, "#catalog-summary")

    csv_link = browser.execute_script("return document.getElementById('catalog-csv').href")
    status, body, headers = download(csv_link)
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [(int(r["run"]), r["comment"], float(r["cam.volts"])) for r in rows] == [(second, "dark at 70 V", 70)]
    status, body, _ = download(browser.execute_script("return document.getElementById('catalog-json').href"))
    exported = json.loads(body)
    assert [r["run"] for r in exported["runs"]] == [second] and exported["total"] == 1
    assert exported["where"] == ["cam.volts=70", "flag=good", "t.max<1000"]

    find_runs(browser, "result=aborted")
    wait_until(lambda: table_runs(browser) == [third], 20, 0.2, what="the aborted run alone")
    find_runs(browser, "nosuch.key=3")
    said = site.get("/api/catalog?q=nosuch.key%3D3")[1]["error"]   # as the run controller says it
    wait_until(lambda: text_of(browser, "#catalog-error") == said and browser.execute_script(
        "return !document.getElementById('catalog-error').hidden"), 20, 0.2, what="the controller's error on the page")
    assert "nosuch.key" in said and table_runs(browser) == []


@pytest.mark.timeout(900)
def test_a_runs_page_shows_its_record_plots_its_value_and_downloads_its_file_byte_for_byte(bench, browser):
    site, second = bench.site, bench.runs[1]
    record = site.get(f"/api/run/record?number={second}")[1]
    browser.get(f"{site.url}/#run/{second}")

    def field(name):
        return text_of(browser, f'#run-summary tr[data-field="{name}"] td')
    wait_until(lambda: field("comment") == "dark at 70 V", 20, 0.2, what="run 2's record on its page")
    assert text_of(browser, "#run-title") == f"Run {second}: dark at 70 V"
    assert (field("began by"), field("ended by"), field("params")) == ("anna (web)", "anna (web)", "exposure=30")
    assert field("result") == "ended" and field("flag").startswith("good by rule")

    def rows(table):
        return browser.execute_script(f"return [...document.querySelectorAll('#{table} tbody tr')]"
                                      ".map(r => [...r.cells].map(c => c.textContent))")
    assert rows("run-settings-changed") == [["cam", "volts", "60", "70"]]
    values = record["values"]["t"]
    assert rows("run-values") == [["t", "cam.values.t", "K", *(f"{values[k]:.6g} K" for k in ("begin", "end", "min",
                                                                                               "mean", "max")),
                                   str(values["count"])]]
    assert ["cam", "resyncs", "2"] in rows("run-readers") and ["cam", "lost_packets", "0"] in rows("run-readers")
    assert ["cam", "volts", "70", "was 60"] in rows("run-settings")
    (held,) = record["files"]
    assert rows("run-files") == [["cam", held["path"], f"{held['size'] / 1024:.0f}K", "3", held["sha256"]]]

    points = wait_until(lambda: browser.execute_script(
        "return state.runPlots.length && document.querySelector('#run-plots .uplot canvas') ?"
        " state.runPlots[0].data[0].length : 0"), 20, 0.2, what="the plot of t over the run")
    assert points >= 3 and browser.execute_script("return state.runPlots[0].data[1].every(v => v === null || "
                                                  "(v >= 120 && v <= 130))")   # t's means, as published
    fetched = browser.execute_async_script(
        "const done = arguments[0]; fetch(document.querySelector('#run-files a.run-file').href)"
        ".then(r => r.arrayBuffer()).then(b => { let s = ''; for (const x of new Uint8Array(b)) "
        "s += String.fromCharCode(x); done(btoa(s)); })")
    data = base64.b64decode(fetched)
    with open(held["path"], "rb") as on_disk:
        assert data == on_disk.read() and hashlib.sha256(data).hexdigest() == held["sha256"]
    status, _, headers = download(site.url + f"/api/catalog/{second}/files/0")
    assert status == 200 and headers["Content-Disposition"] == f"attachment; filename*=UTF-8''run_{second:06d}.bin"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web-run.png"))


@pytest.mark.timeout(900)
def test_an_operator_flags_a_run_from_its_page_and_the_catalog_says_so(bench, browser):
    site, first = bench.site, bench.runs[0]
    logged_in(browser, site, f"#run/{first}")
    wait_until(lambda: text_of(browser, "#run-title") == f"Run {first}: warm-up at 60 V", 20, 0.2, what="the run")
    wait_until(lambda: browser.execute_script("return !document.getElementById('run-flag-form').hidden"), 20, 0.2,
               what="the flag form for an operator")
    from selenium.webdriver.support.ui import Select
    Select(browser.find_element("css selector", "#run-flag")).select_by_value("bad")
    browser.find_element("css selector", "#run-flag-why").send_keys("bias was off for 5 minutes")
    click(browser, "#run-flag-set", "the flag button")
    flag = wait_until(lambda: (f := site.get(f"/api/run/record?number={first}")[1]["flag"])["value"] == "bad" and f,
                      20, 0.2, what="the flag in the catalog")
    assert (flag["by"], flag["why"]) == ("anna", "bias was off for 5 minutes")
    wait_until(lambda: (text_of(browser, '#run-summary tr[data-field="flag"] td') or "").startswith("bad by anna"),
               20, 0.2, what="the flag on the page")
    history = browser.execute_script("return [...document.querySelectorAll('#run-flag-history tbody tr')]"
                                     ".map(r => [r.cells[0].textContent, r.cells[1].textContent])")
    assert history[-2:] == [["good", "rule"], ["bad", "anna"]]
    status, found, _ = site.get("/api/catalog?q=flag%3Dbad")
    assert status == 200 and {r["run"] for r in found["runs"]} == {first, bench.runs[2]}


@pytest.mark.timeout(900)
def test_an_operator_writes_a_note_with_attachments_finds_it_and_edits_it_on_the_logbook_page(bench, browser):
    site, (first, second, _) = bench.site, bench.runs
    picture, blob = bench.folder / "ccd.png", bench.folder / "dump.bin"
    picture.write_bytes(png(40, 30))
    blob.write_bytes(random.randbytes(70_000))
    text = ("Bias **scan** done on both runs <img src=x onerror=window.injected=1>"
            "<script>window.injected=2</script> zebrafinch\n\n- first point\n- second point")
    logged_in(browser, site, "#logbook")
    wait_until(lambda: browser.execute_script("return !document.getElementById('note-form').hidden"), 20, 0.2,
               what="the note form for an operator")
    browser.find_element("css selector", "#note-text").send_keys(text)
    browser.find_element("css selector", "#note-runs").send_keys(f"{first}, {second}")
    browser.find_element("css selector", "#note-files").send_keys(f"{picture}\n{blob}")
    click(browser, "#note-write", "the write button")
    entry = wait_until(lambda: browser.execute_script(
        "const a = [...document.querySelectorAll('#logbook-entries article.entry-note')]"
        ".find(a => a.textContent.includes('zebrafinch')); return a && +a.dataset.entry"), 20, 0.2,
        what="the note on the page")

    with Operator(experiment=str(bench.path)) as op:
        held = op.logbook.entry(entry)
        assert (held["text"], held["runs"], held["by"], held["version"]) == (text, [first, second], "anna", 1)
        assert [(a["name"], a["size"], a["type"]) for a in held["attachments"]] == [
            ("ccd.png", picture.stat().st_size, "image/png"), ("dump.bin", 70_000, "application/octet-stream")]
        for attached, path in zip(held["attachments"], (picture, blob)):
            assert op.logbook.attachment(attached["sha256"])["data"] == path.read_bytes()

    article = f'#logbook-entries article[data-entry="{entry}"]'
    wait_until(lambda: browser.execute_script(
        f"const i = document.querySelector('{article} figure img'); return i && i.complete && i.naturalWidth"),
        20, 0.2, what="the picture shown in the note") == 40
    assert browser.execute_script(f"return document.querySelector('{article} a[download]').textContent") \
        == "dump.bin (68K)"
    assert browser.execute_script(
        f"const a = document.querySelector('{article}'); return [window.injected === undefined,"
        " a.querySelectorAll('script, [onerror]').length, a.querySelector('strong').textContent,"
        " a.querySelectorAll('li').length]") == [True, 0, "scan", 2]
    assert "<img src=x onerror=window.injected=1><script>window.injected=2</script>" in text_of(browser, article)

    browser.find_element("css selector", "#logbook-search").send_keys("zebrafinch")
    click(browser, "#logbook-search-form button[type=submit]", "the search button")
    wait_until(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#logbook-entries article')].map(a => +a.dataset.entry)") == [entry],
        20, 0.2, what="the search finding the note alone")
    assert "**zebrafinch**" not in text_of(browser, article) and "zebrafinch" in text_of(browser, f"{article} .snippet")

    click(browser, f"{article} button.edit", "the edit button")
    edit = wait_until(lambda: browser.find_elements("css selector", f"{article} textarea.edit-text"), 20, 0.2)[0]
    edit.clear()
    edit.send_keys("Bias scan done, zebrafinch checked twice")
    click(browser, f"{article} button.save", "the save button")
    wait_until(lambda: "version 2 by anna" in (text_of(browser, f"{article} .entry-version") or ""), 20, 0.2,
               what="the new version on the page")
    assert "checked twice" in text_of(browser, f"{article} .entry-text")
    click(browser, f"{article} details.versions summary", "the older versions")
    wait_until(lambda: "first point" in (text_of(browser, f'{article} .version[data-version="1"]') or ""), 20, 0.2,
               what="version 1 shown under the new one")
    with Operator(experiment=str(bench.path)) as op:
        held = op.logbook.entry(entry)
        assert held["version"] == 2 and [(v["version"], v["text"]) for v in held["versions"]] == [(1, text)]

    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web-logbook.png"))
    browser.get(f"{site.url}/#run/{second}")   # the note among the run's entries, with the run's own
    wait_until(lambda: sorted(browser.execute_script(
        "return [...document.querySelectorAll('#run-entries article')].map(a => a.className + ' ' + a.dataset.entry)"))
        == sorted([f"entry entry-note {entry}", f"entry entry-run {run_entry(bench, second)}"]), 30, 0.2,
        what="the run's entry and the note on its page")


def run_entry(bench, run):
    """The number of run `run`'s own entry in the logbook, once there is one."""
    def made():
        entries = bench.site.get(f"/api/logbook?run={run}&limit=100")[1]["entries"]
        return next((e["entry"] for e in entries if e["kind"] == "run"), None)
    return wait_until(made, 30, 0.2, what=f"run {run}'s entry in the logbook")


# --- over plain HTTP ----------------------------------------------------------------------------------


def test_a_bad_query_a_file_no_record_serves_and_an_upload_over_the_logbooks_limit_get_a_json_4xx(bench):
    site, cookie, (first, second, third) = bench.site, bench.cookie, bench.runs
    status, answer, _ = site.get("/api/catalog?q=nosuch.key%3D3")
    assert (status, answer["code"]) == (400, "bad_field") and "nosuch.key" in answer["error"], answer
    status, answer, _ = site.get("/api/catalog.csv?q=comment~%22open")
    assert (status, answer["code"]) == (400, "bad_request") and "quote" in answer["error"], answer

    status, data, _ = download(site.url + f"/api/catalog/{third}/files/0")
    assert status == 200 and len(data) == 150_000 + third
    for path, said in ((f"/api/catalog/{third}/files/1", "is not under the experiment's data folder"),
                       (f"/api/catalog/{first}/files/1", "names 1 file(s): there is no file 1"),
                       ("/api/catalog/999/files/0", "999"), ("/api/catalog/x/files/0", "not a whole number")):
        status, answer, _ = site.get(path)
        assert status == 404 and said in answer["error"], (path, answer)

    big = random.randbytes(ATTACHMENT_MAX)   # the most the logbook holds: the web program takes it
    status, made, _ = post_form(site, "/api/logbook/notes", {"text": "the largest attachment", "runs": str(first)},
                                [("attachments", "big.bin", big)], cookie)
    assert status == 200 and made["attachments"][0]["size"] == ATTACHMENT_MAX, made
    with Operator(experiment=str(bench.path)) as op:
        assert op.logbook.attachment(made["attachments"][0]["sha256"])["data"] == big
    status, answer, _ = post_form(site, "/api/logbook/notes", {"text": "one byte too many"},
                                  [("attachments", "big.bin", big + b"!")], cookie)
    assert (status, answer["code"]) == (400, "bad_field"), answer
    assert answer["error"] == f"'attachments[0]' (big.bin) is {ATTACHMENT_MAX + 1:,} bytes: an attachment holds at " \
                              f"most {ATTACHMENT_MAX:,}"   # the logbook's own words
    status, answer, _ = post_form(site, "/api/logbook/notes", {"text": "far too large"},
                                  [("attachments", "huge.bin", bytes(2 << 20))], cookie)
    assert (status, answer["code"]) == (413, "request_entity_too_large") and "logbook" in answer["error"], answer
    status, answer, _ = site.post("/api/run/begin_run", {"comment": "x" * (100 << 10)}, cookie=cookie)
    assert status == 413, answer   # the larger body is the note's route's alone

    for cookie_given, headers, expected in ((None, {}, (401, "not_logged_in")),
                                            (cookie, {"Origin": "http://elsewhere.example"}, (403, "foreign_origin"))):
        status, answer, _ = post_form(site, "/api/logbook/notes", {"text": "x"}, [], cookie_given, **headers)
        assert (status, answer["code"]) == expected, answer
    status, answer, _ = site.post("/api/logbook/notes", {"text": "as JSON"}, cookie=cookie)
    assert (status, answer["code"]) == (415, "not_multipart"), answer
    status, answer, _ = site.get('/api/logbook/search?text=%22unclosed')
    assert (status, answer["code"]) == (400, "bad_field") and "not a search the logbook can read" in answer["error"]
    assert site.get("/api/logbook/attachments/nothex")[0] == 404
    status, answer, _ = site.get(f"/api/logbook/attachments/{'0' * 64}")
    assert (status, answer["code"]) == (400, "bad_field"), answer
