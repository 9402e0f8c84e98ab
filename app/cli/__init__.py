"""Operator CLI: `python -m app.cli --help` (from the repository: `make cli ARGS="--help"`).

Beside `make dev` it needs no set-up: it reads the settings `make dev` keeps in .data/dev.env,
under the environment and `.env`. Every failure is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from app.config.development import DEV_SETTINGS_FILE, load_development_settings

EXIT_ERROR = 2


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage first; one line and the way to more is enough.
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m app.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, module: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(module=module, function=name.replace("-", "_"))
        return sub

    tenant = command("create-tenant", "create a tenant", "tenants")
    tenant.add_argument("--name", required=True)
    tenant.add_argument("--slug", required=True)
    tenant.add_argument("--plan", default="free", help="a plan of GET /api/v1/plans")

    key = command("create-api-key", "issue an API key for a tenant (by slug)", "tenants")
    key.add_argument("--tenant", required=True, help="tenant slug")
    key.add_argument("--name", default="operator")
    key.add_argument("--role", default="admin", choices=["admin", "read_only"])

    demo = command("seed-demo", "create the demo tenant and its key (idempotent)", "tenants")
    demo.add_argument("--key-file", default=".data/demo-api-key")

    close = command(
        "close-period",
        "invoice a billing period (YYYY-MM) that has ended plus one hour",
        "billing",
    )
    close.add_argument("period", help="the month, YYYY-MM, in each tenant's timezone")
    close.add_argument("--tenant", help="one tenant's slug (default: every tenant)")
    close.add_argument(
        "--reissue",
        action="store_true",
        help="invoice again a period whose invoice was voided (a new number; needs --tenant)",
    )

    rotate = command(
        "rotate-encryption-key",
        "re-encrypt every stored webhook secret with the first key of ENCRYPTION_KEYS",
        "encryption",
    )
    rotate.add_argument("--batch-size", type=int, default=100, help="endpoints per transaction")

    talk = command(
        "talk",
        "call a number of a running server as Twilio would, and talk to its agent by typing",
        "talk",
    )
    talk.add_argument("--number", required=True, help="the tenant's number to call (E.164)")
    talk.add_argument(
        "--from", dest="caller", default="+14155550199", help="the caller's number (E.164)"
    )
    talk.add_argument(
        "--server",
        help="where the server listens, if not at PUBLIC_BASE_URL (requests are still signed "
        "over PUBLIC_BASE_URL, as Twilio signs them)",
    )
    return parser


def _settings_problem() -> str | None:
    """The usual first-run mistake, said plainly before the settings say it their own way."""
    if os.environ.get("DATABASE_URL") or os.environ.get("ADMIN_API_KEY"):
        return None
    from dotenv import dotenv_values

    if dotenv_values(".env").get("DATABASE_URL"):
        return None
    return (
        f"no settings: start `make dev` (it keeps them in {DEV_SETTINGS_FILE}), "
        "or set DATABASE_URL and ADMIN_API_KEY"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    load_development_settings()
    try:
        problem = _settings_problem()
        if problem:
            raise CliError(problem)
        module = importlib.import_module(f"app.cli.{args.module}")
        return int(getattr(module, args.function)(args))
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as error:  # noqa: BLE001 - an operator gets one line, not a traceback
        print(f"error: {_describe(error)}", file=sys.stderr)
        return EXIT_ERROR


def _describe(error: Exception) -> str:
    from sqlalchemy.exc import OperationalError

    from app.errors import AppError

    if isinstance(error, AppError):
        return error.detail
    if isinstance(error, OperationalError):
        return "cannot reach the database: is `make dev` running?"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
