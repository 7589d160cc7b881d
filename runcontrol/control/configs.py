"""Programs' settings, kept by the run controller; the work of `config`, `set_config`, `config_log`, `run_config`,
`config_diff` (their payloads are checked by `commands/`).

Owns learning each program's settings schema when its client registers,
delivering its current settings (`_config`) before anything else is asked of
it, validating a change against the schema (every problem with its path,
nothing applied on error), refusing a change to a frozen setting during a run,
applying a change only once the program has accepted it, and the snapshot of
every program's settings as a run begins. Must not spawn processes.
"""

import logging
import time

from runcontrol import configschema, protocol
from runcontrol.control import runbook
from runcontrol.control.configbook import ConfigBook
from runcontrol.errors import Refused

log = logging.getLogger("runcontrol.controller")

DELIVER_WAIT_S = 10.0
LOG_MAX = 1000


class ConfigDesk:
    def __init__(self, client, runs, waiters, experiment, folder):
        """`runs`: the RunDesk (its state freezes settings); `experiment`: a callable, the experiment as last
        (re)loaded; `folder`: where the ConfigBook keeps the settings."""
        self.client = client
        self.runs = runs
        self.waiters = waiters
        self.experiment = experiment
        self.book = ConfigBook(folder)
        self.problems = {}      # program -> what is wrong with its schema or settings
        self.delivered = {}     # client -> the pid its settings went to
        self.changing = set()   # programs with a change on its way

    @property
    def spec(self):
        return self.experiment()

    # --- registration --------------------------------------------------------------------------

    def program_of(self, client):
        return next((p.name for p in self.spec.programs if p.client == client), None)

    def client_joined(self, client, meta, pid=None, again=False):
        """A client registered (`again`: seen in the server's list): learn its schema, deliver its settings once
        per process."""
        program = self.program_of(client)
        schema = meta.get(configschema.META_KEY) if isinstance(meta, dict) else None
        if program is None or schema is None or (again and self.delivered.get(client) == pid):
            return
        self.delivered[client] = pid
        wrong = configschema.schema_problems(schema)
        if wrong:
            return self._problem(program, f"{program} announced a settings schema that is not one", wrong)
        self.book.learn_schema(program, schema)
        values, source = self.current(program, schema)
        wrong = configschema.problems(values, schema, f"programs.{program}.config")
        if wrong:
            return self._problem(program, f"the settings of {program} break its schema; it keeps its own", wrong)
        self.problems.pop(program, None)

        def answered(answer):
            if not answer.ok:
                self._problem(program, f"{program} refused its settings: {answer.error}", [answer.error])
            elif self.book.values(program) is None:
                self.book.accept(program, values, self._entry(program, source, {}, accepted=True))
        self.client.start({"to": client, "cmd": "_config", "config": values, "changed": [], "by": source},
                          on_answer=answered)

    def current(self, program, schema):
        """(the settings `program` has, or is to get first, and where they came from)."""
        stored = self.book.values(program)
        if stored is not None:
            return {**configschema.defaults(schema), **configschema.known(stored, schema)}, "run"
        initial = dict(self.spec.program(program).config) if self.spec.program(program) else {}
        return {**configschema.defaults(schema), **initial}, "experiment"

    def _problem(self, program, what, problems):
        self.problems[program] = {"error": what, "problems": problems}
        log.error("%s: %s", what, "; ".join(problems))
        self.client.send(None, "_event", kind="config_invalid", program=program, error=what, problems=problems)

    # --- commands ------------------------------------------------------------------------------

    def settings(self, program):
        """The settings of `program` (None: of every program that has any): values, schema, live ones, problems."""
        if program is not None:
            return self.describe(self._known(program))
        names = sorted(set(self.book.programs) | set(self.problems))
        return {name: self.describe(name) for name in names if self.spec.program(name)}

    def describe(self, program):
        schema = self.book.schema(program)
        return {"values": self.book.values(program), "schema": schema,
                "live": sorted(configschema.live(schema)) if schema else [], "changed": self.book.changed(program),
                "changed_in_run": self.changed_in_run(program), "problem": self.problems.get(program)}

    def change(self, msg, program, values, by):
        """Change settings of `program` to `values`, as `by` asks in `msg`: validated, delivered, applied once the
        program accepts; answers `msg` once it has."""
        program = self._known(program)
        schema, current = self._deliverable(program)
        new = {**current, **values}
        wrong = configschema.problems(new, schema)
        if wrong:
            raise Refused(f"nothing changed: {len(wrong)} problem(s) in the settings of {program}: "
                          + "; ".join(wrong), protocol.BAD_CONFIG)
        changes = {k: [current.get(k), v] for k, v in values.items() if current.get(k) != v}
        self._check_frozen(program, schema, changes)
        if not changes:
            return {"program": program, "values": new, "changes": {}}
        return self._deliver(msg, program, new, changes, by)

    def _known(self, program):
        if not self.spec.program(program):
            names = ", ".join(p.name for p in self.spec.programs)
            raise Refused(f"no program {program!r} (programs: {names})", protocol.UNKNOWN_PROGRAM)
        return program

    def _deliverable(self, program):
        schema = self.book.schema(program)
        if schema is None or self.book.values(program) is None:
            why = (self.problems.get(program) or {}).get("error") or "it has not registered with a settings schema"
            raise Refused(f"{program} takes no settings now: {why}", protocol.NO_SETTINGS)
        if program in self.changing:
            raise Refused(f"a change of {program}'s settings is on its way; try again when it has answered",
                          protocol.BUSY)
        return schema, {**configschema.defaults(schema), **configschema.known(self.book.values(program), schema)}

    def _check_frozen(self, program, schema, changes):
        frozen = sorted(set(changes) - configschema.live(schema))
        if frozen and self.runs.book.state in runbook.IN_RUN:
            raise Refused(f"{', '.join(f'{program}.{k}' for k in frozen)} cannot change during run "
                          f"{self.runs.book.run}: end the run first (only settings marked \"live\" in "
                          f"{program}'s schema change during a run)", protocol.BAD_STATE)

    def _deliver(self, msg, program, new, changes, by):
        reply = self.client.defer(msg)
        client = self.spec.program(program).client
        self.changing.add(program)
        pending = self.client.start({"to": client, "cmd": "_config", "config": new, "changed": sorted(changes),
                                     "by": by})

        def finish():
            self.changing.discard(program)
            answer = pending.answer
            if answer is None:
                self.client.abandon(pending)
                self.book.note(self._entry(program, by, changes, accepted=False, why="no answer"))
                reply.refuse(f"{program} did not answer within {DELIVER_WAIT_S:g} s: its settings stay",
                             protocol.FAILED)
            elif answer.code in (protocol.NO_SUCH_CLIENT, protocol.CLIENT_LOST):
                reply.refuse(f"{program} is not registered now ({answer.error}): its settings stay; try again when "
                             "it is up", protocol.NOT_REGISTERED)
            elif not answer.ok:
                self.book.note(self._entry(program, by, changes, accepted=False, why=answer.error))
                reply.refuse(f"{program} refused: {answer.error}; its settings stay", protocol.REFUSED)
            else:
                entry = self._entry(program, by, changes, accepted=True)
                self.book.accept(program, new, entry)
                log.info("%s changed the settings of %s: %s", by, program, changes)
                self.client.send(None, "_event", kind="config_changed", program=program, by=by, changes=changes,
                                 run=entry["run"])
                reply.resolve({"program": program, "values": new, "changes": changes})
        self.waiters.add(lambda: pending.answer is not None, finish, DELIVER_WAIT_S, finish)
        return reply

    def _entry(self, program, by, changes, accepted, why=None):
        runs = self.runs.book
        return {"ts": round(time.time(), 3), "program": program, "by": by, "changes": changes, "accepted": accepted,
                "run": runs.run if runs.state in runbook.IN_RUN else None, **({"why": why} if why else {})}

    def changes(self, n, program):
        """The change log, newest last: `n` lines, of `program` when not None."""
        return self.book.log(n, self._known(program) if program is not None else None)

    def run_settings(self, run):
        """Every program's settings as run `run` began."""
        try:
            return self.book.run_settings(run)
        except FileNotFoundError:
            raise Refused(f"no settings saved for run {run}: runs before settings were kept, or no such run",
                          protocol.NO_SUCH_RUN) from None
        except (OSError, ValueError, KeyError) as exc:
            raise Refused(f"the settings of run {run} cannot be read: {exc}", protocol.BAD_STATE) from None

    def compare(self, a, b=None):
        """What differs between the settings of run `a` and run `b` (None: the settings now):
        {program: {setting: [in a, in b]}}."""
        first = self.run_settings(a)
        second = self.run_settings(b) if b is not None else \
            {name: entry["values"] for name, entry in self.book.programs.items() if "values" in entry}
        return diff(first, second)

    # --- runs ----------------------------------------------------------------------------------

    def run_begins(self, run):
        """The snapshot of every program's settings for the run's record."""
        return {"config": self.book.snapshot(run)}

    def changed_in_run(self, program):
        runs = self.runs.book
        changed, start = self.book.changed(program), runs.current.get("start")
        return bool(runs.state in runbook.IN_RUN and changed and start and changed >= start)


def initial_problems(experiment):
    """Every way the experiment's first settings break a schema its programs announced before (kept in the state
    folder); a program whose schema is not known yet is checked when it registers."""
    path = experiment.paths.state / "config.json"
    known = ConfigBook(experiment.paths.state).programs if path.exists() else {}
    found = []
    for program in experiment.programs:
        schema = known.get(program.name, {}).get("schema")
        if program.config and schema:
            values = {**configschema.defaults(schema), **program.config}
            found += configschema.problems(values, schema, f"programs.{program.name}.config")
    return found


def diff(first, second):
    out = {}
    for program in sorted(set(first) | set(second)):
        a, b = first.get(program) or {}, second.get(program) or {}
        changed = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        if changed:
            out[program] = changed
    return out
