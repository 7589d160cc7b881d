"""The root of Orbit's errors and the one for an invalid description, kept on the lowest floor.

Experiment descriptions are read by every layer, so their error lives here, below
them all; `runcontrol/errors.py` adopts both and adds the rest of the hierarchy.
"""


class RunControlError(Exception):
    """Base of every error Orbit raises on purpose."""


class ConfigError(RunControlError):
    """An experiment description or a setting is invalid; `problems` lists each one."""

    def __init__(self, message, problems=()):
        super().__init__(message)
        self.problems = list(problems)
