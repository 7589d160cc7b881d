"""The history store alone: numbers found inside published objects, downsampling, tiers, retention, gaps, a value
written once, the mark of a complete history, the first file format."""

from clients.historystore import FINE_POINTS_LIMIT, MINUTE, Store
from runcontrol.protocol import published_numbers as numbers


def test_every_number_inside_a_published_object_has_a_name():
    found = numbers("cryo.values", {"temperature": 140.2, "ok": True, "pumps": [1, 2.5], "nested": {"p": 3},
                                    "text": "x", "nan": float("nan")}, [])
    assert found == [("cryo.values.temperature", 140.2), ("cryo.values.pumps.0", 1.0), ("cryo.values.pumps.1", 2.5),
                     ("cryo.values.nested.p", 3.0)]


def test_downsampling_keeps_the_extremes_and_a_gap_stays_a_gap(tmp_path):
    store = Store(tmp_path / "h.sqlite")
    for second in range(1000):
        if 400 <= second < 600:
            continue  # a gap
        store.add("cryo.values.temperature", 1000.0 + second, 140.0 + (10.0 if second == 123 else 0.0))
    store.add("vacuum.values.pressure", 1000.0, 1e-6)
    assert store.flush() == 801
    answer = store.query(["cryo."], 1000.0, 2000.0, 10)
    assert list(answer) == ["cryo.values.temperature"]
    buckets = answer["cryo.values.temperature"]
    assert len(buckets) == 8  # two buckets of the ten held nothing: no point drawn there
    assert max(b[2] for b in buckets) == 150.0 and min(b[1] for b in buckets) == 140.0
    store.close()


def test_a_range_of_more_fine_values_than_the_store_reads_is_answered_from_minute_buckets(tmp_path):
    store = Store(tmp_path / "h.sqlite")
    start = 1000 * MINUTE
    for second in range(FINE_POINTS_LIMIT + 1):
        store.add("x", start + second, float(second))
    store.flush()
    few = store.query(["x"], start, start + 900, 10)["x"]   # buckets of 90 s, from the fine values
    assert few[0][1:] == [0.0, 89.0, 44.5]
    many = store.query(["x"], start, start + 90 * 2223, 2223)["x"]   # 90 s too, over every value
    assert many[0][1:] == [0.0, 119.0, 59.5]   # the minutes starting in the first 90 s, whole


DAY = 86400.0


def test_a_range_whose_fine_values_expired_is_answered_from_the_minute_tier_ten_times_longer(tmp_path):
    store = Store(tmp_path / "h.sqlite", retention_days=1)
    for second in range(3600):
        store.add("x", DAY * 10 + second, float(second % 60))
    for second in range(-300, 300):   # across the fine tier's horizon after the expiry below (day 11)
        store.add("y", DAY * 11 + second, float(second))
    store.add("x", DAY * 11.5, 100.0)
    store.flush()
    store.expire(now=DAY * 12)   # fine values before day 11 are gone
    hourly = store.query(["x"], DAY * 10, DAY * 10 + 3600, 6)["x"]
    assert [b[1:] for b in hourly] == [[0.0, 59.0, 29.5]] * 6
    assert len(store.query(["x"], DAY * 10, DAY * 10 + 3600, 3600)["x"]) == 60   # no finer than a minute
    both = store.query(["x"], DAY * 10, DAY * 12, 2)["x"]
    assert [b[1:] for b in both] == [[0.0, 59.0, 29.5], [100.0, 100.0, 100.0]]   # minutes, then fine
    straddled = store.query(["y"], DAY * 11 - 300, DAY * 11 + 300, 4)["y"]   # buckets of 150 s
    # A minute lands whole in the bucket it starts in; the minute at the horizon comes from the minute tier and
    # the rest of its bucket from the fine one: every value counted once.
    assert [b[1:] for b in straddled] == [[-300.0, -121.0, -210.5], [-120.0, -1.0, -60.5], [0.0, 149.0, 74.5],
                                          [150.0, 299.0, 224.5]]
    store.expire(now=DAY * 21)   # the minute tier is kept ten times the retention
    assert store.query(["x"], DAY * 10, DAY * 10 + 3600, 6)["x"] == []
    store.close()


def test_a_value_added_again_is_written_once(tmp_path):
    store = Store(tmp_path / "h.sqlite")
    for second in range(10):
        store.add("x", 1000.0 + second, float(second))
    assert store.flush() == 10
    for second in (*range(5, 15), 12):   # again, as from the server's replay, and twice in one batch
        store.add("x", 1000.0 + second, float(second))
    assert store.flush() == 5
    store.close()
    store = Store(tmp_path / "h.sqlite")
    store.add("x", 1003.0, 3.0)
    assert store.flush() == 0
    assert store.db.execute("SELECT count(*) FROM fine").fetchone() == (15,)
    assert store.db.execute("SELECT sum(count), sum(total) FROM minutes").fetchone() == (15, 105.0)
    store.close()


def test_the_mark_of_a_complete_history_is_kept_and_never_goes_back(tmp_path):
    store = Store(tmp_path / "h.sqlite")
    assert store.complete_until() is None
    store.add("x", 1000.0, 1.0)
    store.flush(complete_until=1000.5)
    store.flush(complete_until=900.0)
    store.close()
    assert Store(tmp_path / "h.sqlite").complete_until() == 1000.5


def test_a_history_of_the_first_format_gets_one_value_per_time_and_counts_as_complete_to_its_newest(tmp_path):
    import sqlite3
    old = sqlite3.connect(tmp_path / "h.sqlite")
    old.executescript("""
        CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
        CREATE TABLE fine (id INTEGER NOT NULL, ts REAL NOT NULL, value REAL NOT NULL);
        CREATE INDEX fine_by_time ON fine (id, ts);
        CREATE TABLE minutes (id INTEGER NOT NULL, minute INTEGER NOT NULL, low REAL NOT NULL,
            high REAL NOT NULL, total REAL NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (id, minute));
        INSERT INTO names VALUES (1, 'x');
        INSERT INTO fine VALUES (1, 1000.0, 1.0), (1, 1000.0, 1.0), (1, 1001.0, 2.0);
    """)
    old.close()
    store = Store(tmp_path / "h.sqlite")
    assert store.db.execute("SELECT ts FROM fine ORDER BY ts").fetchall() == [(1000.0,), (1001.0,)]
    assert store.complete_until() == 1001.0
    store.add("x", 1001.0, 2.0)
    assert store.flush() == 0
    store.close()
