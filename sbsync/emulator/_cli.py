"""``python -m sbsync.emulator``: run the emulator in the foreground until SIGINT or SIGTERM.

The first line on stdout is the connection string (flushed at once, so a parent process can
read it and connect); everything else goes to stderr. ``main`` is reusable by other CLIs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from ._config import ConfigError, EntityConfig, load_config

if TYPE_CHECKING:
    from ._server import Emulator

_LOGGER = logging.getLogger(__name__)

# The same values as sbsync.emulator.DEFAULT_KEY_NAME / DEFAULT_KEY (a test keeps them equal),
# repeated so that --help and flag errors work without python-qpid-proton installed.
_DEV_KEY_NAME = "RootManageSharedAccessKey"
_DEV_KEY = "SAS_KEY_VALUE"


class UsageError(Exception):
    """A flag value that parses but makes no sense (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line on stderr instead of usage plus a message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str = "python -m sbsync.emulator") -> argparse.ArgumentParser:
    """The argument parser; other CLIs may embed it under their own ``prog``."""
    parser = _Parser(
        prog=prog,
        description=(
            "Run a local Azure Service Bus emulator (AMQP 1.0; AMQPS and HTTPS on the same "
            "port) for development and tests. Prints the connection string as the first line "
            "on stdout, then serves until SIGINT or SIGTERM."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument(
        "--port", type=_port, default=5672, help="TCP port, 0 for a free one (%(default)s)"
    )
    tls = parser.add_argument_group(
        "TLS (the main port also accepts TLS: clients tell it apart by the first byte)")
    tls.add_argument(
        "--tls-port", type=_port, default=None, metavar="PORT",
        help="also listen for TLS only on PORT (0 = a free one), for clients that insist on "
             "AMQPS port 5671 (the SDK's uAMQP transport)")
    tls.add_argument(
        "--tls-cert", metavar="CERT.pem",
        help="server certificate (chain) in PEM; default: a generated development CA and "
             "certificate for localhost/127.0.0.1, whose CA file path is logged")
    tls.add_argument("--tls-key", metavar="KEY.pem",
                     help="private key of --tls-cert (if not inside that file)")
    entities = parser.add_argument_group("entities (each flag may be repeated)")
    entities.add_argument("--queue", action="append", default=[], metavar="NAME")
    entities.add_argument("--session-queue", action="append", default=[], metavar="NAME")
    entities.add_argument("--topic", action="append", default=[], metavar="NAME")
    entities.add_argument(
        "--subscription",
        action="append",
        default=[],
        type=_subscription,
        metavar="TOPIC/NAME",
        help="a subscription (its topic is created too)",
    )
    entities.add_argument(
        "--session-subscription",
        action="append",
        default=[],
        type=_subscription,
        metavar="TOPIC/NAME",
    )
    entities.add_argument(
        "--config",
        metavar="FILE",
        help="entities from a Microsoft Service Bus emulator Config.json",
    )
    entities.add_argument(
        "--auto-create",
        action="store_true",
        help="create a queue on first use of an unknown entity name",
    )
    settings = parser.add_argument_group("entity defaults")
    settings.add_argument(
        "--lock-duration",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="peek-lock and session lock duration (%(default)s)",
    )
    settings.add_argument(
        "--max-delivery-count",
        type=_positive_int,
        default=10,
        metavar="N",
        help="deliveries before a message is dead-lettered (%(default)s)",
    )
    settings.add_argument(
        "--default-message-ttl",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="time to live of messages that set none (default: unlimited)",
    )
    settings.add_argument(
        "--next-session-wait",
        type=_positive_float,
        default=65.0,
        metavar="SECONDS",
        help="how long a next-available-session receiver that sets no timeout of its own "
             "waits for a session (%(default)s, as the service)",
    )
    auth = parser.add_argument_group("authentication (development defaults, not secrets)")
    auth.add_argument("--key-name", default=_DEV_KEY_NAME, help="SAS key name (%(default)s)")
    auth.add_argument("--key", default=_DEV_KEY, help="SAS key (%(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m sbsync.emulator") -> int:
    """Run the emulator until SIGINT/SIGTERM; return the process exit status."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2), already reported
        return exc.code if isinstance(exc.code, int) else 2
    _configure_logging(args.verbose)
    try:
        emulator = _create_emulator(args)
    except (UsageError, ConfigError) as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
    except ImportError as exc:
        sys.stderr.write(f"{prog}: error: {exc}; install it with: pip install 'sbsync[emulator]'\n")
        return 1
    try:
        emulator.start()
    except Exception as exc:  # e.g. the port is taken: one line, not a traceback
        _LOGGER.debug("start failed", exc_info=True)
        sys.stderr.write(f"{prog}: error: cannot start on {args.host}:{args.port}: {exc}\n")
        return 1
    try:
        sys.stdout.write(emulator.connection_string + "\n")
        sys.stdout.flush()
        _LOGGER.info("listening on %s:%s; stop with Ctrl+C", emulator.host, emulator.port)
        if emulator.tls_port is not None or args.tls_cert:
            if emulator.tls_port is not None:
                _LOGGER.info("TLS only on %s:%s", emulator.host, emulator.tls_port)
            _LOGGER.info("TLS clients trust %s (connection_verify=, REQUESTS_CA_BUNDLE, "
                         "NODE_EXTRA_CA_CERTS)", emulator.ca_file)
        else:  # making the CA costs ~10 MiB and ~0.3 s: only when a TLS client comes
            _LOGGER.info("TLS on the same port too: its development CA is made (and its "
                         "path logged) on the first TLS connection; --tls-port or "
                         "--tls-cert make it now")
        _wait_for_signal()
    finally:
        emulator.stop()
    _LOGGER.info("stopped")
    return 0


def _create_emulator(args: argparse.Namespace) -> Emulator:
    from . import Emulator  # needs python-qpid-proton, an optional dependency

    entities: list[EntityConfig] = load_config(args.config) if args.config else []
    declared = {e.path.lower(): "--config" for e in entities}

    def declare(path: str, flag: str) -> None:
        # Entity names are case-insensitive; one declared twice is ambiguous, so refuse it.
        key = path.lower()
        if key in declared:
            raise UsageError(f"{path!r} is declared twice ({declared[key]} and {flag})")
        declared[key] = flag

    for flag, names in (
        ("--queue", args.queue),
        ("--session-queue", args.session_queue),
        ("--topic", args.topic),
    ):
        for name in names:
            declare(name, flag)
    topics = list(args.topic)
    for flag, pairs in (
        ("--subscription", args.subscription),
        ("--session-subscription", args.session_subscription),
    ):
        for topic, sub in pairs:
            declare(f"{topic}/Subscriptions/{sub}", flag)
            if topic.lower() not in declared:  # a subscription needs its topic
                declared[topic.lower()] = flag
                topics.append(topic)
    try:
        return _build(Emulator, args, topics, entities)
    except ValueError as exc:  # e.g. a TLS file that does not exist
        raise UsageError(str(exc)) from None


def _build(emulator_class: type[Emulator], args: argparse.Namespace, topics: list[str],
           entities: list[EntityConfig]) -> Emulator:
    return emulator_class(
        host=args.host,
        port=args.port,
        queues=args.queue,
        session_queues=args.session_queue,
        topics=topics,
        subscriptions=[f"{t}/{s}" for t, s in args.subscription],
        session_subscriptions=[f"{t}/{s}" for t, s in args.session_subscription],
        entities=entities,
        lock_duration=args.lock_duration,
        max_delivery_count=args.max_delivery_count,
        default_message_ttl=args.default_message_ttl,
        key_name=args.key_name,
        key=args.key,
        auto_create=args.auto_create,
        tls_port=args.tls_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        next_session_wait=args.next_session_wait,
    )


def _wait_for_signal() -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _LOGGER.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        stop.wait()  # signals only reach the main thread; an embedding caller stops us
        return
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A timed wait keeps the main thread returning to the interpreter to run handlers.
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        _LOGGER.setLevel(logging.INFO)
        logging.getLogger("sbsync.emulator._tls").setLevel(logging.INFO)  # the CA's path


def _port(text: str) -> int:
    port = _int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {text}")
    return port


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _subscription(text: str) -> tuple[str, str]:
    topic, sep, name = text.partition("/")
    if not sep or not topic or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected TOPIC/NAME, got {text!r}")
    return topic, name
