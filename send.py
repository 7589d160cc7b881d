#!/usr/bin/env python3
"""Send one message to an Orbit client or the server, and print the answer.

  python send.py '{"to": "lta1", "cmd": "status"}'
  python send.py lta1 set_point value=140 unit=K
  python send.py server _status

Values of key=value are JSON when they parse as JSON (40, true, [1,2]), else strings;
key=@FILE takes the value from a JSON file:
  python send.py run set_config program=bias values=@bias-settings.json
key=@@FILE adds the file, as an attachment {"name", "base64"}, to the list `key` (the logbook's notes):
  python send.py logbook note text="cold again" run=12 attachments=@@plot.png attachments=@@cryo.log
KEY<VALUE (also <=, >, >=, != and ~) is a condition, collected in `where` (the run catalog's find):
  python send.py --csv run find flag=good bias.volts=60 'temperature.max<140' 
Exit status: 0 ok answer (or sent, with --no-wait), 1 error answer, 2 bad usage or
bad JSON, 3 no answer (no server found, or no reply within --wait).
"""

import argparse
import csv
import json
import logging
import os
import re
import sys

from runcontrol import logsetup, protocol
from runcontrol.bus import commands as server_commands
from runcontrol.control import commands as run_commands
from runcontrol.control.operator import Operator, attachment
from runcontrol.errors import ConfigError, Refused, RequestFailed, RequestTimeout, ServerUnavailable

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3
CONDITION = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*(!=|<=|>=|<|>|~)")
DEFAULT_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 3.0


class UsageError(Exception):
    pass


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="send.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Commands the server answers itself:\n\n" + server_commands.help_text()
        + "\nCommands of the run controller (python send.py run CMD [KEY=VALUE ...]); the request, answer and\n"
          "errors of each: docs/protocol.md, or python -m pydoc runcontrol.control.commands.CMD\n\n"
        + run_commands.help_text())
    parser.add_argument("words", nargs="+", metavar="MESSAGE | TO CMD [KEY=VALUE ...]")
    parser.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                        help=f"how long to wait for the answer (default {DEFAULT_WAIT_S:g}; 0: do not wait)")
    parser.add_argument("--no-wait", action="store_true", help="send one-way, without waiting for an answer")
    parser.add_argument("--server", help="router address of the server (default: $ORBIT_SERVER, else the beacon)")
    parser.add_argument("--experiment", help="experiment name or file whose server to use")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S, metavar="SECONDS")
    parser.add_argument("--csv", action="store_true",
                        help="print a table answer (history's {name: [[ts, min, max, mean], ...]}, or a list of "
                             "objects) as CSV, for spreadsheets")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def build_message(words):
    """The message the words stand for: one JSON object, or TO CMD KEY=VALUE..."""
    if len(words) == 1 and words[0].lstrip().startswith(("{", "[")):
        try:
            msg = json.loads(words[0])
        except json.JSONDecodeError as exc:
            raise UsageError(f"bad JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}") \
                from None
        if not isinstance(msg, dict):
            raise UsageError("the message must be a JSON object")
        if not isinstance(msg.get("cmd"), str) or not msg["cmd"]:
            raise UsageError('the message needs "cmd", a non-empty string')
        return msg
    if len(words) < 2:
        raise UsageError("give a JSON message, or TO CMD [KEY=VALUE ...]")
    to, cmd, pairs = words[0], words[1], words[2:]
    msg = {"cmd": cmd} if to == protocol.SERVER else {"to": to, "cmd": cmd}
    for pair in pairs:
        if CONDITION.match(pair):   # KEY<VALUE and the like: a condition of the run catalog's `find`
            msg.setdefault("where", []).append(pair)
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {pair!r} is not KEY=VALUE")
        if key in ("to", "cmd", "from", "ts", "re"):
            raise UsageError(f"{key!r} is reserved and cannot be given as KEY=VALUE")
        if value.startswith("@@"):   # a file's bytes as an attachment; each one more in the list
            attached = msg.setdefault(key, [])
            if not isinstance(attached, list):
                raise UsageError(f"{key!r} is given both as a value and as @@FILE")
            attached.append(read_attachment(value[2:]))
        else:
            msg[key] = read_json_file(value[1:]) if value.startswith("@") else parse_value(value)
    return msg


def read_attachment(path):
    try:
        return attachment(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def read_json_file(path):
    try:
        with open(path, encoding="utf-8") as source:
            return json.load(source)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def show_progress(msg):
    data = {k: v for k, v in msg.items() if k not in ("cmd", "re", "from", "to", "ts")}
    print(f"progress: {json.dumps(data)}", file=sys.stderr, flush=True)


def send(args, msg):
    wait_s = 0.0 if args.no_wait else args.wait
    with Operator(args.experiment, args.server, f"send-{os.getpid()}", args.connect_timeout) as op:
        if wait_s <= 0:
            msg.pop("id", None)
            op.send(msg.pop("to", None), msg.pop("cmd"), **msg)
            return EXIT_OK
        result = op.call(msg, wait_s, show_progress)
    if args.csv:
        write_csv(result, sys.stdout)
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    return EXIT_OK


HISTORY_COLUMNS = ["name", "ts", "min", "max", "mean"]


def write_csv(result, out):
    """A table answer as CSV: {name: [[...], ...]} (a row per inner list, the name first), or [{...}, ...] (also
    inside an answer that holds one such list beside single figures, as find's `runs`)."""
    writer = csv.writer(out)
    history = isinstance(result, dict) and all(isinstance(rows, list) and all(isinstance(r, list) for r in rows)
                                               for rows in result.values())
    tables = [v for v in result.values() if is_rows(v)] if isinstance(result, dict) and not history else []
    if len(tables) == 1 and all(not isinstance(v, (dict, list)) or v is tables[0] for v in result.values()):
        result = tables[0]
    if history:
        widths = {len(r) for rows in result.values() for r in rows}
        writer.writerow(HISTORY_COLUMNS if widths <= {4} else ["name", *(f"c{i}" for i in range(max(widths)))])
        for name, rows in result.items():
            writer.writerows([name, *row] for row in rows)
    elif is_rows(result):
        columns = list(dict.fromkeys(key for row in result for key in row))
        writer.writerow(columns)
        writer.writerows([json.dumps(v) if isinstance(v, (dict, list)) else v for v in (row.get(c) for c in columns)]
                         for row in result)
    else:
        raise UsageError("the answer is not a table (an object of lists of rows, or a list of objects): "
                         "ask without --csv")


def is_rows(value):
    return isinstance(value, list) and all(isinstance(r, dict) for r in value)


def main(argv=None):
    args = parse_args(argv)
    logsetup.configure(logging.INFO if args.verbose else logging.WARNING, sys.stderr)
    try:
        return send(args, build_message(args.words))
    except UsageError as exc:
        print(f"send.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"send.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ServerUnavailable, RequestTimeout) as exc:
        print(f"send.py: no answer: {exc}", file=sys.stderr)
        return EXIT_NO_ANSWER
    except (Refused, RequestFailed) as exc:
        print(f"error ({exc.code}): {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
