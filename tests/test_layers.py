"""The layers as contracts: import-linter's `lint-imports` over pyproject.toml's contracts, run as a user would."""

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.helpers import ROOT

CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_every_layer_contract_holds():
    checked = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
    assert f"Contracts: {len(CONFIG['contracts'])} kept, 0 broken." in checked.stdout


def test_every_folder_is_a_layer_and_every_module_of_the_ground_is_in_the_ground():
    layers = next(c for c in CONFIG["contracts"] if c["id"] == "layers")["layers"]
    assert layers[-1] == "experiments"   # the lowest floor: it imports nothing of Orbit
    ground = {name.strip() for name in layers[-2].split(":")}
    assert ground == {f"runcontrol.{p.stem}" for p in (ROOT / "runcontrol").glob("*.py") if p.stem != "__init__"}
    folders = {f"runcontrol.{p.name}" for p in (ROOT / "runcontrol").iterdir() if (p / "__init__.py").exists()}
    assert folders <= set(layers)
    assert not any(c.get("ignore_imports") for c in CONFIG["contracts"])   # no exception to any rule
