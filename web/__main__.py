"""The web program: a status page, its JSON API and `/metrics`, as a client of the bus.

  python -m web --name web --listen 127.0.0.1:8080 [--experiment FILE] [--users FILE] [--insecure]
      [--cert FILE --key FILE]

Listens on loopback by default. Off loopback it needs the operators' password
file (`python -m web.users add NAME`), or `--insecure` for a read-only page on a
private network; there the session cookie is Secure, so operators log in through
HTTPS: `--cert`/`--key` (PEM) serve it, or a TLS proxy in front. Without the
password file the page is read-only. Stops on SIGTERM or SIGINT.
"""

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys

from aiohttp import web

import experiments
from runcontrol.client.aio import serve
from runcontrol.client.client import Client
from experiments.checks import is_loopback_host
from runcontrol import logsetup
from runcontrol.errors import ConfigError
from web.app import make_app
from web.auth import Users
from web.feed import Feed
from web.users import users_file

log = logging.getLogger("web")


def arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m web", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--name", default="web")
    parser.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    parser.add_argument("--experiment", default=os.environ.get("ORBIT_EXPERIMENT"))
    parser.add_argument("--users", help="the operators' password file (default: <paths.state>/web-users.json)")
    parser.add_argument("--insecure", action="store_true", help="allow a bind off loopback without a password file")
    parser.add_argument("--cert", help="serve HTTPS with this certificate (PEM; with --key)")
    parser.add_argument("--key", help="the certificate's private key (PEM)")
    return parser.parse_args(argv)


def settings(args):
    """(host, port, Users) from the arguments; ConfigError when they do not hold together."""
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {args.listen!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    if args.users:
        users = Users(args.users)
    elif args.experiment:
        users = Users(users_file(experiments.load(args.experiment)))
    else:
        users = Users("web-users.json")
    if not is_loopback_host(host) and not users.exists() and not args.insecure:
        raise ConfigError(f"--listen {args.listen}: off loopback the page needs the operators' password file "
                          f"({users.path}: python -m web.users add NAME), or --insecure")
    users.read()   # a damaged file is said now, not at the first login
    if bool(args.cert) != bool(args.key):
        raise ConfigError("--cert and --key go together")
    return host, int(port), users


def tls_context(args):
    """An SSL context from --cert and --key, or None for plain HTTP."""
    if not args.cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.cert, args.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--cert {args.cert} --key {args.key}: {exc}") from None
    return context


async def run(args, host, port, users, tls):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with Client(args.name, experiment=args.experiment, meta={"role": "web", "listen": f"{host}:{port}"}) as client:
        feed = Feed(client)
        data = experiments.load(args.experiment).paths.data if args.experiment else None
        runner = web_runner(feed, client, users, tls is not None or not is_loopback_host(host), data)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=tls).start()
            log.info("serving %s://%s:%d/ (%s)", "https" if tls else "http", host, port,
                     "operators may act" if users.exists() else "read-only: no operator file")
            if not is_loopback_host(host) and users.exists() and tls is None:
                log.warning("off loopback the session cookie is Secure: operators log in only through HTTPS "
                            "(a TLS proxy in front, or --cert and --key)")
            if not is_loopback_host(host) and not users.exists():
                log.warning("listening off loopback without operators (--insecure): anyone there can read the page")
            await asyncio.gather(serve(client, stop), feed.refresh_forever(stop))
        finally:
            feed.close_pages()
            await runner.cleanup()


def web_runner(feed, client, users, secure_cookies, data=None):
    return web.AppRunner(make_app(feed, client, users, secure_cookies, data), access_log=None)


def main(argv=None):
    args = arguments(argv)
    logsetup.configure("INFO", sys.stderr)
    try:
        host, port, users = settings(args)
        tls = tls_context(args)
    except ConfigError as exc:
        print(f"web: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(args, host, port, users, tls))
    except OSError as exc:
        print(f"web: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
