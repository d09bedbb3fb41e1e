"""``ems tokens add|remove|list``: the hashed access tokens of the REST API and the dashboard."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    tokens = subparsers.add_parser("tokens", help="access tokens of the REST API and the dashboard (hashed file)")
    actions = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="make a token, print it once, store only its hash",
                             description="Make a random token for NAME with ROLE, print it once on stdout and "
                                         "store its SHA-256 in the tokens file (a NAME already there is replaced).")
    add.add_argument("name", help="who holds the token (shown in logs and the audit), e.g. scada-gw")
    add.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    remove = actions.add_parser("remove", help="drop a token from the tokens file")
    remove.add_argument("name")
    listing = actions.add_parser("list", help="names and roles in the tokens file (never tokens)")
    for parser in (add, remove, listing):
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--file", type=Path, help="the tokens file")
        where.add_argument("--config", type=Path, help="site file: its telemetry.dashboard.tokens_file "
                                                       "(relative to its state directory)")
    add.set_defaults(func=_add)
    remove.set_defaults(func=_remove)
    listing.set_defaults(func=_list)


def tokens_path(args: argparse.Namespace) -> Path:
    """``--file``, else the site file's ``tokens_file``, else ``$EMS_API_TOKENS_FILE``."""
    from controller.api.roles import TOKENS_FILE_ENV

    if args.file is not None:
        return args.file
    if args.config is not None:
        from controller.config import load_config, state_dir
        from controller.telemetry import tokens_file_path

        config = load_config(args.config)
        if config.telemetry.dashboard.tokens_file is None:
            raise SystemExit(f"ems tokens: {args.config} sets no telemetry.dashboard.tokens_file: add one under "
                             "telemetry.dashboard (e.g. tokens_file: api-tokens, in the state directory) for the "
                             "controller to read, or give --file")
        path = tokens_file_path(config.telemetry.dashboard, state_dir(config, args.config), {})
        assert path is not None
        return path
    if os.environ.get(TOKENS_FILE_ENV):
        return Path(os.environ[TOKENS_FILE_ENV])
    raise SystemExit(f"ems tokens: say where the tokens file is (--file, --config or ${TOKENS_FILE_ENV})")


def _add(args: argparse.Namespace) -> int:
    from controller.api.roles import Role, TokenError, new_token, write_entry

    path = tokens_path(args)
    token = new_token()
    try:
        write_entry(path, args.name, Role.parse(args.role), token)
    except TokenError as exc:
        print(f"ems tokens add: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(f"token {args.name!r} ({args.role}) stored hashed in {path}; it is shown only this once", file=sys.stderr)
    return 0


def _remove(args: argparse.Namespace) -> int:
    from controller.api.roles import TokenError, remove_entry

    path = tokens_path(args)
    try:
        removed = path.exists() and remove_entry(path, args.name)
    except TokenError as exc:
        print(f"ems tokens remove: {exc}", file=sys.stderr)
        return 2
    if not removed:
        print(f"ems tokens remove: no token {args.name!r} in {path}", file=sys.stderr)
        return 1
    return 0


def _list(args: argparse.Namespace) -> int:
    from controller.api.roles import TokenError, read_file

    path = tokens_path(args)
    if not path.exists():
        print(f"ems tokens list: no tokens file {path} (`ems tokens add` makes it)", file=sys.stderr)
        return 1
    try:
        tokens = read_file(path)
    except TokenError as exc:
        print(f"ems tokens list: {exc}", file=sys.stderr)
        return 2
    for token in tokens:
        print(f"{token.name} {token.role.label}")
    return 0
