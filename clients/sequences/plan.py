"""Sequences: a JSON file of steps, checked and turned into the plain list of steps the sequencer takes.

A sequence file (`schema.json` beside this module) holds `steps`: `run`, `set`,
`wait`, `command`, `pause`, and the steps that hold others: `repeat` N times,
`for` a variable over a list or a range, `call` another sequence by name. Every
string may name a variable as `{name}` (a string that is only `{name}` takes the
variable's value as it is, a number stays a number). `load` checks a file against
the schema and what a schema cannot say (a variable nobody gives, a loop over
nothing, a call to no sequence or in a circle), every problem with its path, and
`expand` unrolls it into `Step`s, each with the loop values it was made with, so a
position in a sequence is an index into that list. Must not touch the bus, files
other than the sequences it reads, or a clock.
"""

import copy
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from runcontrol.errors import ConfigError

SCHEMA = json.loads(Path(__file__).with_name("schema.json").read_text(encoding="utf-8"))
ACTIONS = ("run", "set", "wait", "command", "pause")
HOLDERS = ("repeat", "for", "call")
MAX_STEPS = 100000
MAX_CALL_DEPTH = 16
WHOLE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Sequence:
    name: str
    path: object                 # the file it came from, or None
    description: str
    variables: dict
    on_alarm: dict
    steps: list                  # as written (JSON), checked


@dataclass(frozen=True)
class Step:
    """One step to take: its kind, its fields with every variable filled in, where it was written, and the
    loop values (and call) it was made with."""
    index: int
    kind: str
    spec: dict
    where: str                   # e.g. "bias_scan.steps.0.for[volts=40].steps.2"
    loop: dict = field(default_factory=dict)
    sequence: str = ""


class Library:
    """Sequences by name: the files of a folder (`sequences/` beside the experiment), and any loaded by path."""

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder else None
        self.known = {}

    def names(self):
        found = {p.stem for p in self.folder.glob("*.json")} if self.folder and self.folder.is_dir() else set()
        return sorted(found | set(self.known))

    def get(self, name):
        """The sequence `name` (a name in the folder, or a path); ConfigError when there is none or it is bad."""
        if name in self.known:
            return self.known[name]
        path = Path(name) if name.endswith(".json") or "/" in name else (self.folder or Path(".")) / f"{name}.json"
        sequence = read(path)
        self.known[sequence.name] = sequence
        return sequence

    def add(self, raw, name=None, path=None):
        sequence = parse(raw, name or raw.get("name") if isinstance(raw, dict) else name, path)
        self.known[sequence.name] = sequence
        return sequence


def read(path):
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no sequence {path.stem!r}: {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                          [f"line {exc.lineno} column {exc.colno}: {exc.msg}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    return parse(raw, raw.get("name") if isinstance(raw, dict) else None, path, default_name=path.stem)


def parse(raw, name, path=None, default_name=None):
    """A checked Sequence from decoded JSON; ConfigError listing every problem with its path."""
    problems = schema_problems(raw)
    if isinstance(raw, dict):
        known = set(raw["variables"]) if isinstance(raw.get("variables"), dict) else set()
        problems += variable_problems(raw.get("steps", []), known, "steps")
    name = name or default_name or "sequence"
    if problems:
        where = f"{path}" if path else f"sequence {name}"
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{where}: {len(problems)} problem(s):\n{listing}", problems)
    return Sequence(name, path, raw.get("description", ""), dict(raw.get("variables", {})),
                    dict(raw.get("on_alarm", {})), raw["steps"])


def schema_problems(raw):
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {explain(e)}" for e in errors]


def explain(error):
    path = list(error.absolute_path)
    if error.validator in ("minProperties", "maxProperties") and path[-2:-1] == ["steps"]:
        return f"a step is exactly one of {', '.join(ACTIONS + HOLDERS)} (it has {', '.join(error.instance) or 'none'})"
    if error.validator in ("minProperties", "maxProperties") and path[-1:] == ["for"]:
        return "a for has one variable (its values: a list, or {from, to, step}) and its steps"
    if error.validator == "additionalProperties" and path[-2:-1] == ["steps"]:
        strange = sorted(set(error.instance) - set(ACTIONS + HOLDERS))
        return f"{', '.join(map(repr, strange))} is no kind of step ({', '.join(ACTIONS + HOLDERS)})"
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown key(s)")
    if error.validator == "oneOf" and error.schema in (SCHEMA["$defs"]["seconds"], SCHEMA["$defs"]["number"]):
        least = " >= 0" if error.schema is SCHEMA["$defs"]["seconds"] else ""
        return f"{error.instance!r} must be a number{least}, or a variable as '{{name}}'"
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    return error.message


def variable_problems(steps, known, where):
    """Variables named but never given, and loops over nothing, under `steps` at `where`."""
    problems = []
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        try:
            problems += _step_variable_problems(step, known, f"{where}.{i}")
        except (AttributeError, KeyError, TypeError, StopIteration, ValueError):
            pass   # a step the schema refused: its problem is said already
    return problems


def _step_variable_problems(step, known, where):
    (kind, spec), here = next(iter(step.items())), f"{where}.{next(iter(step))}"
    if kind == "repeat":
        return variable_problems(spec["steps"], known | ({spec["as"]} if "as" in spec else set()), f"{here}.steps")
    if kind == "for":
        var, values = loop_of(spec)
        empty = [f"{here}.{var}: a loop over nothing"] if not values_of(values) else []
        return empty + variable_problems(spec["steps"], known | {var}, f"{here}.steps")
    if kind == "call":
        return [f"{here}.with.{k}: {p}" for k, v in spec.get("with", {}).items() for p in unknown(v, known)]
    return [f"{here}: {p}" for p in unknown(spec, known)]


def unknown(value, known):
    """Sentences for each variable `value` names that is not in `known`."""
    names = set()
    walk_strings(value, lambda text: names.update(variables_in(text)))
    return [f"{{{name}}} names no variable (known here: {', '.join(sorted(known)) or 'none'})"
            for name in sorted(names - known)]


def variables_in(text):
    return [f for _, f, _, _ in string.Formatter().parse(text) if f] if "{" in text else []


def walk_strings(value, visit):
    if isinstance(value, str):
        visit(value)
    elif isinstance(value, dict):
        for item in value.values():
            walk_strings(item, visit)
    elif isinstance(value, list):
        for item in value:
            walk_strings(item, visit)


def loop_of(spec):
    var = next(k for k in spec if k != "steps")
    return var, spec[var]


def values_of(values):
    """A `for` loop's values: the list, or the range {from, to, step} with its end included."""
    if isinstance(values, list):
        return values
    start, stop, step = values["from"], values["to"], values.get("step", 1)
    if step == 0 or (stop - start) / step < 0:
        return []
    count = int(round((stop - start) / step, 9)) + 1
    return [round(start + i * step, 12) for i in range(min(count, MAX_STEPS + 1))]


def fill(value, variables):
    """`value` with every `{name}` filled in from `variables` ("{x}" alone keeps x's type)."""
    if isinstance(value, str):
        whole = WHOLE.match(value)
        if whole:
            return variables[whole[1]]
        return value.format_map(variables) if "{" in value else value
    if isinstance(value, dict):
        return {k: fill(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, variables) for v in value]
    return value


def expand(sequence, library, given=None):
    """The steps of `sequence` one after the other, loops unrolled and calls opened; ConfigError when a call
    names no sequence, calls go round in a circle, or there are more than MAX_STEPS."""
    out = []
    variables = {**sequence.variables, **(given or {})}
    unset = sorted(k for k, v in variables.items() if v is None)
    if unset:
        raise ConfigError(f"sequence {sequence.name}: no value for {', '.join(unset)} (give it when queueing it, or "
                          f"in the call)", [f"{sequence.name}.variables.{k}: no value given" for k in unset])
    _expand(sequence.steps, variables, {}, f"{sequence.name}.steps", sequence.name, library,
            (sequence.name,), out)
    return out


def _expand(steps, variables, loop, where, name, library, calls, out):
    for i, step in enumerate(steps):
        kind, spec = next(iter(step.items()))
        here = f"{where}.{i}"
        if kind == "repeat":
            var = spec.get("as", "i")
            for n in range(1, spec["times"] + 1):
                _expand(spec["steps"], {**variables, var: n}, {**loop, var: n}, f"{here}.repeat[{var}={n}].steps",
                        name, library, calls, out)
        elif kind == "for":
            var, values = loop_of(spec)
            for value in values_of(fill(values, variables)):
                _expand(spec["steps"], {**variables, var: value}, {**loop, var: value},
                        f"{here}.for[{var}={value}].steps", name, library, calls, out)
        elif kind == "call":
            _open_call(spec, variables, loop, here, library, calls, out)
        else:
            if len(out) >= MAX_STEPS:
                raise ConfigError(f"{here}: more than {MAX_STEPS} steps once unrolled", [f"{here}: too many steps"])
            out.append(Step(len(out), kind, fill(copy.deepcopy(spec), variables), f"{here}.{kind}", dict(loop), name))


def _open_call(spec, variables, loop, here, library, calls, out):
    target = spec["sequence"]
    if target in calls:
        circle = " -> ".join([*calls, target])
        raise ConfigError(f"{here}.call: sequences call each other in a circle: {circle}",
                          [f"{here}.call.sequence: calls go round in a circle: {circle}"])
    if len(calls) >= MAX_CALL_DEPTH:
        raise ConfigError(f"{here}.call: calls nested deeper than {MAX_CALL_DEPTH}", [f"{here}.call: too deep"])
    called = library.get(target)
    given = {**called.variables, **fill(spec.get("with", {}), variables)}
    missing = sorted(k for k, v in given.items() if v is None)
    if missing:
        raise ConfigError(f"{here}.call: {target} needs {', '.join(missing)}, which the call does not give",
                          [f"{here}.call.with: {target} needs {k}" for k in missing])
    _expand(called.steps, given, loop, f"{here}.call[{target}].steps", target, library, (*calls, target), out)
