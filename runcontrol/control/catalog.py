"""The run catalog, kept by the run controller: one record per run, written as the run ends, completed from the
history, flagged by people and rules; the work of `record`, `find` and `flag` (their payloads are checked by
`commands/`).

Owns when a record is written (at the end of each run, in the same step as the run
log's outcome; at start for every ended run the catalog lacks, so a run controller
killed between the two loses nothing), asking the historian for the catalog values
over each run (a record stays `pending` until the history is complete up to the
run's end, and is asked again), the experiment's rules that flag a complete record
nobody has flagged, and the answers. The records live in `<paths.state>/catalog.sqlite`
(`CatalogBook`). Must not spawn processes.
"""

import logging
import time

from runcontrol import protocol
from runcontrol.control import catalogquery, catalogrecord
from runcontrol.control.catalogbook import CatalogBook, CatalogError, NoSuchRun
from runcontrol.control.durable import read_lines
from runcontrol.errors import Refused

log = logging.getLogger("runcontrol.controller")

ASK_AGAIN_S = 30.0        # a record waiting for the history asks again this often
SUMMARY_WAIT_S = 10.0
LOG_LINES = 20000         # of the alarm and settings logs looked through for a run's span
FIND_LIMIT = 100
RECHECKED = 50            # the latest ended runs whose records are held against the run log at start


class CatalogDesk:
    def __init__(self, client, waiters, runs, configs, alarms, experiment, folder):
        """`runs`, `configs`, `alarms`: the desks whose books hold the run log, the settings and the alarm log;
        `experiment`: a callable, the experiment as last (re)loaded; `folder`: where the catalog file goes."""
        self.client = client
        self.waiters = waiters
        self.runs = runs
        self.configs = configs
        self.alarms = alarms
        self.experiment = experiment
        self.asking = set()        # runs whose summary was asked and not answered yet
        self.asked_at = 0.0
        try:
            self.book = CatalogBook(folder / "catalog.sqlite")
            self.problem = None
        except CatalogError as exc:   # runs go on; the run log keeps what the catalog will be written from
            self.book, self.problem = None, str(exc)
            log.error("the run catalog is unavailable: %s", exc)

    # --- writing ------------------------------------------------------------------------------

    def run_ended(self, run):
        """The run's outcome is in the run log: its record goes into the catalog, then to the history for its
        values."""
        entry = next((r for r in reversed(self.runs.book.records()) if r.get("run") == run), None)
        if entry is not None and self.book is not None:
            try:
                self._write(entry)
            except CatalogError as exc:   # written from the run log at the next start
                log.error("run %s: its record could not be written: %s", run, exc)

    def catch_up(self):
        """Every ended run of the run log that the catalog lacks gets its record; pending ones ask again."""
        if self.book is None:
            return
        try:
            self._catch_up()
        except CatalogError as exc:
            log.error("the run catalog could not be brought up to date: %s", exc)

    def _catch_up(self):
        have = self.book.numbers()
        ended = [e for e in self.runs.book.records() if e.get("result") != "running"]
        missing = [e for e in ended if e["run"] not in have]
        # A run resumed after a crash may have ended again since its record was written: the latest runs are held
        # against the run log's line their record was made from.
        missing += [e for e in ended[-RECHECKED:] if e["run"] in have
                    and (self.book.get(e["run"]) or {}).get("logged") != e.get("logged")]
        if missing:
            logs = self._logs()
            for entry in missing:
                self._write(entry, logs)
            log.info("catalog: %d run(s) recorded from the run log", len(missing))
        self.ask_pending()

    def _write(self, entry, logs=None):
        run = entry["run"]
        alarm_log, config_log = logs or self._logs()
        record = catalogrecord.build(entry, self._settings(run), self._previous_settings(run), alarm_log, config_log,
                                     round(time.time(), 3))
        specs = self.experiment().catalog.values
        record["pending"] = ["values"] if specs and entry.get("start") and entry.get("end") else []
        if record["pending"] == [] and specs:
            record = catalogrecord.with_values(record, {}, specs)
        self._put(record)
        if record["pending"]:
            self._ask(record)

    def _put(self, record):
        """Write `record` (the book keeps the flag a person or a rule gave an earlier version of it)."""
        record = {key: value for key, value in record.items() if key != "flag_history"}
        self.book.put(record)
        if not record["pending"]:
            self._apply_rules(self.book.get(record["run"]))
        self._tell(record["run"], "recorded" if not record["pending"] else "recorded, waiting for its values")

    def _tell(self, run, what):
        """A `run_recorded` event: whoever shows records (the logbook) looks again."""
        self.client.send(None, "_event", kind="run_recorded", run=run, message=f"Run {run} {what} in the catalog")

    def _settings(self, run):
        try:
            return self.configs.book.run_settings(run)
        except (OSError, ValueError, KeyError):
            return {}

    def _previous_settings(self, run):
        earlier = [r["run"] for r in self.runs.book.records() if r["run"] < run and r.get("start")]
        for number in reversed(earlier):
            try:
                return self.configs.book.run_settings(number)
            except (OSError, ValueError, KeyError):
                continue
        return None

    def _logs(self):
        """The latest lines of the alarm log and the settings log."""
        return (read_lines(self.alarms.book.log_path)[-LOG_LINES:],
                read_lines(self.configs.book.log_path)[-LOG_LINES:])

    # --- values from the history ------------------------------------------------------------------

    def ask_pending(self, now=None):
        """Ask the history again for the records still waiting for it (called at start and from the loop)."""
        now = time.monotonic() if now is None else now
        if self.book is None or (now - self.asked_at < ASK_AGAIN_S and now >= self.asked_at):
            return
        self.asked_at = now
        for run in self.book.pending():
            record = self.book.get(run)
            if record is not None:
                self._ask(record)

    def _ask(self, record):
        run = record["run"]
        if run in self.asking:
            return
        specs = self.experiment().catalog.values
        if not specs:   # the experiment lists no values (any more): nothing to wait for
            self._complete(record, {}, specs)
            return
        self.asking.add(run)
        pending = self.client.start({"to": self.experiment().catalog.historian, "cmd": "summary",
                                     "names": [spec.value for spec in specs], "since": record["start"],
                                     "until": record["end"]})

        def finish():
            self.asking.discard(run)
            answer = pending.answer
            if answer is None:
                self.client.abandon(pending)
            result = answer.result if answer is not None and answer.ok else None
            if not isinstance(result, dict) or not isinstance(result.get("values"), dict):
                log.info("run %s: its catalog values wait for the historian (%s)", run,
                         "no answer" if answer is None else answer.error or "no summary")
                return
            complete = result.get("complete_until")
            if not isinstance(complete, (int, float)) or complete < record["end"]:
                log.info("run %s: the history is complete up to %s only; its values wait", run, complete)
                return
            self._complete(record, result["values"], specs)
        self.waiters.add(lambda: pending.answer is not None, finish, SUMMARY_WAIT_S, finish)

    def _complete(self, record, summaries, specs):
        try:
            current = self.book.get(record["run"]) or record
            self._put({**catalogrecord.with_values(current, summaries, specs),
                       "pending": [p for p in current["pending"] if p != "values"], "recorded": round(time.time(), 3)})
        except CatalogError as exc:
            log.error("run %s: its record could not be completed: %s", record["run"], exc)
            return
        log.info("run %s: its record is complete", record["run"])

    # --- flags -------------------------------------------------------------------------------------

    def _apply_rules(self, record):
        """The first rule whose conditions all hold flags a complete record that nobody has flagged."""
        if record["flag"].get("by") is not None:
            return
        facts = catalogquery.facts(record)
        for rule in self.experiment().catalog.rules:
            try:
                holds = catalogquery.matches(catalogquery.parse(list(rule.when)), facts)
            except catalogquery.QueryError as exc:
                log.warning("catalog rule %s: %s", list(rule.when), exc)
                continue
            if holds:
                self.book.flag(record["run"], rule.flag, "rule", rule.why or " and ".join(rule.when),
                               round(time.time(), 3))
                return

    def flag(self, run, value, by, why):
        try:
            record = self._usable().flag(run, value, by, why or None, round(time.time(), 3))
        except NoSuchRun as exc:
            raise Refused(str(exc), protocol.NO_SUCH_RUN) from None
        except catalogquery.QueryError as exc:
            raise Refused(str(exc), protocol.BAD_FIELD) from None
        self._tell(run, f"flagged {value} by {by}")
        return record

    # --- answers ----------------------------------------------------------------------------------

    def _usable(self):
        if self.book is None:
            raise Refused(f"the run catalog is unavailable: {self.problem}", protocol.FAILED)
        return self.book

    def record(self, run):
        record = self._usable().get(run)
        if record is None:
            raise Refused(f"run {run} is not in the catalog (last: {self.book.last()})", protocol.NO_SUCH_RUN)
        return record

    def find(self, words, equals, limit=FIND_LIMIT, offset=0):
        try:
            filters = catalogquery.parse(list(words)) + catalogquery.parse(equals)
            rows, total = self._usable().find(filters, limit=limit, offset=offset)
        except catalogquery.QueryError as exc:
            raise Refused(str(exc), protocol.BAD_FIELD) from None
        return {"runs": rows, "total": total, "limit": limit, "offset": offset}
