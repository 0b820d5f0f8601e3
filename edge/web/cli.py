"""`edge web serve | adduser | token`: run the dashboard alone, manage its users."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
import threading
from typing import Any

from edge.errors import EdgeError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from edge.daemon_cli import _config_option

    web = sub.add_parser("web", help="the local dashboard: serve it alone, add users, API tokens")
    actions = web.add_subparsers(dest="action", required=True)
    serve = actions.add_parser(
        "serve", help="serve the dashboard over the state database (without the daemon)"
    )
    _config_option(serve)
    serve.add_argument("--listen", help="ADDRESS:PORT instead of [web] listen")
    add = actions.add_parser(
        "adduser",
        help="add a dashboard user (or change their password and role)",
        description="The password is read from the terminal (asked twice) or, when stdin is "
        "not a terminal, from its first line; never from the command line.",
    )
    _config_option(add)
    add.add_argument("name")
    add.add_argument("--role", choices=("technician", "admin"), default="technician")
    token = actions.add_parser(
        "token", help="make an API bearer token for IT (printed once; only its hash is kept)"
    )
    _config_option(token)
    token.add_argument("name", help="who or what uses it, e.g. prometheus or pacs-admin")
    token.add_argument("--role", choices=("technician", "admin"), default="technician")


def _password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise EdgeError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_web(args: argparse.Namespace) -> int:
    from edge.daemon_cli import load_config
    from edge.web.app import users_path
    from edge.web.auth import Users

    try:
        config, origin = load_config(args)
        if args.action == "adduser":
            path = users_path(config)
            Users(path).add(args.name, args.role, _password())
            print(f"user {args.name} ({args.role}) saved in {path}")
            return EXIT_OK
        if args.action == "token":
            path = users_path(config)
            print(Users(path).add_token(args.name, args.role))
            print(
                f"(token for {args.name}, {args.role}; keep it: it is not shown again)",
                file=sys.stderr,
            )
            return EXIT_OK
        return _serve(config, origin, args.listen)
    except EdgeError as exc:
        print(f"edge web: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _serve(config: Any, origin: str, listen: str | None) -> int:
    from edge.web import serve

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    handle = serve(config, listen=listen)
    print(f"dashboard on {handle.url} (configuration: {origin})", file=sys.stderr, flush=True)
    stop.wait()
    handle.stop()
    return EXIT_OK


COMMANDS = {"web": cmd_web}
