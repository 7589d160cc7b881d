"""The web page's operators: who may act from it.

  python -m web.users --experiment damicm add anna      # asks the password twice (or reads a line from stdin)
  python -m web.users --experiment damicm remove anna
  python -m web.users --experiment damicm list

The file is `<paths.state>/web-users.json` of the experiment (or --file), mode
0600, one scrypt hash per operator. Without it the page is read-only.
"""

import argparse
import getpass
import sys
from pathlib import Path

import experiments
from runcontrol.errors import ConfigError
from web.auth import Users

FILE_NAME = "web-users.json"


def users_file(experiment):
    """Where an experiment's web operators are kept."""
    return experiment.paths.state / FILE_NAME


def read_password(stream=sys.stdin):
    if not stream.isatty():
        return stream.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ConfigError("the two passwords differ")
    return first


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m web.users", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--experiment", default="damicm", help="experiment name or file (default damicm)")
    where.add_argument("--file", help="the password file itself")
    parser.add_argument("action", choices=("add", "remove", "list"))
    parser.add_argument("name", nargs="?")
    args = parser.parse_args(argv)
    try:
        users = Users(Path(args.file) if args.file else users_file(experiments.load(args.experiment)))
        if args.action == "list":
            print("\n".join(sorted(users.read())))
            return 0
        if not args.name:
            raise ConfigError(f"{args.action} needs the operator's name")
        if args.action == "add":
            users.set(args.name, read_password())
            print(f"{args.name} may act from the web page ({users.path})")
        else:
            users.remove(args.name)
            print(f"{args.name} removed from {users.path}")
    except ConfigError as exc:
        print(f"web.users: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
