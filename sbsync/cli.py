"""The ``sbsync`` command line: demo, consume, send, peek, session state, and the emulator."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusError

from . import _demo
from ._cli_args import (
    ENV_CONNECTION_STRING,
    CliError,
    connection_string,
    entity,
    positive_float,
    positive_int,
)
from ._consume import main_consume
from .client import ServiceBusClient

# The emulator needs python-qpid-proton (the [emulator] extra); the rest of the CLI does not.
emulator_main: Any
try:
    from .emulator._cli import main as emulator_main
except ImportError:
    emulator_main = None

_DESCRIPTION = """\
Blocking, thread-safe Azure Service Bus from the shell.

The connection string comes from --connection-string or the SERVICEBUS_CONNECTION_STR
environment variable. To try things locally, start an emulator in another terminal:

    sbsync emulator --session-queue orders --queue jobs

and export the connection string it prints on its first line.
"""

_EPILOG = """\
examples:
  sbsync demo                                   # embedded emulator, sessions end to end
  sbsync send jobs 'hello' 'world'              # two messages to queue "jobs"
  echo '{"id": 1}' | sbsync send orders --session-id customer-7
  sbsync peek orders --session customer-7
  sbsync consume jobs --exec 'python handle.py' --concurrency 4
  sbsync consume orders --next-session --exec './process-order.sh'
  sbsync session get-state orders customer-7
"""




def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connection-string",
        metavar="STR",
        default=None,
        help=f"Service Bus connection string (default: ${ENV_CONNECTION_STRING})",
    )


def _add_entity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queue", nargs="?", metavar="QUEUE", help="queue name")
    parser.add_argument(
        "--subscription",
        metavar="TOPIC/SUB",
        help="read a topic subscription instead of a queue",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbsync",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="send and process session messages end to end, with a FIFO check",
        description="Send MESSAGES messages over SESSIONS sessions, process them with a "
        "SessionProcessor that checkpoints session state, and check that every session was "
        "processed exactly once and in order. With no connection string an emulator is "
        "started in-process. Exits 1 if anything was lost or out of order.",
    )
    _add_connection(demo)
    demo.add_argument("--queue", default=_demo.DEMO_QUEUE, help="session-enabled queue to use (default: %(default)s)")
    demo.add_argument("--messages", type=positive_int, default=2000, help="messages to send (default: %(default)s)")
    demo.add_argument("--sessions", type=positive_int, default=20, help="sessions to spread them over (default: %(default)s)")
    demo.add_argument("--workers", type=positive_int, default=8, help="processor worker threads (default: %(default)s)")

    consume = commands.add_parser(
        "consume",
        help="run a command once per message (body on stdin)",
        description="Receive messages and run CMD (through /bin/sh) once per message, with the "
        "body on stdin and the message's properties in SBSYNC_* environment variables. Exit 0 "
        "completes the message; non-zero abandons it (the broker dead-letters it after its max "
        "delivery count) or, with --dead-letter-on-failure, dead-letters it at once. Locks are "
        "renewed while CMD runs. On SIGINT/SIGTERM no new message is taken, running commands "
        "may finish within --grace-period, then they are stopped and their messages abandoned.",
        epilog="exit status: 0 all commands succeeded; 1 some failed; 2 usage or connection "
        "error; 128+N stopped by signal N after draining.",
    )
    _add_connection(consume)
    _add_entity(consume)
    group = consume.add_mutually_exclusive_group()
    group.add_argument("--session", metavar="ID", help="consume this session only")
    group.add_argument("--next-session", action="store_true", help="take whichever sessions are available")
    consume.add_argument("--exec", dest="exec_cmd", required=True, metavar="CMD", help="command run per message")
    consume.add_argument("--max-messages", type=positive_int, default=None, help="stop after this many messages")
    consume.add_argument("--max-wait-time", type=positive_float, default=None, metavar="SECONDS", help="stop after this long with no message (default: run until signalled)")
    consume.add_argument("--concurrency", type=positive_int, default=1, help="commands run at once (default: 1)")
    consume.add_argument("--dead-letter-on-failure", action="store_true", help="dead-letter at once when CMD fails")
    consume.add_argument("--grace-period", type=positive_float, default=30.0, metavar="SECONDS", help="how long running commands may finish after a signal (default: %(default)s)")

    send = commands.add_parser(
        "send",
        help="send messages (arguments, or one per stdin line)",
        description="Send each BODY as a message; with no BODY, send one message per line of stdin.",
    )
    _add_connection(send)
    send.add_argument("queue", nargs="?", metavar="QUEUE", help="queue name")
    send.add_argument("--topic", help="send to a topic instead of a queue")
    send.add_argument("bodies", nargs="*", metavar="BODY")
    send.add_argument("--session-id", help="session id of every message")
    send.add_argument("--property", action="append", default=[], metavar="KEY=VALUE", help="application property (repeatable)")
    send.add_argument("--content-type", default=None)
    send.add_argument("--subject", default=None)

    peek = commands.add_parser("peek", help="print messages without locking them (JSON lines)")
    _add_connection(peek)
    _add_entity(peek)
    peek.add_argument("--session", metavar="ID", help="peek one session of a session-enabled entity")
    peek.add_argument("--count", type=positive_int, default=10, help="how many (default: %(default)s)")

    session = commands.add_parser("session", help="read, write or list session state")
    session_commands = session.add_subparsers(dest="session_command", metavar="ACTION")
    for name, help_text in (
        ("get-state", "print a session's state"),
        ("set-state", "set a session's state (VALUE, or stdin)"),
        ("list", "list sessions with messages or state"),
    ):
        action = session_commands.add_parser(name, help=help_text)
        _add_connection(action)
        _add_entity(action)
        if name != "list":
            action.add_argument("session_id", metavar="SESSION")
        if name == "set-state":
            action.add_argument("value", nargs="?", metavar="VALUE")

    commands.add_parser(
        "emulator",
        help="run the local Service Bus emulator (same as python -m sbsync.emulator)",
        add_help=False,
    )
    return parser


def _client(args: argparse.Namespace) -> Any:
    return ServiceBusClient.from_connection_string(connection_string(args))


def _receiver(client: Any, args: argparse.Namespace, **kwargs: Any) -> Any:
    name, subscription = entity(args)
    if subscription is None:
        return client.get_queue_receiver(name, **kwargs)
    return client.get_subscription_receiver(name, subscription, **kwargs)


def _cmd_send(args: argparse.Namespace) -> int:
    if bool(args.queue) == bool(args.topic):
        raise CliError("name a QUEUE or give --topic TOPIC (one of them)")
    properties: dict[str | bytes, Any] = {}
    for item in args.property:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--property must look like KEY=VALUE, got {item!r}")
        properties[key] = value
    bodies = args.bodies or [line.rstrip("\n") for line in sys.stdin]
    messages = [
        ServiceBusMessage(
            body,
            session_id=args.session_id,
            application_properties=properties or None,
            content_type=args.content_type,
            subject=args.subject,
        )
        for body in bodies
    ]
    with _client(args) as client:
        sender = (
            client.get_queue_sender(args.queue)
            if args.queue
            else client.get_topic_sender(args.topic)
        )
        with sender:
            sender.send_messages(messages)
    print(f"sent {len(messages)} message(s)", file=sys.stderr)
    return 0


def message_to_json(message: Any) -> dict[str, Any]:
    """The parts of a received message worth printing, as JSON-ready values."""
    def text(value: Any) -> Any:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    return {
        "sequence_number": message.sequence_number,
        "message_id": text(message.message_id),
        "session_id": text(message.session_id),
        "enqueued_time_utc": str(message.enqueued_time_utc),
        "delivery_count": message.delivery_count,
        "subject": text(message.subject),
        "content_type": text(message.content_type),
        "application_properties": {
            text(k): text(v) for k, v in (message.application_properties or {}).items()
        },
        "body": str(message),
    }


def _cmd_peek(args: argparse.Namespace) -> int:
    with _client(args) as client:
        with _receiver(client, args, session_id=args.session) as receiver:
            for message in receiver.peek_messages(max_message_count=args.count):
                print(json.dumps(message_to_json(message)))
    return 0


def _cmd_session(args: argparse.Namespace) -> int:
    if args.session_command is None:
        raise CliError("say what to do: sbsync session get-state|set-state|list")
    with _client(args) as client:
        if args.session_command == "list":
            name, subscription = entity(args)
            ids = (
                client.list_queue_sessions(name)
                if subscription is None
                else client.list_subscription_sessions(name, subscription)
            )
            for session_id in ids:
                print(session_id)
            return 0
        with _receiver(client, args, session_id=args.session_id, max_wait_time=5) as receiver:
            if args.session_command == "get-state":
                state = receiver.session.get_state()
                if state is not None:
                    sys.stdout.write(state.decode("utf-8", "replace") + "\n")
            else:
                value = args.value if args.value is not None else sys.stdin.read()
                receiver.session.set_state(value)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        if emulator_main is None:
            print("sbsync emulator: needs python-qpid-proton: pip install 'sbsync[emulator]'", file=sys.stderr)
            return 2
        return emulator_main(argv[1:], prog="sbsync emulator")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The SDK warns about every link it tears down; that is noise at a terminal unless -vv.
    logging.getLogger("azure").setLevel(logging.DEBUG if args.verbose >= 2 else logging.ERROR)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            conn = args.connection_string or os.environ.get(ENV_CONNECTION_STRING)
            return _demo.main_demo(args, conn)
        if args.command == "consume":
            return main_consume(args)
        if args.command == "send":
            return _cmd_send(args)
        if args.command == "peek":
            return _cmd_peek(args)
        return _cmd_session(args)
    except CliError as exc:
        print(f"sbsync {args.command}: {exc}", file=sys.stderr)
        return 2
    except (ServiceBusError, ValueError, TypeError) as exc:
        print(f"sbsync {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
