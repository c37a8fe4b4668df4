"""What the CLI's commands share: its error type and argument helpers (a leaf module, so that
``cli`` and ``_consume`` need not import each other)."""

from __future__ import annotations

import argparse
import os

__all__ = ["ENV_CONNECTION_STRING", "CliError", "connection_string", "entity", "positive_float", "positive_int"]

ENV_CONNECTION_STRING = "SERVICEBUS_CONNECTION_STR"


class CliError(Exception):
    """A problem with the command line or its input: printed as one line, exit status 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def connection_string(args: argparse.Namespace) -> str:
    value = args.connection_string or os.environ.get(ENV_CONNECTION_STRING)
    if not value:
        raise CliError(
            f"no connection string: pass --connection-string or set {ENV_CONNECTION_STRING}"
        )
    return str(value)


def entity(args: argparse.Namespace) -> tuple[str, str | None]:
    """(queue or topic, subscription or None) from QUEUE / --subscription TOPIC/SUB."""
    if args.subscription:
        if args.queue:
            raise CliError("give either QUEUE or --subscription TOPIC/SUB, not both")
        topic, _, subscription = args.subscription.partition("/")
        if not topic or not subscription:
            raise CliError(f"--subscription must look like TOPIC/SUB, got {args.subscription!r}")
        return topic, subscription
    if not args.queue:
        raise CliError("name a QUEUE (or --subscription TOPIC/SUB)")
    return args.queue, None
