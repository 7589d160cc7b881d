"""docs/architecture.md's table of who owns what, held against the folders: what it names exists, and every
package folder of runcontrol/ and clients/ is in it.

A row's place is the first path of its first cell (`runcontrol/bus/`; `runcontrol/*.py` is the folder
`runcontrol/`; a module's place is its folder). A name in the row with no folder in it (`server.py`,
`commands/`) is in the row's place; one with a folder (`runcontrol/control/launch.py`) is from the top of
the checkout. Only names that end in `.py` or `/` are paths.
"""

import re

from tests.helpers import ROOT

DOC = ROOT / "docs" / "architecture.md"
HEADING = "## Who owns what"
CHECKED = ("runcontrol", "clients", "web", "watchdog", "experiments")


def table_rows(text):
    """The cells of each row of the first table under HEADING (header and rule left out)."""
    assert HEADING in text, f"no {HEADING!r} in {DOC}"
    rows = []
    for line in text.split(HEADING, 1)[1].splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def paths_in(cell):
    return [name for name in re.findall(r"`([^`\s]+)`", cell) if name.endswith((".py", "/"))]


def place_of(first_cell):
    names = paths_in(first_cell)
    assert names, f"a row of the table names no place: {first_cell!r}"
    first = ROOT / names[0]
    return first.parent if first.name.endswith(".py") else first


def named_paths():
    """{path: the row it is named in} for every path in the table, and every row's place."""
    named = {}
    for cells in table_rows(DOC.read_text(encoding="utf-8")):
        place = place_of(cells[0])
        named[place] = cells[0]
        for name in paths_in(cells[0]):
            named.setdefault(ROOT / name, cells[0])
        for cell in cells[1:]:
            for name in paths_in(cell):
                inner = "/" in name.rstrip("/")
                named.setdefault((ROOT if inner else place) / name, cells[0])
    return named


def test_architecture_table_names_only_what_exists():
    named = {p: row for p, row in named_paths().items() if "*" not in p.name}
    assert len([p for p in named if p != ROOT and p.relative_to(ROOT).parts[0] in CHECKED]) > 50  # the table was read
    missing = sorted(f"{p.relative_to(ROOT)} (row {row})" for p, row in named.items() if not p.exists())
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


def test_architecture_table_names_every_package_folder_of_runcontrol_and_clients():
    named = {p.resolve() for p in named_paths()}
    packages = {init.parent.resolve() for top in ("runcontrol", "clients")
                for init in (ROOT / top).rglob("__init__.py")}
    unnamed = sorted(str(p.relative_to(ROOT)) for p in packages - named)
    assert not unnamed, f"package folders missing from docs/architecture.md's table of who owns what: {unnamed}"
