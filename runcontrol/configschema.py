"""Programs' settings: the JSON Schema a program announces (`meta.config_schema`), its defaults, checks with paths.

A schema is a JSON Schema (draft 2020-12) of an object whose properties are the
settings, each with a `default` and a `description`; a property with
`"live": true` may change during a run, the others are frozen while one runs.
Pure: must not touch sockets or files.
"""

import json

import jsonschema

META_KEY = "config_schema"
MAX_BYTES = 64 * 1024   # a schema or a set of values larger than this is refused
VALIDATOR = jsonschema.Draft202012Validator


def path_of(parts, prefix=""):
    return ".".join([prefix, *map(str, parts)] if prefix else map(str, parts)) or "(top level)"


def schema_problems(schema):
    """What makes `schema` unusable as a program's settings schema: [] when it is fine."""
    if not isinstance(schema, dict):
        return [f"a settings schema is a JSON object, not {type(schema).__name__}"]
    if len(json.dumps(schema)) > MAX_BYTES:
        return [f"the schema is larger than {MAX_BYTES} bytes"]
    try:
        VALIDATOR.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return [f"not a JSON Schema: {path_of(exc.absolute_path) if exc.absolute_path else 'at its top'}: {exc.message}"]
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        return ['a settings schema has "type": "object" and "properties"']
    return []


def defaults(schema):
    """The `default` of each top-level property that has one."""
    properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
    return {name: prop["default"] for name, prop in properties.items() if isinstance(prop, dict) and "default" in prop}


def known(values, schema):
    """`values` without the settings `schema` no longer has (kept ones from before a program's new version)."""
    properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
    return {name: value for name, value in values.items() if name in properties}


def problems(values, schema, prefix=""):
    """Every way `values` breaks `schema`, as 'path: sentence', sorted by path."""
    if len(json.dumps(values, default=str)) > MAX_BYTES:
        return [f"{prefix or '(top level)'}: larger than {MAX_BYTES} bytes"]
    errors = sorted(VALIDATOR(schema).iter_errors(values), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{path_of(e.absolute_path, prefix)}: {e.message}" for e in errors]


def live(schema):
    """The settings that may change during a run."""
    properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
    return {name for name, prop in properties.items() if isinstance(prop, dict) and prop.get("live") is True}
