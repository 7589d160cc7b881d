"""docs/protocol.md against the code: the server's commands, the run controller's commands (and the error codes of
each) and the error codes are the code's tables, no more and no less."""

import re

import pytest

from runcontrol import protocol
from runcontrol.bus import commands as server_commands
from runcontrol.control import commands as run_commands
from tests.helpers import ROOT

PROTOCOL = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
WIRE_CODES = protocol.ERROR_CODES | protocol.REFUSAL_CODES


def section(title, text=PROTOCOL):
    """The text under the heading `## title`, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/protocol.md has no section '## {title}'"
    return match.group(1)


def table(title):
    """{first cell's name: the row's cells} of the tables of section `title` (rows whose first cell is `code`)."""
    rows = {}
    for line in section(title).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        name = re.fullmatch(r"`([a-z_]+)`", cells[0])
        if line.startswith("| `") and name:
            rows[name.group(1)] = cells
    return rows


def codes_in(text):
    """The wire error codes written as `code` in `text`."""
    return set(re.findall(r"`([a-z_]+)`", text)) & WIRE_CODES


def test_every_server_command_is_documented_and_every_documented_one_exists():
    assert set(table("Server commands")) == set(server_commands.HANDLERS)


def test_every_run_controller_command_is_documented_and_every_documented_one_exists():
    assert set(table("Run controller commands")) == set(run_commands.COMMANDS)


@pytest.mark.parametrize("name", list(run_commands.COMMANDS))
def test_the_error_codes_of_a_run_controller_command_are_the_same_in_its_module_and_in_the_doc(name):
    documented = table("Run controller commands")[name][-1]
    errors = run_commands.COMMANDS[name].__doc__.split("\nErrors:")[1]
    assert codes_in(errors) == codes_in(documented), f"{name}: its module says {errors!r}, the doc {documented!r}"
    assert codes_in(documented) or documented == "none"


def test_every_error_code_is_documented_and_every_documented_one_is_a_constant_of_the_protocol_module():
    documented = set(table("Error codes"))
    assert documented == WIRE_CODES | protocol.LOCAL_CODES
    constants = {value for key, value in vars(protocol).items() if key.isupper() and isinstance(value, str)}
    assert documented <= constants
