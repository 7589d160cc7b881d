"""The history store alone: numbers found inside published objects, downsampling, tiers, retention, gaps."""

from clients.historystore import Store
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


def test_long_ranges_come_from_the_minute_tier_and_retention_deletes_what_is_old(tmp_path, monkeypatch):
    import clients.historystore as module
    monkeypatch.setattr(module, "FINE_POINTS_LIMIT", 100)
    store = Store(tmp_path / "h.sqlite", retention_days=1)
    for second in range(0, 3600):
        store.add("x", 86400.0 * 10 + second, float(second % 60))
    store.flush()
    hourly = store.query(["x"], 86400.0 * 10, 86400.0 * 10 + 3600, 6)["x"]
    assert len(hourly) == 6 and all(b[1] == 0.0 and b[2] == 59.0 for b in hourly)
    assert abs(hourly[0][3] - 29.5) < 1e-9
    store.expire(now=86400.0 * 12)
    assert store.query(["x"], 0, 86400.0 * 20, 10)["x"] == []  # the fine tier is gone
    store.close()
