"""The run catalog through the real run controller: records written as runs end, values from a real historian,
flags by rules and by people, queries, and no record lost to a SIGKILL of the run controller."""

import csv
import hashlib
import io
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from astropy.io import fits

from runcontrol.control.operator import Operator
from runcontrol.errors import Refused
from tests.helpers import ROOT, damicm_copy, env_for_children, helper, wait_until

CATALOG = {"values": [{"value": "op.values.t", "name": "t", "units": "K"}],
           "rules": [{"flag": "bad", "when": ["result!=ended"], "why": "did not end as planned"},
                     {"flag": "good", "when": ["t.max<100", "t.count>0"], "why": "cold"}]}
HISTORIAN = {"cmd": ["python", "-m", "clients.historian", "--name", "historian"], "client": "historian",
             "cwd": str(ROOT)}


def participant(name, record):
    return helper("participant.py", name, record, client=name, participant=True)


def send(path, *words):
    return subprocess.run([sys.executable, "send.py", "--experiment", str(path), *words], cwd=ROOT,
                          env=env_for_children(), capture_output=True, text=True, timeout=60)


def complete_record(s, run):
    """The run's record once nothing is pending (the operator client answering its heartbeats meanwhile)."""
    def complete():
        s.op.poll(0.05)
        record = s.op.request("run", "record", number=run)
        return record if not record["pending"] else None
    return wait_until(complete, 30, 0.2, what=f"run {run}'s record complete")


def publish_t(s, *values):
    """Publish op.values.t, each value a moment apart, until the historian holds the last one (published again
    while the historian holds nothing of it: its subscription may not have reached the server yet)."""
    def publish():
        for value in values:
            s.op.publish("values", {"t": value})
            s.op.poll(0.05)
        return time.monotonic()
    published = publish()

    def held():
        s.op.poll(0.05)
        summary = s.op.request("historian", "summary", names=["op.values.t"], since=0)["values"].get("op.values.t")
        if not (summary or {}).get("count"):
            nonlocal published
            if time.monotonic() - published > 1.0:
                published = publish()
            return False
        return summary["end"] == values[-1]
    wait_until(held, 20, 0.1, what="the historian to hold the values")


def test_a_run_has_its_record_with_who_values_from_the_history_and_a_flag_by_rule(system, tmp_path):
    s = system({"pa": participant("pa", tmp_path / "a"), "historian": HISTORIAN}, catalog=CATALOG)
    s.wait_state("pa", "RUNNING", registered=True)
    s.wait_state("historian", "RUNNING", registered=True)
    publish_t(s, 50.0)
    run = s.op.request("run", "prepare_run")["run"]
    s.op.request("run", "begin_run", comment="first light", params={"exposure": 2}, by="alice")
    publish_t(s, 10.0, 30.0, 20.0)
    s.op.request("run", "end_run", by="bob")
    publish_t(s, 70.0)   # after the end: not the run's
    record = complete_record(s, run)
    assert record["run"] == run and record["result"] == "ended" and record["why"] is None
    assert record["end"] - record["start"] == pytest.approx(record["duration"], abs=0.01)
    assert (record["comment"], record["params"]) == ("first light", {"exposure": 2})
    assert record["began_by"] == {"client": "op", "operator": "alice", "sequence": None}
    assert record["ended_by"] == {"client": "op", "operator": "bob", "sequence": None, "alarm": None, "signal": None}
    assert record["participants"] == ["pa"] and record["problems"] == {}
    t = record["values"]["t"]
    assert (t["id"], t["units"], t["begin"], t["end"], t["min"], t["max"], t["count"]) == \
        ("op.values.t", "K", 50.0, 20.0, 10.0, 50.0, 4)   # the value in force as the run began is one of its own
    assert t["mean"] == pytest.approx(27.5)
    assert record["flag"]["value"] == "good" and record["flag"]["by"] == "rule" and record["flag"]["why"] == "cold"
    aborted = s.op.request("run", "prepare_run")["run"]
    s.op.request("run", "begin_run")
    s.op.request("run", "abort_run")
    second = complete_record(s, aborted)
    assert second["result"] == "aborted" and second["values"]["t"]["count"] == 1   # 70, in force all along
    assert second["flag"]["value"] == "bad" and second["flag"]["why"] == "did not end as planned"

    flagged = s.op.request("run", "flag", number=aborted, flag="good", why="aborted on purpose", by="carol")
    assert flagged["flag"]["value"] == "good" and flagged["flag"]["by"] == "carol"
    assert [f["value"] for f in flagged["flag_history"]][-2:] == ["bad", "good"]
    assert s.op.request("run", "record", number=aborted)["flag"]["by"] == "carol"

    found = s.op.request("run", "find", where=["t.max<60"], flag="good")
    assert [r["run"] for r in found["runs"]] == [run] and found["total"] == 1   # the aborted one's t was 70
    assert {r["run"] for r in s.op.request("run", "find", flag="good")["runs"]} == {run, aborted}
    assert [r["run"] for r in s.op.request("run", "find", where=["comment~light"])["runs"]] == [run]
    table = send(s.path, "--csv", "run", "find", "flag=good", "t.max<60")
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [int(r["run"]) for r in rows] == [run] and float(rows[0]["t.max"]) == 50.0


def test_bad_queries_flags_and_run_numbers_are_refused_with_what_and_where(system, tmp_path):
    s = system({"pa": participant("pa", tmp_path / "a")}, catalog=CATALOG)
    s.wait_state("pa", "RUNNING", registered=True)
    run = s.op.request("run", "prepare_run")["run"]
    s.op.request("run", "begin_run")
    s.op.request("run", "end_run")
    for payload, words in (({"where": ["nosuch.thing=3"]}, "nosuch.thing"),
                           ({"where": ["flag"]}, "'flag'"),
                           ({"where": ["run<abc"]}, "abc"),
                           ({"limit": 0}, "'limit'")):
        with pytest.raises(Refused) as refused:
            s.op.request("run", "find", **payload)
        assert refused.value.code == "bad_field" and words in str(refused.value), (payload, str(refused.value))
    with pytest.raises(Refused) as refused:
        s.op.request("run", "flag", number=run, flag="maybe")
    assert refused.value.code == "bad_field" and "good" in str(refused.value)
    with pytest.raises(Refused) as refused:
        s.op.request("run", "record", number=run + 100)
    assert refused.value.code == "no_such_run" and f"run {run + 100} is not in the catalog" in str(refused.value)
    with pytest.raises(Refused) as refused:
        s.op.request("run", "flag", number=run, flag="bad", why="x" * 501)
    assert refused.value.code == "bad_field" and "'why'" in str(refused.value)
    answer = send(s.path, "run", "find", "temperature.max<140")
    assert answer.returncode == 1 and "temperature.max" in answer.stderr
    assert s.op.request("run", "record", number=run)["flag"]["value"] == "unknown"   # no values: no rule holds


def test_a_run_whose_prepare_failed_has_its_record_too(system, tmp_path):
    s = system({"grumpy": helper("participant.py", "grumpy", tmp_path / "g", "--refuse", "prepare", client="grumpy",
                                 participant=True)}, catalog=CATALOG)
    s.wait_state("grumpy", "RUNNING", registered=True)
    with pytest.raises(Refused):
        s.op.request("run", "prepare_run")
    failed = s.op.request("run", "runs", n=1)[-1]
    record = s.op.request("run", "record", number=failed["run"])
    assert (record["result"], record["start"], record["pending"]) == ("failed", None, [])
    assert "grumpy refused" in record["why"] and record["problems"] == {"grumpy": "refused: grumpy will not prepare"}
    assert record["flag"]["value"] == "bad" and record["values"]["t"]["count"] == 0


def test_no_ended_run_loses_its_record_to_sigkills_of_the_run_controller(system, tmp_path):
    s = system({"pa": participant("pa", tmp_path / "a"), "pb": participant("pb", tmp_path / "b")})
    seed = time.time_ns() % 2 ** 32
    rng = random.Random(seed)
    print(f"seed of the kills: {seed}")
    for _ in range(5):
        s.wait_state("pa", "RUNNING", registered=True)
        s.wait_state("pb", "RUNNING", registered=True)
        state = s.op.request("run", "status")["state"]
        if state == "STOP":
            s.op.request("run", "prepare_run")
            state = "READY"
        if state == "READY":
            s.op.request("run", "begin_run", comment="under fire")
        s.op.send("run", "end_run")   # no wait: the kill may come before, during or after the end
        time.sleep(rng.uniform(0.0, 0.05))
        s.replace_controller()
    ended = [r for r in s.op.request("run", "runs", n=100) if r["result"] != "running"]
    assert len(ended) >= 1
    for entry in ended:
        record = s.op.request("run", "record", number=entry["run"])
        assert (record["result"], record["start"], record["end"]) == (entry["result"], entry["start"], entry["end"])
        assert record["participants"] == ["pa", "pb"] and record["comment"] == "under fire"
    assert s.op.request("run", "find", where=[f"run<={ended[-1]['run']}"])["total"] == len(ended)
    print(json.dumps([(r["run"], r["result"]) for r in ended]))

    def lose_the_catalog():   # as if killed after the run log and before the catalog, for every run
        for part in ("", "-wal", "-shm"):
            (s.path.parent / "state" / f"catalog.sqlite{part}").unlink(missing_ok=True)
    s.replace_controller(meanwhile=lose_the_catalog)
    assert [r["run"] for r in s.op.request("run", "find", limit=1000)["runs"]] == [r["run"] for r in reversed(ended)]

    last = ended[-1]
    again = {**last, "end": last["end"] + 5, "duration": last["duration"] + 5, "logged": last["logged"] + 5}

    def ended_again():   # a resumed run ended a second time, and its controller died before the catalog heard
        with open(s.path.parent / "state" / "runs.jsonl", "a") as log:
            log.write(json.dumps(again) + "\n")
    s.replace_controller(meanwhile=ended_again)
    assert s.op.request("run", "record", number=last["run"])["end"] == again["end"]


def start_damicm(path):
    return subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT, env=env_for_children(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_damicm(op):
    """Up, the cryostat cold and pumped down, the alarms of the start acknowledged."""
    def ready():
        values = {k: v["data"] for k, v in op.retained("").items() if k.endswith(".values")}
        cold = values.get("cryo.values", {}).get("temperature", 999) < 141
        pumped = values.get("vacuum.values", {}).get("pressure", 1) < 1e-4
        clients = {c["name"] for c in op.clients()}
        if cold and pumped and {"sequencer", "historian", "lta1", "lta2"} <= clients:
            op.ack(by="test")
            return not op.alarms()
        return False
    wait_until(ready, 120, 0.5, what="damicm up, cold and pumped down")


def images_in(path):
    with fits.open(path) as hdus:
        return len(hdus) - 1


def assert_files_read_back(record, reader_names):
    assert {f["program"] for f in record["files"]} == set(reader_names), record["files"]
    for f in record["files"]:
        data = Path(f["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest(), images_in(f["path"])) == \
            (f["size"], f["sha256"], f["images"]), f
    for name in reader_names:
        counters = record["readers"][name]
        assert counters["acquisitions"] == sum(f["images"] for f in record["files"] if f["program"] == name)
        assert {"lost_packets", "resyncs", "duplicate_packets", "files"} <= counters.keys()


def test_damicm_records_runs_ended_by_a_sequence_an_alarm_and_ctrl_c(tmp_path):
    path = damicm_copy(tmp_path, holds={"vacuum_high": 1})
    (tmp_path / "sequences" / "one_dark.json").write_text(json.dumps(
        {"name": "one_dark", "steps": [{"run": {"comment": "a dark for the catalog", "params": {"dark": True},
                                                "seconds": 3}}]}))
    proc = start_damicm(path)
    try:
        with Operator(experiment=str(path)) as op:
            wait_damicm(op)
            op.sequences.queue("one_dark", by="night")
            op.sequences.start()
            wait_until(lambda: op.sequences.status()["finished"], 60, 0.5, what="the sequence to end")
            by_sequence = op.runs(1)[-1]["run"]

            op.set_config("bias", volts=60, by="anna")
            op.prepare_run()
            by_alarm = op.begin_run(comment="bias at 60 V", by="anna")["run"]
            wait_until(lambda: op.request("lta1", "status")["run"]["acquisitions"] > 1, 30, 0.2, what="images")
            op.set_config("cryo", rate=19, by="anna")
            op.request("vacuum", "vent")
            wait_until(lambda: op.status()["state"] == "STOP", 30, 0.2, what="the alarm to end the run")
            op.request("vacuum", "pump")
            wait_damicm(op)

            op.prepare_run()
            by_ctrl_c = op.begin_run(comment="until Ctrl-C")["run"]
            wait_until(lambda: op.request("lta2", "status")["run"]["acquisitions"] > 1, 30, 0.2, what="images")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
        proc = start_damicm(path)
        with Operator(experiment=str(path)) as op:
            def complete(run):
                return wait_until(lambda: (r := op.record(run)) and not r["pending"] and r, 60, 0.5,
                                  what=f"run {run} complete")
            first, second, third = complete(by_sequence), complete(by_alarm), complete(by_ctrl_c)
            good = send(path, "--csv", "run", "find", "flag=good", "temperature.max<145")

            def entry_of(run):   # the logbook's entry of the run, once it shows the complete record
                entries = op.logbook.entries(run=run)["entries"]
                return next((e for e in entries if e["kind"] == "run" and not e.get("pending")), None)
            entries = [wait_until(lambda r=r: entry_of(r), 60, 0.5, what=f"run {r}'s logbook entry")
                       for r in (by_sequence, by_alarm, by_ctrl_c)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(90)

    assert first["result"] == "ended" and first["comment"] == "a dark for the catalog"
    assert first["began_by"]["operator"] == "sequencer" and first["began_by"]["sequence"]["sequence"] == "one_dark"
    assert first["ended_by"]["client"] == "sequencer" and first["ended_by"]["sequence"]["sequence"] == "one_dark"
    assert first["params"]["dark"] is True and first["flag"]["value"] == "good" and first["flag"]["by"] == "rule"

    assert second["result"] == "ended by alarm" and second["ended_by"]["alarm"] == "vacuum_high"
    assert second["began_by"]["operator"] == "anna" and "vacuum_high" in second["why"]
    assert second["settings"]["bias"]["volts"] == 60 and second["settings_changed"]["bias"]["volts"] == [70, 60]
    assert "vacuum_high" in [a["name"] for a in second["alarms"]]
    assert [(a["by"], a["what"]) for a in second["actions"]][:1] == [("anna", "set_config")]
    assert "cryo rate" in second["actions"][0]["detail"]
    assert second["flag"]["value"] == "bad"

    assert third["result"] == "ended by shutdown" and third["ended_by"]["signal"] == "SIGINT, Ctrl-C"
    assert third["settings_changed"] == {"cryo": {"rate": [20, 19]}} or "cryo" in third["settings_changed"]
    for record in (first, second, third):
        assert record["participants"] == ["lta1", "lta2"] and record["end"] > record["start"]
        assert set(record["settings"]) >= {"bias", "cryo", "lta1", "lta2"}
        temperature = record["values"]["temperature"]
        assert temperature["units"] == "K" and temperature["count"] > 0
        assert temperature["min"] <= temperature["mean"] <= temperature["max"] < 145
        assert record["values"]["bias_output"]["units"] == "V"
        assert_files_read_back(record, ["lta1", "lta2"])
    assert all("vacuum_high" in e["text"] for e in entries[1:2]) and "SIGINT" in entries[2]["text"]
    assert good.returncode == 0, good.stderr
    assert [int(r["run"]) for r in csv.DictReader(io.StringIO(good.stdout))] == [by_sequence]
