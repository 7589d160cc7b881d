"""What the run controller's command modules share: pieces of their payload schemas, and the check of a request
against its command's schema, every problem named with its field. Must not hold state or answer anything itself.
"""

import ast
import json

import jsonschema

from runcontrol import protocol
from runcontrol.control.runs import MAX_TRANSITION_TIMEOUT_S, TRANSITION_TIMEOUT_S
from runcontrol.errors import Refused

# The keys of the envelope: every other key of a request is its payload.
ENVELOPE = frozenset({"cmd", "to", "from", "id", "re", "ts"})

# JSON Schema's integer, without booleans and without 1.0: the handlers count with what passes.
VALIDATOR = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)))

PROGRAM = {"type": "string", "minLength": 1, "description": "the name of a program of the experiment"}
BY = {"type": "string", "minLength": 1, "maxLength": protocol.BY_MAX,
      "description": "who asks, for the logs (default: the sender)"}
WHY = {"type": "string", "maxLength": 500, "description": "why, in words, for the run log"}
RUN_NUMBER = {"type": "integer", "minimum": 1, "description": "a run number"}
TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TRANSITION_TIMEOUT_S,
           "description": f"seconds to wait for every participant (default {TRANSITION_TIMEOUT_S:g})"}
SEQUENCE = {"type": "object", "description": "the step of a sequence the run belongs to (the sequencer's tag: "
                                             "its `id`, `sequence`, `step`, `loop`), kept in the run log"}

WORDS = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most", "exclusiveMaximum": "less than"}
ARTICLES = {"object": "an object", "array": "an array", "string": "a string", "integer": "a whole number",
            "number": "a number", "boolean": "true or false", "null": "null"}
SHOWN_MAX = 40


def payload(msg):
    return {key: value for key, value in msg.items() if key not in ENVELOPE}


def check(name, validator, msg):
    """Refuse `msg` with `bad_field` when its payload breaks the schema of command `name`, naming every problem."""
    errors = sorted(validator.iter_errors(payload(msg)), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise Refused("; ".join(describe(name, validator.schema, e) for e in errors), protocol.BAD_FIELD)


def describe(name, schema, error):
    """One problem as a person reads it: "'timeout': -1 must be more than 0", "restart needs 'program': ..."."""
    if error.validator == "required":
        field = ast.literal_eval(error.message.removesuffix(" is a required property"))
        about = schema.get("properties", {}).get(field, {}).get("description")
        return f"{name} needs '{field}'" + (f": {about}" if about else "")
    where = ".".join(map(str, error.absolute_path))
    return f"'{where}': {shown(error.instance)} {sentence(error)}" if where else f"{name}: {error.message}"


def sentence(error):
    kind, limit = error.validator, error.validator_value
    if kind == "type":
        kinds = limit if isinstance(limit, list) else [limit]
        return "must be " + " or ".join(ARTICLES.get(k, k) for k in kinds)
    if kind in WORDS:
        return f"must be {WORDS[kind]} {limit:g}"
    if kind in ("minLength", "minProperties") and limit == 1:
        return "must not be empty"
    if kind == "maxLength":
        return f"must be at most {limit} characters"
    if kind == "const":
        return f"must be {json.dumps(limit)}"
    if kind == "enum":
        return "must be one of " + ", ".join(map(json.dumps, limit))
    return f"breaks the rule {kind}: {limit}"


def shown(value):
    text = json.dumps(value, default=str)
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX - 3] + "..."


def forward(ctl, msg, cmd, **fields):
    """Ask the notifier program `cmd` with `fields` (and who asks); answer `msg` with what it answers."""
    notify = ctl.spec.notify
    if notify is None:
        raise Refused("the experiment has no notify section: nobody is notified", protocol.REFUSED)
    reply = ctl.client.defer(msg)

    def answered(answer):
        if answer.ok:
            reply.resolve(answer.result)
        else:
            reply.refuse(f"{notify.client}: {answer.error}", answer.code)
    ctl.client.start({"to": notify.client, "cmd": cmd, "by": protocol.parse_by(msg), **fields},
                     on_answer=answered)
    return reply
