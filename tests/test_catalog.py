"""The run catalog's parts alone: the query words, a record's facts, and the book over a real SQLite file (its
filters, flags, pending records, bad input, a damaged file, and no record lost at a SIGKILL)."""

import random
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from runcontrol.control import catalogquery
from runcontrol.control.catalogbook import MAX_RECORD_BYTES, CatalogBook, CatalogError, NoSuchRun
from runcontrol.control.catalogquery import Filter, QueryError, facts, matches, parse
from tests.helpers import ROOT, wait_until

DAY = 86400.0
START = 1796083200.0   # 2026-12-01T00:00Z


def make_record(run, volts=60, tmax=140.3, comment="dark current", flag="unknown", alarms=(), pending=(),
                operator="alice", **extra):
    start = START + run * 3600.0
    return {
        "run": run, "start": start, "end": start + 600.0, "duration": 600.0, "result": "ended", "why": None,
        "comment": comment, "params": {"seconds": 600},
        "began_by": {"client": "web", "operator": operator,
                     "sequence": {"id": "s1", "sequence": "darks", "step": run % 5, "loop": 0}},
        "ended_by": {"client": "run", "operator": None, "alarm": None, "sequence": None, "signal": None},
        "participants": ["lta1"], "problems": {},
        "settings": {"bias": {"volts": volts, "ramp_rate": 10}, "lta1": {"rows": 64, "mode": "fast"}},
        "settings_changed": {},
        "values": {"temperature": {"id": "cryo.values.temperature", "units": "K", "begin": 140.1, "end": 140.0,
                                   "min": 139.8, "mean": 140.02, "max": tmax, "count": 600}},
        "alarms": [{"name": name, "severity": "alarm", "raised": start + 10, "cleared": None, "message": "m"}
                   for name in alarms],
        "actions": [],
        "files": [{"program": "lta1", "path": f"/data/run_{run:06d}/f.fits", "size": 10, "sha256": "ab", "images": 1}],
        "readers": {"lta1": {"files": 1, "lost_packets": run % 3}},
        "flag": {"value": flag, "by": None, "at": None, "why": None},
        "pending": list(pending), "recorded": start + 601.0, **extra}


@pytest.fixture
def book(tmp_path):
    with CatalogBook(tmp_path / "catalog.sqlite") as opened:
        yield opened


def runs_of(book, query, **paging):
    rows, total = book.find(query, **paging)
    return [row["run"] for row in rows], total


# --- the query words ---------------------------------------------------------------------------------------

def test_parse_words_give_each_operator_with_numbers_as_numbers():
    assert parse(["flag=good", "bias.volts=60", "temperature.max<140", "run>=10", "duration<=6e2", "step>1",
                  "x.mode!=fast", "comment~dark", "x.y=-0.5"]) == [
        Filter("flag", "=", "good", "good"), Filter("bias.volts", "=", 60, "60"),
        Filter("temperature.max", "<", 140, "140"), Filter("run", ">=", 10, "10"),
        Filter("duration", "<=", 600.0, "6e2"), Filter("step", ">", 1, "1"), Filter("x.mode", "!=", "fast", "fast"),
        Filter("comment", "~", "dark", "dark"), Filter("x.y", "=", -0.5, "-0.5")]


def test_parse_times_are_epoch_seconds_or_iso_dates_in_utc():
    assert [f.value for f in parse(["start>=2026-12-01", "start<2026-12-01T10:00", "end>1796083200",
                                    "end<2026-12-01T10:00+01:00"])] == [START, START + 36000, 1796083200,
                                                                         START + 32400]


def test_parse_a_dict_or_a_string_gives_the_same_filters_as_words():
    words = parse(["flag=good", "bias.volts=60", "lta1.on=true", "comment~dark current"])
    assert parse({"flag": "good", "bias.volts": 60, "lta1.on": True}) == words[:3]
    assert parse("flag=good bias.volts=60 lta1.on=true 'comment~dark current'") == words
    assert parse({}) == [] and parse([]) == []


@pytest.mark.parametrize("query, named, why", [
    (["flag"], "flag", "no operator"),
    (["flag!good"], "flag!good", "'!' alone"),
    (["=good"], "=good", "no key"),
    (["flag="], "flag=", "no value"),
    (["colour=red"], "colour", "unknown key"),
    (["run=ten"], "run=ten", "needs a number"),
    (["bias.volts<high"], "bias.volts<high", "needs a number"),
    (["run~1"], "run~1", "searches text"),
    (["start>=yesterday"], "yesterday", "not a time"),
    (["comment~..."], "comment~...", "no word"),
    (["a b=1"], "a b", "not a key"),
    (["comment~" + "x" * 2000], "comment~xxx", "at most 1000"),
    ([3], "3", "not int"),
    (["flag=good"] * 51, "51 filters", "at most 50"),
    ({"bias.volts": [60]}, "bias.volts", "not list"),
    ({"bias.volts": float("nan")}, "bias.volts", "not a finite number"),
    (42, "not int", "a list of words"),
    ("comment~'dark", "comment~'dark", "quotation"),
])
def test_parse_bad_words_raise_naming_the_word_and_why(query, named, why):
    with pytest.raises(QueryError) as raised:
        parse(query)
    assert named in str(raised.value) and why in str(raised.value)


# --- a record's facts ---------------------------------------------------------------------------------------

def test_facts_give_one_key_per_queryable_field():
    record = make_record(12, alarms=("cryo.temperature_high", "vacuum.high", "cryo.temperature_high"),
                         why="alarm cryo.temperature_high: over", flag="good")
    record["flag"]["by"] = "bob"
    record["settings"]["lta1"].update(on=True, channels=[1, 2], limits={"rows": {"max": 128}})
    record["params"] = {"seconds": 600, "nested": {"a": "b"}}
    found = facts(record)
    assert found == {
        "run": 12, "start": START + 12 * 3600, "end": START + 12 * 3600 + 600, "duration": 600.0, "result": "ended",
        "why": "alarm cryo.temperature_high: over", "comment": "dark current", "flag": "good", "flag.by": "bob",
        "began_by": "alice", "ended_by": "run", "sequence": "darks", "step": 2, "files": 1, "alarms": 3,
        "alarm": ["cryo.temperature_high", "vacuum.high"],
        "params.seconds": 600, "params.nested.a": "b",
        "bias.volts": 60, "bias.ramp_rate": 10, "lta1.rows": 64, "lta1.mode": "fast", "lta1.on": "true",
        "lta1.channels": "[1,2]", "lta1.limits.rows.max": 128,
        "temperature.begin": 140.1, "temperature.end": 140.0, "temperature.min": 139.8, "temperature.mean": 140.02,
        "temperature.max": 140.3, "temperature.count": 600,
        "lta1.files": 1, "lta1.lost_packets": 0}


def test_facts_of_who_ended_a_run_prefer_the_operator_then_the_alarm_then_the_client():
    def ended(**by):
        return facts({"run": 1, "ended_by": {"client": "run", "operator": None, "alarm": None, **by},
                      "began_by": {"client": "web", "operator": None}})
    assert ended(operator="bob", alarm="a.b")["ended_by"] == "bob"
    assert ended(alarm="a.b")["ended_by"] == "a.b"
    assert ended()["ended_by"] == "run" and ended()["began_by"] == "web"


def test_facts_leave_out_what_is_null_missing_or_of_the_wrong_shape():
    record = {"run": 3, "start": None, "why": None, "comment": "", "values": {"pressure": {
        "begin": None, "end": None, "min": None, "mean": float("nan"), "max": None, "count": 0}},
        "settings": ["not", "an", "object"], "readers": {"lta1": {"lost_packets": "many", "files": 2}},
        "alarms": None, "files": None}
    assert facts(record) == {"run": 3, "pressure.count": 0, "lta1.files": 2}


def test_facts_of_the_record_itself_are_never_taken_from_a_program_named_like_them():
    record = make_record(1, flag="bad")
    record["settings"]["flag"] = {"by": "a setting", "x": 1}
    assert "flag.by" not in facts(record) and facts(record)["flag.x"] == 1
    record["flag"]["by"] = "carol"
    assert facts(record)["flag.by"] == "carol"


# --- the book: finding ------------------------------------------------------------------------------------

def test_find_combines_filters_with_and_newest_first(book):
    book.put_many([make_record(1, volts=60, tmax=139.0, flag="good"), make_record(2, volts=70, tmax=139.0, flag="good"),
                   make_record(3, volts=60, tmax=141.0, flag="good"), make_record(4, volts=60, tmax=139.5, flag="good"),
                   make_record(5, volts=60, tmax=139.5, flag="bad")])
    assert runs_of(book, ["flag=good", "bias.volts=60", "temperature.max<140"]) == ([4, 1], 2)
    assert runs_of(book, []) == ([5, 4, 3, 2, 1], 5)
    rows, _ = book.find(["run=4"])
    assert rows == [facts(make_record(4, volts=60, tmax=139.5, flag="good"))]


def test_find_pages_with_limit_and_offset_and_counts_every_match(book):
    book.put_many([make_record(n) for n in range(1, 26)])
    assert runs_of(book, ["bias.volts=60"], limit=10) == (list(range(25, 15, -1)), 25)
    assert runs_of(book, ["bias.volts=60"], limit=10, offset=20) == ([5, 4, 3, 2, 1], 25)
    assert runs_of(book, ["bias.volts=60"], limit=10, offset=30) == ([], 25)


def test_find_ranges_of_numbers_and_of_times(book):
    book.put_many([make_record(n) for n in range(1, 50)])
    assert runs_of(book, ["run>=10", "run<13"])[0] == [12, 11, 10]
    day_two = [n for n in range(1, 50) if START + DAY <= START + n * 3600 < START + 2 * DAY]
    assert runs_of(book, ["start>=2026-12-02", "start<2026-12-03"])[0] == sorted(day_two, reverse=True)
    assert runs_of(book, ["lta1.lost_packets>1", "run<=6"])[0] == [5, 2]


def test_find_comment_words_in_any_order_as_word_beginnings_ignoring_case(book):
    book.put_many([make_record(1, comment="Dark current after warm-up"), make_record(2, comment="overnight darks"),
                   make_record(3, comment="bias scan"), make_record(4, comment="current dark", why="alarm cryo.x")])
    assert runs_of(book, ["comment~dark"])[0] == [4, 2, 1]
    assert runs_of(book, ["comment~current dark"])[0] == [4, 1]
    assert runs_of(book, ["comment~warm"])[0] == [1]
    assert runs_of(book, ["comment~ark"])[0] == []   # words, not any substring
    assert runs_of(book, ["why~cryo"])[0] == [4]


def test_find_text_contains_elsewhere_and_alarm_is_one_of_the_runs_alarms(book):
    book.put_many([make_record(1, alarms=("cryo.temperature_high", "vacuum.high")), make_record(2, alarms=("x.y",)),
                   make_record(3, operator="Bob"), make_record(4, comment="50%_done")])
    assert runs_of(book, ["alarm=vacuum.high"])[0] == [1]
    assert runs_of(book, ["alarm~temperature"])[0] == [1]
    assert runs_of(book, ["began_by~bo"])[0] == [3]
    assert runs_of(book, ["lta1.mode~AS"])[0] == [4, 3, 2, 1]
    assert runs_of(book, ["alarms>=1"])[0] == [2, 1]


def test_find_not_equal_includes_runs_without_the_key(book):
    book.put_many([make_record(1, alarms=("a.b",)), make_record(2), make_record(3, volts=70)])
    assert runs_of(book, ["alarm!=a.b"])[0] == [3, 2]
    assert runs_of(book, ["bias.volts!=60"])[0] == [3]
    assert runs_of(book, ["why!=x", "run!=2"])[0] == [3, 1]


def test_find_a_number_also_matches_a_setting_kept_as_text(book):
    text = make_record(1)
    text["settings"]["bias"]["volts"] = "60"
    book.put_many([text, make_record(2), make_record(3, volts=60.0), make_record(4, volts=61)])
    assert runs_of(book, ["bias.volts=60"])[0] == [3, 2, 1]
    assert runs_of(book, ["bias.volts>59"])[0] == [4, 3, 2]   # an ordering compares numbers only


def test_find_an_unknown_key_raises_naming_it_and_the_families(book):
    book.put(make_record(1))
    with pytest.raises(QueryError) as raised:
        book.find(["bias.volt=60"])
    message = str(raised.value)
    assert "'bias.volt'" in message and "did you mean bias.volts" in message
    assert "programs: bias, lta1" in message and "values: temperature" in message and "flag.by" in message
    assert runs_of(book, ["why=x"]) == ([], 0)   # a key of the record itself is known before any run has it


@pytest.mark.parametrize("paging", [{"limit": 0}, {"limit": 10001}, {"limit": "5"}, {"limit": True},
                                    {"offset": -1}, {"offset": 1.5}])
def test_find_bad_limit_or_offset_raises(book, paging):
    with pytest.raises(QueryError, match="limit|offset"):
        book.find([], **paging)


def test_the_catalogs_answers_are_the_records_that_match_in_python(book):
    rng = random.Random(29)
    records = []
    for run in range(1, 301):
        record = make_record(run, volts=rng.choice((50, 60, "60", 70)), tmax=round(rng.uniform(139, 141), 2),
                             comment=rng.choice(("dark current", "Darks overnight", "bias scan", "LED calib")),
                             flag=rng.choice(("good", "bad", "unknown")), operator=rng.choice((None, "alice", "bob")),
                             alarms=rng.sample(("a.one", "a.two", "b.three"), rng.randint(0, 2)),
                             pending=rng.choice(((), ("values",))))
        record["params"] = {"seconds": rng.choice((60, 600))} if rng.random() < 0.8 else {}
        records.append(record)
    book.put_many(records)
    for query in (["flag=good", "bias.volts=60", "temperature.max<140"], ["bias.volts!=60"], ["comment~dark"],
                  ["comment~scan bias"], ["alarm=a.one", "alarm!=a.two"], ["alarm~a."], ["began_by=web"],
                  ["params.seconds>=600"], ["params.seconds!=60"], ["temperature.max>=140.5", "temperature.max<=140.7"],
                  ["start>=2026-12-05", "start<2026-12-06T12:00", "flag!=unknown"], ["lta1.lost_packets=2"],
                  ["run>100", "run<=200", "bias.volts=50"], ["bias.volts>55"], []):
        filters = parse(query)
        expected = sorted((r["run"] for r in records if matches(filters, facts(r))), reverse=True)
        assert runs_of(book, query, limit=1000) == (expected, len(expected)), query


# --- the book: writing, flags, pending ----------------------------------------------------------------------

def test_put_replaces_a_runs_record_and_its_facts(book):
    book.put(make_record(7, volts=60, comment="dark current", alarms=("a.b",)))
    book.put(make_record(7, volts=70, comment="bias scan"))
    assert runs_of(book, ["bias.volts=60"]) == ([], 0) and runs_of(book, ["bias.volts=70"]) == ([7], 1)
    assert runs_of(book, ["comment~dark"]) == ([], 0) and runs_of(book, ["alarm=a.b"]) == ([], 0)
    assert book.get(7) == {**make_record(7, volts=70, comment="bias scan"), "flag_history": []}
    assert book.get(8) is None


def test_flag_keeps_every_flag_and_a_later_put_does_not_undo_it(book):
    book.put(make_record(3))
    book.flag(3, "good", "alice", "looked fine", 100.0)
    flagged = book.flag(3, "bad", "bob", None, 200.0)
    assert flagged["flag"] == {"value": "bad", "by": "bob", "at": 200.0, "why": None}
    assert flagged["flag_history"] == [{"value": "good", "by": "alice", "at": 100.0, "why": "looked fine"},
                                       {"value": "bad", "by": "bob", "at": 200.0, "why": None}]
    book.put(make_record(3, comment="completed later"))   # its flag says unknown, by nobody
    assert book.get(3)["flag"]["value"] == "bad" and book.get(3)["comment"] == "completed later"
    assert runs_of(book, ["flag=bad", "flag.by=bob"]) == ([3], 1) and runs_of(book, ["flag=unknown"]) == ([], 0)


@pytest.mark.parametrize("args, error, words", [
    ((3, "great", "alice", None, 1.0), QueryError, "good, bad, unknown"),
    ((3, "good", "", None, 1.0), QueryError, "'by'"),
    ((3, "good", "x" * 101, None, 1.0), QueryError, "'by'"),
    ((3, "good", "alice", "w" * 2001, 1.0), QueryError, "'why'"),
    ((3, "good", "alice", None, "noon"), QueryError, "'at'"),
    (("3", "good", "alice", None, 1.0), QueryError, "run '3'"),
    ((4, "good", "alice", None, 1.0), NoSuchRun, "run 4 is not in the catalog (last: 3)"),
])
def test_flag_outside_the_list_or_of_an_unknown_run_raises_and_changes_nothing(book, args, error, words):
    book.put(make_record(3))
    with pytest.raises(error) as raised:
        book.flag(*args)
    assert words in str(raised.value)
    assert book.get(3)["flag_history"] == [] and book.get(3)["flag"]["value"] == "unknown"


def test_pending_lists_runs_with_parts_to_come_and_last_is_the_highest(book):
    assert book.last() is None and book.pending() == [] and book.numbers() == set()
    book.put_many([make_record(5, pending=("values",)), make_record(2), make_record(9, pending=("values", "files"))])
    assert book.pending() == [5, 9] and book.last() == 9 and book.numbers() == {2, 5, 9}
    book.put(make_record(5))
    assert book.pending() == [9]


def test_a_long_comment_is_kept_whole_and_searched_whole(book):
    comment = "dark " + "x" * 100000 + " needle"
    book.put(make_record(1, comment=comment))
    assert book.get(1)["comment"] == comment
    assert runs_of(book, ["comment~needle"]) == ([1], 1)
    assert len(facts(book.get(1))["comment"]) == catalogquery.MAX_TEXT


@pytest.mark.parametrize("change, words", [
    ({"run": "12"}, "'run'"), ({"run": 0}, "'run'"), ({"run": True}, "'run'"),
    ({"settings": ["bias"]}, "'settings' is a list"), ({"start": "noon"}, "'start' is a str"),
    ({"pending": "values"}, "'pending' is a str"), ({"flag": {"value": "great"}}, "flag 'great'"),
    ({"params": {"when": object()}}, "not JSON"), ({"comment": "x" * (MAX_RECORD_BYTES + 1)}, "bytes"),
])
def test_put_of_a_bad_record_raises_and_harms_nothing(book, change, words):
    book.put(make_record(1))
    with pytest.raises(ValueError) as raised:
        book.put({**make_record(1, volts=70), **change})
    assert words in str(raised.value)
    with pytest.raises(ValueError):
        book.put_many([make_record(2), {**make_record(3), **change}])
    assert book.numbers() == {1} and runs_of(book, ["bias.volts=60"]) == ([1], 1)
    with pytest.raises(ValueError, match="an object"):
        book.put(["run", 1])


# --- the book: its file -------------------------------------------------------------------------------------

def test_a_damaged_file_raises_naming_it_and_what_to_do(tmp_path):
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"this is no database at all, only some text " * 100)
    with pytest.raises(CatalogError) as raised:
        CatalogBook(path)
    assert str(path) in str(raised.value) and "Move it away" in str(raised.value)


def test_a_file_of_another_program_or_a_newer_orbit_is_refused(tmp_path):
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE samples (x)")
    other.close()
    with pytest.raises(CatalogError, match="not a run catalog.*samples"):
        CatalogBook(tmp_path / "other.sqlite")
    CatalogBook(tmp_path / "newer.sqlite").close()
    newer = sqlite3.connect(tmp_path / "newer.sqlite")
    newer.execute("PRAGMA user_version = 99")
    newer.close()
    with pytest.raises(CatalogError, match="version 99.*newer Orbit"):
        CatalogBook(tmp_path / "newer.sqlite")


def test_an_unwritable_place_raises_naming_the_file(tmp_path):
    (tmp_path / "taken").write_text("a file where the folder should be")
    with pytest.raises(CatalogError) as raised:
        CatalogBook(tmp_path / "taken" / "catalog.sqlite")
    assert "taken/catalog.sqlite" in str(raised.value)


def test_a_reopened_catalog_has_its_records_keys_and_flags(tmp_path):
    with CatalogBook(tmp_path / "c.sqlite") as book:
        book.put(make_record(1))
        book.flag(1, "bad", "carol", "noisy", 5.0)
    with CatalogBook(tmp_path / "c.sqlite") as book:
        assert book.get(1)["flag_history"] == [{"value": "bad", "by": "carol", "at": 5.0, "why": "noisy"}]
        assert runs_of(book, ["lta1.mode=fast", "flag=bad"]) == ([1], 1)
        assert book.known_keys()["settings"] == ["bias.ramp_rate", "bias.volts", "lta1.mode", "lta1.rows"]


WRITER = """
import sys
from runcontrol.control.catalogbook import CatalogBook
from tests.test_catalog import make_record
book = CatalogBook(sys.argv[1])
for run in range(1, 100000):
    book.put(make_record(run, comment="run %d" % run))
    print(run, flush=True)
"""


def test_no_record_a_put_returned_for_is_lost_at_a_sigkill(tmp_path):
    path = tmp_path / "catalog.sqlite"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    printed = []
    reader = threading.Thread(target=lambda: printed.extend(int(line) for line in child.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(printed) >= 40, timeout_s=30, what="40 records put")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    reader.join(10)
    assert child.returncode == -signal.SIGKILL and len(printed) >= 40
    with CatalogBook(path) as book:
        held = book.numbers()
        assert set(printed) <= held
        assert max(held) - max(printed) <= 1   # at most the put under way when the kill came
        for run in printed:
            assert book.get(run)["comment"] == f"run {run}"
        assert runs_of(book, [f"comment~{max(printed)}"])[0] == [max(printed)]
