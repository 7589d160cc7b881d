"""The logbook as operators use it: a real logbook program and server (and a run controller, a historian and a cryo
for runs' entries); notes written through the operator API, send.py and the live view (in tmux), read back and
searched; the logbook SIGKILLed while notes are in flight. A run's record made readable is checked on the renderer
alone (clients/elog/render.py)."""

import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys

import pytest

from clients.elog.render import render
from clients.logbook import ATTACHMENT_MAX, TEXT_MAX
from runcontrol.client.client import Client
from runcontrol.control.operator import Operator
from runcontrol.errors import Refused, RequestFailed
from tests.helpers import ROOT, env_for_children, stop_process, wait_until
from tests.test_cli import run_tool
from tests.test_view import tmux  # noqa: F401  (a fixture)


class LogbookProcess:
    """`python -m clients.logbook` for an experiment file, its book in `state`; its output in `log`."""

    def __init__(self, path, state, log):
        self.path, self.state, self.log = path, state, log
        self.proc = None

    def start(self):
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "clients.logbook", "--experiment", str(self.path),
                                          "--state", str(self.state)], cwd=ROOT, env=env_for_children(),
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            assert stop_process(self.proc) == 0, self.log.read_text()[-2000:]


@pytest.fixture
def logbook(server, tmp_path):
    """A logbook program on the test's server, and an operator that waits for it to answer."""
    program = LogbookProcess(server.path, tmp_path / "logbook", tmp_path / "logbook.log").start()
    op = Operator(experiment=str(server.path))
    answers(op)
    yield program, op
    op.close()
    program.stop()


def answers(op):
    """Wait until the logbook answers (started, or started again)."""
    def ready():
        try:
            return op.logbook.entries(limit=1)
        except RequestFailed:
            return None
    return wait_until(ready, 30, 0.1, what="the logbook to answer")


def refusal(call):
    with pytest.raises(Refused) as refused:
        call()
    return refused.value


def test_notes_with_attachments_read_back_byte_for_byte_and_an_edit_keeps_every_version(logbook, tmp_path):
    program, op = logbook
    plot, biggest, log = tmp_path / "plot.png", tmp_path / "big.bin", tmp_path / "cryo.log"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + random.randbytes(20000))
    biggest.write_bytes(random.randbytes(ATTACHMENT_MAX))                   # exactly the most one may hold
    log.write_text("10:00 compressor trip\n10:05 restarted\n")
    note = op.logbook.note("CCDs **warm** after the compressor trip", run=12, files=[plot, biggest], by="anna")
    assert (note["kind"], note["version"], note["runs"], note["by"], note["author"]) == ("note", 1, [12], "anna",
                                                                                          "anna")
    assert [(a["name"], a["size"], a["type"]) for a in note["attachments"]] == [
        ("plot.png", plot.stat().st_size, "image/png"), ("big.bin", ATTACHMENT_MAX, "application/octet-stream")]
    for attached, path in zip(note["attachments"], (plot, biggest)):
        back = op.logbook.attachment(attached["sha256"])
        assert back["data"] == path.read_bytes() and attached["sha256"] == hashlib.sha256(back["data"]).hexdigest()
        stored = tmp_path / "logbook" / "attachments" / attached["sha256"]
        assert stored.read_bytes() == path.read_bytes()

    sent = run_tool("send.py", "--experiment", str(program.path), "logbook", "note", "text=the same plot, again",
                    "runs=[12, 13]", f"attachments=@@{plot}", f"attachments=@@{log}", "by=bob")
    assert sent.returncode == 0, sent.stderr
    again = json.loads(sent.stdout)
    assert again["runs"] == [12, 13] and again["by"] == "bob"
    assert [(a["name"], a["type"]) for a in again["attachments"]] == [("plot.png", "image/png"),
                                                                       ("cryo.log", "text/plain")]
    assert again["attachments"][0]["sha256"] == note["attachments"][0]["sha256"]
    assert len(os.listdir(tmp_path / "logbook" / "attachments")) == 3     # the plot is stored once
    assert op.logbook.attachment(again["attachments"][1]["sha256"])["data"] == log.read_bytes()

    edited = op.logbook.edit(note["entry"], "CCDs warm after the compressor trip: back at 140 K by 11:00",
                             files=[log], by="bob")
    assert (edited["entry"], edited["version"], edited["by"], edited["author"]) == (note["entry"], 2, "bob", "anna")
    assert [a["name"] for a in edited["attachments"]] == ["plot.png", "big.bin", "cryo.log"]
    shown = op.logbook.entry(note["entry"])
    assert shown["text"].endswith("back at 140 K by 11:00") and shown["version"] == 2
    assert [(v["version"], v["text"], v["by"], len(v["attachments"])) for v in shown["versions"]] == [
        (1, "CCDs **warm** after the compressor trip", "anna", 2)]
    assert op.logbook.entry(note["entry"], version=1)["text"] == "CCDs **warm** after the compressor trip"
    assert [e["entry"] for e in op.logbook.entries(run=12)["entries"]] == [again["entry"], note["entry"]]


def test_entries_come_newest_first_a_page_at_a_time_and_search_finds_words_phrases_and_prefixes(logbook):
    _, op = logbook
    texts = ["cryocooler warming up for the pump service", "bias scan at 60 V: leakage current high",
             "vacuum gauge replaced", "bias back at 70 V after the scan", "overnight darks look clean"]
    made = [op.logbook.note(text, run=run)["entry"] for run, text in enumerate(texts, start=1)]
    listed = op.logbook.entries(limit=2)
    assert [e["entry"] for e in listed["entries"]] == made[::-1][:2] and listed["total"] == 5 and listed["more"]
    last = op.logbook.entries(limit=2, offset=4)
    assert [e["entry"] for e in last["entries"]] == [made[0]] and not last["more"]
    assert [e["entry"] for e in op.logbook.entries(run=3)["entries"]] == [made[2]]

    def found(text):
        return [e["entry"] for e in op.logbook.search(text)["entries"]]
    assert found("bias") == [made[3], made[1]]                         # newest first
    assert found('"leakage current"') == [made[1]]
    assert found("warm*") == [made[0]] and found("warms") == [made[0]]  # a prefix, and the word's stem
    assert found("bias NOT scan") == []
    assert found("vacuum OR darks") == [made[4], made[2]]
    hit = op.logbook.search("leakage")["entries"][0]
    assert "**leakage**" in hit["snippet"] and hit["runs"] == [2]
    op.logbook.edit(made[2], "vacuum gauge replaced by the ion pump's")
    assert found("ion") == [made[2]] and found("gauge") == [made[2]]   # the latest version is what is searched
    for bad in ('"unclosed', "bias-scan", "AND", "x:y"):
        refused = refusal(lambda: op.logbook.search(bad))
        assert refused.code == "bad_field" and str(refused).startswith(f"'text': {bad!r} is not a search"), bad


def test_bad_input_is_refused_naming_its_field_and_harms_nothing(logbook, tmp_path):
    _, op = logbook
    kept = op.logbook.note("a note before the bad ones", files=[], by="anna")
    attachments = tmp_path / "logbook" / "attachments"
    before = sorted(os.listdir(attachments))
    ok = base64.b64encode(b"fine").decode()
    over = base64.b64encode(bytes(ATTACHMENT_MAX + 1)).decode()
    cases = [
        ("note", {"text": "x" * (TEXT_MAX + 1)}, "'text' is 65,537 bytes"),
        ("note", {"text": "   "}, "'text' must be"),
        ("note", {"text": 42}, "'text' must be"),
        ("note", {}, "'note' needs the field 'text'"),
        ("note", {"text": "x", "run": "12"}, "'run': '12' is not a run number"),
        ("note", {"text": "x", "run": 1.5}, "'run': 1.5 is not a run number"),
        ("note", {"text": "x", "runs": [3, True]}, "'runs[1]': True is not a run number"),
        ("note", {"text": "x", "run": 3, "runs": [4]}, "not both"),
        ("note", {"text": "x", "attachments": [{"name": "big.bin", "base64": over}]}, "'attachments[0]' (big.bin) is"),
        ("note", {"text": "x", "attachments": [{"name": "a", "base64": ok}, {"name": "p.png", "base64": "Zm9v!!"}]},
         "'attachments[1].base64' (p.png) is not base64"),
        ("note", {"text": "x", "attachments": [{"name": "a/b", "base64": ok}]}, "'attachments[0].name' must be"),
        ("note", {"text": "x", "attachments": [{"name": f"{i}", "base64": ok} for i in range(9)]},
         "'attachments' must be a list of at most 8"),
        ("note", {"text": "x", "attachments": [{"name": f"{i}", "base64": base64.b64encode(
            bytes(256_000)).decode()} for i in range(3)]}, "'attachments': 768,000 bytes up to attachments[2]"),
        ("note", {"text": "x", "by": "x" * 65}, "'by' must be a name of 1 to 64 characters"),
        ("edit", {"entry": 999, "text": "x", "attachments": [{"name": "a", "base64": ok}]},
         "'entry': no entry 999 in the logbook"),
        ("edit", {"entry": "1", "text": "x"}, "'entry': '1' must be a whole number"),
        ("entry", {"entry": kept["entry"], "version": 5}, f"'version': entry {kept['entry']} has no version 5"),
        ("entries", {"limit": 0}, "'limit': 0 must be a whole number from 1 to 100"),
        ("entries", {"run": -1}, "'run': -1 must be a whole number >= 0"),
        ("search", {"text": ""}, "'text' must be what to search for"),
        ("attachment", {"sha256": "abc"}, "'sha256' must be an attachment's hash"),
        ("attachment", {"sha256": "0" * 64}, f"'sha256': no attachment {'0' * 64}"),
    ]
    for cmd, fields, says in cases:
        refused = refusal(lambda: op.call({"to": "logbook", "cmd": cmd, **fields}))
        assert refused.code == "bad_field" and says in str(refused), (cmd, str(refused)[:300])
    assert op.logbook.entries()["total"] == 1 and sorted(os.listdir(attachments)) == before
    assert op.logbook.entry(kept["entry"])["version"] == 1


def test_a_sigkilled_logbook_keeps_every_note_it_acknowledged(logbook, tmp_path):
    program, op = logbook
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    acknowledged, unacknowledged = {}, []   # token -> its attachment's bytes; tokens of notes not answered ok
    for kill in range(4):
        in_flight = {}
        for i in range(60):
            token = f"k{kill}n{i}x{rng.randrange(1 << 30)}"
            data = rng.randbytes(rng.choice((0, 100, 40000, 200000)))
            files = [{"name": f"{token}.bin", "base64": base64.b64encode(data).decode()}] if data else []
            in_flight[token] = (op.client.start({"to": "logbook", "cmd": "note", "text": f"note {token}",
                                                 "attachments": files}), data)

        def answered():
            return sum(pending.answer is not None for pending, _ in in_flight.values())
        target = rng.randrange(1, 30)   # the kill comes at a moment that moves from round to round
        wait_until(lambda: op.client.poll(0.001) * 0 or answered() >= target, 30, 0, what=f"{target} notes answered")
        program.kill()
        wait_until(lambda: op.client.poll(0.05) * 0 or answered() == len(in_flight), 30, 0,
                   what="every note answered or failed")
        acknowledged.update({token: data for token, (pending, data) in in_flight.items() if pending.answer.ok})
        unacknowledged += [token for token, (pending, _) in in_flight.items() if not pending.answer.ok]
        program.start()
        answers(op)
    assert len(acknowledged) >= 4 and unacknowledged, (len(acknowledged), len(unacknowledged))
    for token, data in acknowledged.items():
        hits = op.logbook.search(f'"{token}"')["entries"]
        assert [h["text"] for h in hits] == [f"note {token}"], token   # there, once
        if data:
            assert op.logbook.attachment(hits[0]["attachments"][0]["sha256"])["data"] == data
    for token in unacknowledged:   # written or not, never twice
        assert len(op.logbook.search(f'"{token}"')["entries"]) <= 1, token


def test_a_request_sent_again_makes_no_second_note(logbook):
    program, op = logbook
    with Client("again", experiment=str(program.path)) as raw:
        raw.connect(10)
        msg = {"to": "logbook", "cmd": "note", "text": "sent twice", "id": "same-id"}
        first = raw.call(msg, 10)
        program.kill()          # its memory of answers is gone with it; the book's is not
        program.start()
        answers(op)
        assert raw.call(msg, 30) == first
    assert op.logbook.entries()["total"] == 1


@pytest.fixture
def runs(system, tmp_path):
    """A run controller with a cryo, a historian and the logbook, and the run catalog's value of the cryo."""
    s = system({"cryo": {"cmd": ["python", "-m", "clients.sim.cryo", "--name", "cryo", "--start", "150", "--rate",
                                 "50"], "client": "cryo"},
                "historian": {"cmd": ["python", "-m", "clients.historian", "--name", "historian"],
                              "client": "historian"},
                "logbook": {"cmd": ["python", "-m", "clients.logbook", "--name", "logbook", "--state",
                                    str(tmp_path / "logbook")], "client": "logbook"}},
               catalog={"values": [{"value": "cryo.values.temperature", "units": "K"}]})
    for name in ("cryo", "historian", "logbook"):
        s.wait_state(name, "RUNNING", registered=True)
    return s


def take_run(op, comment):
    op.prepare_run()
    number = op.begin_run(comment=comment, seconds=1)["run"]
    op.end_run()
    return number


def run_entry(op, number, predicate=lambda entry: True, timeout_s=120):
    def check():
        found = [e for e in op.logbook.entries(run=number)["entries"] if e["kind"] == "run"]
        return found and predicate(found[0]) and op.logbook.entry(found[0]["entry"])
    return wait_until(check, timeout_s, 0.5, what=f"run {number}'s entry")


def test_each_run_gets_an_entry_of_its_record_made_again_when_completed_flagged_or_missed(runs):
    with Operator(experiment=str(runs.path)) as op:
        op.stop("historian")                      # the run's values wait for the history
        first = take_run(op, "dark current")
        entry = run_entry(op, first)
        assert entry["text"].startswith(f"# Run {first}: dark current\n") and entry["pending"] == ["values"]
        assert "**ended**" in entry["text"] and "*Not complete yet: values" in entry["text"]
        assert entry["author"] == "run" and entry["runs"] == [first]
        refused = refusal(lambda: op.logbook.edit(entry["entry"], "a run's entry is its record's"))
        assert refused.code == "bad_state" and "write a note on the run instead" in str(refused)
        note = op.logbook.note("the first dark of the night", run=first, by="anna")
        assert {e["entry"] for e in op.logbook.entries(run=first)["entries"]} == {entry["entry"], note["entry"]}

        op.start("historian")                     # the catalog completes the record: a new version
        done = run_entry(op, first, lambda e: not e["pending"], timeout_s=180)
        assert done["version"] == 2 and "Not complete" not in done["text"] and "cryo.values.temperature" in done["text"]
        assert done["versions"][0]["text"] == entry["text"]

        op.flag(first, "bad", why="bias off during the run", by="anna")   # a flag: another version
        flagged = run_entry(op, first, lambda e: e["version"] == 3)
        assert "flag: **bad** (anna, " in flagged["text"] and "bias off during the run" in flagged["text"]
        assert [v["version"] for v in flagged["versions"]] == [2, 1]

        op.stop("logbook")                        # a run while the logbook is away gets its entry at its start
        missed = take_run(op, "while the logbook was away")
        op.start("logbook")
        later = run_entry(op, missed)
        assert later["text"].startswith(f"# Run {missed}: while the logbook was away")
        assert [e["entry"] for e in op.logbook.search('"logbook was away"')["entries"]] == [later["entry"]]
        assert len([e for e in op.logbook.entries(limit=100)["entries"] if e["kind"] == "run"]) == 2
    runs.wait_event("event.logbook_entry", entry=later["entry"], entry_kind="run")


@pytest.mark.timeout(900)   # tmux may wait for apt-get, one installation at a time
def test_the_live_view_writes_a_note_with_its_key(tmux, logbook, server):  # noqa: F811  (tmux is a fixture)
    _, op = logbook
    command = (f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} status.py --experiment {server.path}; "
               "echo EXIT=$?; sleep 30")
    assert tmux("new-session", "-d", "-s", "note", "-x", "100", "-y", "30", command).returncode == 0

    def screen():
        return tmux("capture-pane", "-p", "-t", "note").stdout
    wait_until(lambda: "n: write a note" in screen(), 30, 0.3, what="the live view with its key")
    tmux("send-keys", "-t", "note", "n")
    wait_until(lambda: "\nnote:" in screen(), 20, 0.2, what="the question for the note")
    tmux("send-keys", "-t", "note", "-l", "pump *restarted* by hand")
    tmux("send-keys", "-t", "note", "Enter")
    wait_until(lambda: "run (Enter: none" in screen(), 20, 0.2, what="the question for the run")
    tmux("send-keys", "-t", "note", "-l", "7")
    tmux("send-keys", "-t", "note", "Enter")
    wait_until(lambda: "by (Enter:" in screen(), 20, 0.2, what="the question for the author")
    tmux("send-keys", "-t", "note", "-l", "anna")
    tmux("send-keys", "-t", "note", "Enter")
    wait_until(lambda: "note 1 written to the logbook on run 7" in screen(), 30, 0.3, what="the view to say so")
    written = op.logbook.entry(1)
    assert (written["text"], written["runs"], written["by"]) == ("pump *restarted* by hand", [7], "anna")
    tmux("send-keys", "-t", "note", "C-c")
    wait_until(lambda: "EXIT=0" in screen(), 20, 0.3, what="status.py to leave with status 0")


RECORD = {
    "run": 12, "start": 1764930000.123, "end": 1764930600.5, "duration": 600.377, "result": "ended by alarm",
    "why": "alarm ccd_warm: CCD temperature more than 5 K above its set point", "comment": "dark current",
    "params": {"seconds": 600},
    "began_by": {"client": "web", "operator": "alice",
                 "sequence": {"id": "q1-3", "sequence": "darks", "step": 2, "loop": {"seconds": 600}}},
    "ended_by": {"client": "run", "operator": None, "alarm": "ccd_warm", "sequence": None, "signal": None},
    "participants": ["lta1", "lta2"], "problems": {"lta2": "refused: board 2 not ready"},
    "settings": {"bias": {"volts": 60, "ramp_rate": 10}, "lta1": {"rows": 64, "cols": 256}},
    "settings_changed": {"bias": {"volts": [70, 60]}},
    "values": {"temperature": {"id": "cryo.values.temperature", "units": "K", "begin": 140.1, "end": 140.0,
                               "min": 139.8, "mean": 140.02, "max": 140.3, "count": 600},
               "pressure": {"id": "vacuum.values.pressure", "units": "mbar", "begin": None, "end": None, "min": None,
                            "mean": None, "max": None, "count": 0}},
    "alarms": [{"name": "ccd_warm", "severity": "alarm", "raised": 1764930100.0, "cleared": None,
                "message": "CCD | warm"}],
    "actions": [{"ts": 1764930150.0, "by": "alice", "what": "set_config", "detail": "bias volts 70 -> 60"}],
    "files": [{"program": "lta1", "path": "/data/lta1/run_000012/file_0001.fits", "size": 123456,
               "sha256": "ab" * 32, "images": 10}],
    "readers": {"lta1": {"files": 1, "acquisitions": 10, "bytes": 655360, "resyncs": 0, "lost_packets": 3}},
    "flag": {"value": "good", "by": "anna", "at": 1764931000.0, "why": "checked the images"},
    "pending": ["values"], "recorded": 1764930601.2}


def test_a_record_is_rendered_with_every_part_and_a_broken_one_never_fails():
    text = render(RECORD)
    for part in ("# Run 12: dark current\n", "**ended by alarm**: alarm ccd_warm: CCD temperature more than 5 K",
                 "- time: 2025-12-05 10:20:00 to 10:30:00 UTC (10 min)",
                 "- began by: alice (web), sequence darks step 2 loop {\"seconds\": 600}",
                 "- ended by: the alarm ccd_warm",
                 "- flag: **good** (anna, 2025-12-05 10:36:40 UTC, checked the images)",
                 "- params: seconds=600", "- participants: lta1, lta2", "- problems: lta2: refused: board 2 not ready",
                 "| bias | volts | 70 | 60 |",
                 "| temperature | cryo.values.temperature | K | 140.1 | 140 | 139.8 | 140.02 | 140.3 | 600 |",
                 "| pressure | vacuum.values.pressure | mbar |  |  |  |  |  | 0 |",
                 "| ccd_warm | alarm | 2025-12-05 10:21:40 | still raised at the end | CCD \\| warm |",
                 "| 2025-12-05 10:22:30 | alice | set_config | bias volts 70 -> 60 |",
                 f"| lta1 | `/data/lta1/run_000012/file_0001.fits` | 120.6 KiB | 10 | `{'ab' * 32}` |",
                 "| lta1 | 1 | 10 | 655360 | 0 | 3 |", "| bias | volts=60, ramp_rate=10 |",
                 "*Not complete yet: values"):
        assert part in text, part
    shutdown = render({**RECORD, "ended_by": {"client": "run", "signal": "SIGINT (Ctrl-C)"}, "pending": []})
    assert "- ended by: a shutdown (SIGINT (Ctrl-C))" in shutdown and "Not complete" not in shutdown
    many = render({**RECORD, "files": [{"path": f"/f{i}", "size": 1} for i in range(150)]})
    assert "## Files (150, 150 B)" in many and "... and 50 more" in many
    for broken in (None, {}, {"run": "x", "start": "soon", "alarms": "none", "files": [1, None], "values": [],
                              "flag": "good", "began_by": "someone", "readers": {"lta1": 5}}):
        assert render(broken).startswith("# Run ")
