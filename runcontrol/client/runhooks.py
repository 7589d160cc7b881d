"""Taking part in runs and in settings: the hooks a program overrides, and what they leave.

Owns `on_prepare`, `on_begin`, `on_pause`, `on_resume`, `on_end` (run transitions, `run_state` and
`run_number` after them), `config_schema`, `config` and `on_config` (settings
the run controller delivers), and the library's own commands that call them
(`_transition`, `_config`). Must not send: their results are the answers the
caller hands on.
"""

from runcontrol import configschema, protocol
from runcontrol.client.requests import RUN_STATE_AFTER, Run
from runcontrol.errors import ProtocolError, Refused


class RunHooks:
    """A program with settings names them in `config_schema` (a JSON Schema of an object, see
    runcontrol.configschema): announced when it registers; `self.config` holds the current ones (the
    schema's defaults until the run controller delivers them), and `on_config(new, old)` may refuse a change."""

    config_schema = None

    def __init__(self):
        self.config = configschema.defaults(self.config_schema) if self.config_schema is not None else {}
        self.run_state = "STOP"
        self.run_number = None

    def _announced(self, meta):
        """`meta` with the settings' schema, as the hello says it."""
        meta = dict(meta or {})
        if self.config_schema is not None:
            meta[configschema.META_KEY] = self.config_schema
        return meta

    def on_prepare(self, run):
        """Override to get ready for run `run.number`; raise Refused to refuse, return a Deferred if slow."""

    def on_begin(self, run):
        """Override to start taking data for `run.number` (with `run.comment`, `run.params`)."""

    def on_pause(self, run):
        """Override to hold data taking while the run is paused (nothing to do by default)."""

    def on_resume(self, run):
        """Override to take data again after a pause."""

    def on_end(self, run):
        """Override to stop taking data (`run.abort` when the run is aborted). A slow end (draining buffers)
        returns a Deferred, reports `deferred.progress(fraction=0.4, text="...")` while it works, and resolves it
        when done: the run controller waits for it up to the program's `transitions.defer_limit`."""

    def on_config(self, new, old):
        """Override to apply settings (`new`, all of them; `old`: those before); raise Refused to keep `old`."""

    def _on_transition(self, msg):
        try:
            run = Run(protocol.parse_transition(msg), msg)
        except ProtocolError as exc:
            raise Refused(str(exc), exc.code) from None
        hook = {"prepare": self.on_prepare, "begin": self.on_begin, "pause": self.on_pause, "resume": self.on_resume,
                "end": self.on_end}[run.transition]
        result = hook(run)
        self.run_state = RUN_STATE_AFTER[run.transition]
        self.run_number = run.number
        return result if result is not None else {"state": self.run_state, "run": run.number}

    def _on_config(self, msg):
        new = msg.get("config")
        if not isinstance(new, dict):
            raise Refused("'_config' needs 'config': an object of settings", protocol.BAD_FIELD)
        self.on_config(new, dict(self.config))
        self.config = dict(new)
        return {"applied": True}
