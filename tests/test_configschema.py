"""Settings schemas alone: defaults, live settings, settings a new version dropped, problems with their paths."""

from runcontrol import configschema

SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "gain": {"type": "integer", "minimum": 1, "default": 2},
    "threshold": {"type": "number", "live": True},
    "window": {"type": "object", "properties": {"start": {"type": "number"}}}}}


def test_defaults_live_and_known():
    assert configschema.defaults(SCHEMA) == {"gain": 2}
    assert configschema.live(SCHEMA) == {"threshold"}
    assert configschema.known({"gain": 3, "old_setting": 1}, SCHEMA) == {"gain": 3}


def test_problems_name_each_path():
    found = configschema.problems({"gain": 0, "window": {"start": "soon"}, "extra": 1}, SCHEMA, "programs.amp.config")
    assert found == ["programs.amp.config: Additional properties are not allowed ('extra' was unexpected)",
                     "programs.amp.config.gain: 0 is less than the minimum of 1",
                     "programs.amp.config.window.start: 'soon' is not of type 'number'"]
    assert configschema.problems({"gain": 1}, SCHEMA) == []
    assert configschema.problems({"gain": "x" * 70000}, SCHEMA)[0].endswith(f"larger than {configschema.MAX_BYTES} bytes")


def test_what_is_not_a_settings_schema():
    assert configschema.schema_problems(SCHEMA) == []
    assert "not list" in configschema.schema_problems([1])[0]
    assert configschema.schema_problems({"type": "object", "properties": {"x": {"type": "nonsense"}}})[0].startswith(
        "not a JSON Schema: properties.x.type")
    assert configschema.schema_problems({"type": "array"}) == ['a settings schema has "type": "object" and "properties"']
    assert "larger than" in configschema.schema_problems({"type": "object", "properties": {},
                                                          "description": "x" * 70000})[0]
