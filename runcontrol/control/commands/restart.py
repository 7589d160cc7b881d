"""Stop a program and start it again (a stopped one is started); answers once the new process is up.

  {"to": "run", "cmd": "restart", "id": 1, "program": "lta1"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"lta1": {"state": "RUNNING", "pid": 4250, ...}}}

Errors: `bad_field` (no `program`, or not a name), `unknown_program` (the experiment has no such program), `failed`
(the new process did not come up: how it ended).
"""

from runcontrol.control.commands.base import PROGRAM

NAME = "restart"
ACTS = True
WAIT_S = 60.0
SCHEMA = {"type": "object", "properties": {"program": PROGRAM}, "required": ["program"]}


def handle(ctl, msg):
    return ctl.programs.restart(msg, msg["program"])
