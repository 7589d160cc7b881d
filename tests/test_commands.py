"""The run controller's command table (runcontrol/control/commands/): one module per command with its doc, schema
and kind; a payload that breaks a command's schema refused `bad_field` before the command runs, naming each field;
and the table as the run controller serves it."""

import json
import pkgutil
import re

import pytest

from runcontrol import protocol
from runcontrol.control import commands
from runcontrol.control.commands.base import VALIDATOR
from runcontrol.errors import Refused
from tests.helpers import helper, wait_until


def test_the_table_is_every_command_module_of_its_folder_each_under_its_own_name():
    found = {m.name for m in pkgutil.iter_modules(commands.__path__)} - {"base"}
    assert found == set(commands.COMMANDS)
    assert all(module.__name__.rsplit(".", 1)[1] == name for name, module in commands.COMMANDS.items())


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_each_command_shows_its_request_answer_and_errors_and_has_a_schema_a_kind_and_a_handler(name):
    module = commands.COMMANDS[name]
    doc = module.__doc__.strip()
    summary, _, body = doc.partition("\n\n")
    assert "\n" not in summary and summary.endswith(".")
    assert f'{{"to": "run", "cmd": "{name}", "id": 1' in body and '-> {"cmd": "_reply", "re": 1, "ok": true' in body
    example = re.search(r'(\{"to": "run", "cmd": "' + name + r'".*?\})\n', body).group(1)
    fields = {k: v for k, v in json.loads(example).items() if k not in ("to", "cmd", "id")}
    assert list(VALIDATOR(module.SCHEMA).iter_errors(fields)) == []   # the example's request passes the schema
    errors = body.split("\nErrors:")[1]   # last: every code it refuses with, or none
    codes = set(re.findall(r"`([a-z_]+)`", errors)) & (protocol.ERROR_CODES | protocol.REFUSAL_CODES)
    assert (errors.strip() == "none.") != bool(codes), errors
    VALIDATOR.check_schema(module.SCHEMA)
    assert module.SCHEMA["type"] == "object" and isinstance(module.ACTS, bool)
    assert isinstance(module.WAIT_S, float) and module.WAIT_S >= 0 and callable(module.handle)


@pytest.mark.parametrize("name, payload, message", [
    ("prepare_run", {"timeout": -1}, "'timeout': -1 must be more than 0"),
    ("end_run", {"timeout": 601}, "'timeout': 601 must be at most 600"),
    ("abort_run", {"timeout": True}, "'timeout': true must be a number"),
    ("begin_run", {"comment": 3, "params": []}, "'comment': 3 must be a string; 'params': [] must be an object"),
    ("restart", {}, "restart needs 'program': the name of a program of the experiment"),
    ("start", {"program": ""}, "'program': \"\" must not be empty"),
    ("runs", {"n": 1.0}, "'n': 1.0 must be a whole number"),
    ("alarms", {"log": 1001}, "'log': 1001 must be at most 1000"),
    ("ack", {"all": False}, "ack needs 'alarm': the name of a standing alarm (or all: true)"),
    ("ack", {"alarm": "hot", "by": "x" * 65}, f"'by': \"{'x' * 36}... must be at most 64 characters"),
    ("set_config", {"values": {}}, "set_config needs 'program': the name of a program of the experiment; "
                                   "'values': {} must not be empty"),
    ("config_log", {"n": 0, "program": 5}, "'n': 0 must be at least 1; 'program': 5 must be a string"),
    ("run_config", {"run": "one"}, "'run': \"one\" must be a whole number"),
    ("config_diff", {"a": 1, "b": 0}, "'b': 0 must be at least 1"),
])
def test_a_payload_that_breaks_the_schema_is_refused_bad_field_naming_each_field_and_the_command_does_not_run(
        name, payload, message):
    handler = commands.dispatch(None, commands.COMMANDS[name])   # no run controller: the command must not run
    with pytest.raises(Refused) as refused:
        handler({"to": "run", "cmd": name, "id": 7, "from": "op", "ts": 1.0, **payload})
    assert refused.value.code == protocol.BAD_FIELD and str(refused.value).startswith(message), str(refused.value)


def test_the_requester_waits_for_a_transitions_own_timeout_or_the_commands_own_wait_and_a_margin():
    assert commands.wait_s("prepare_run", {"timeout": 30}) == 30 + commands.MARGIN_S
    assert commands.wait_s("prepare_run", {}) == commands.COMMANDS["prepare_run"].WAIT_S + commands.MARGIN_S
    assert commands.wait_s("ack", {"timeout": 30}) == commands.MARGIN_S   # not a field of ack: not its wait


def test_the_run_controller_serves_the_table_and_refuses_a_breach_before_the_command_runs(system, tmp_path):
    record = tmp_path / "p.jsonl"
    s = system({"p": helper("participant.py", "p", record, client="p", participant=True)})
    s.wait_state("p", "RUNNING", registered=True)
    offered = next(c for c in s.op.request(None, "_list") if c["name"] == "run")["actions"]
    assert offered == {name: commands.summary(module) for name, module in commands.COMMANDS.items()}
    with pytest.raises(Refused) as refused:
        s.op.call({"to": "run", "cmd": "prepare_run", "timeout": -1}, 10)
    assert refused.value.code == "bad_field" and str(refused.value) == "'timeout': -1 must be more than 0"
    with pytest.raises(Refused) as refused:
        s.op.request("run", "ack", all="yes")
    assert refused.value.code == "bad_field" and "'all': \"yes\" must be true or false" in str(refused.value)
    assert s.op.request("run", "status")["state"] == "STOP" and not record.exists()   # nobody was asked
    run = s.op.call({"to": "run", "cmd": "prepare_run", "timeout": 5}, 15)["run"]
    assert wait_until(lambda: record.exists() and record.read_text(), 10)
    assert s.op.request("run", "abort_run")["run"] == run
    assert s.op.request("run", "runs", n=1)[-1]["run"] == run
