"""Quiet logs: the SDK's tracebacks about errors sbsync handles stay off stderr; the user's own
SDK calls, and errors sbsync cannot handle, are reported as before (once)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport
from azure.servicebus.exceptions import ServiceBusError

import sbsync

DUMMY = "Endpoint=sb://logs.invalid/;SharedAccessKeyName=k;SharedAccessKey=v"
SDK_LOGGER = "azure.servicebus.aio._base_handler_async"


@pytest.fixture
def stderr_like() -> Iterator[io.StringIO]:
    """What a WARNING handler (like logging's last resort, which prints to stderr) shows."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)


def _sdk_maps_an_unexpected_error() -> ServiceBusError:
    """The SDK's own mapping of an unexpected error, which logs it with its traceback."""
    try:
        raise ValueError("Management Operation error occurred.")
    except ValueError as exc:
        return PyamqpTransport.create_servicebus_exception(logging.getLogger(SDK_LOGGER), exc)


def test_sdk_tracebacks_on_sbsync_loop_threads_go_to_debug(stderr_like, caplog):
    client = sbsync.ServiceBusClient.from_connection_string(DUMMY)
    try:

        async def on_the_loop() -> ServiceBusError:
            return _sdk_maps_an_unexpected_error()

        with caplog.at_level(logging.DEBUG, logger=SDK_LOGGER):
            error = client._portal.call(on_the_loop)
        assert isinstance(error, ServiceBusError)  # sbsync raises this to the caller
        assert stderr_like.getvalue() == ""
        (record,) = [r for r in caplog.records if "Unexpected error occurred" in r.getMessage()]
        assert record.levelno == logging.DEBUG and record.exc_info  # still there for DEBUG logs

        # The user's own SDK use, on their own thread, logs as the SDK always did.
        _sdk_maps_an_unexpected_error()
        assert "Unexpected error occurred" in stderr_like.getvalue()
        assert "Traceback (most recent call last)" in stderr_like.getvalue()
    finally:
        client.close()


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from sbsync import ServiceBusClient, ServiceBusMessage, SessionProcessor
    from sbsync.emulator import Emulator

    if "--no-filter" in sys.argv:  # what stderr shows without the filter
        import sbsync.client
        sbsync.client.install_log_filter = lambda: None

    with Emulator(queues=["q"], session_queues=["sq"]) as emu:
        client = ServiceBusClient.from_connection_string(emu.connection_string, retry_backoff_factor=0.05)
        with client:
            # Handled: a processor idles on a queue with no session to take (each accept times
            # out, and the SDK logs its cleanup of the half-open link with a traceback).
            processor = SessionProcessor(client, handler=lambda context, message: None, queue_name="sq", max_concurrent_sessions=2)
            processor.start()
            time.sleep(2.5)
            processor.stop()
            sender = client.get_queue_sender("q")
            receiver = client.get_queue_receiver("q", max_wait_time=5)
            sender.send_messages(ServiceBusMessage("first"))
            for _ in range(2):  # recovered: the connection drops, sbsync retries
                emu.faults.drop_connections()
                sender.send_messages(ServiceBusMessage("again"))
                receiver.peek_messages(1)
            emu.faults.fail_next(2, operation="send")  # recovered: the broker is busy twice
            sender.send_messages(ServiceBusMessage("busy"))
            client.get_queue_sender("no-such-queue").send_messages(ServiceBusMessage("lost"))  # not recovered
    """
)


def test_recovered_errors_leave_no_traceback_and_an_unhandled_one_shows_once():
    runs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT, *flag], stderr=subprocess.PIPE, text=True)
        for flag in ((), ("--no-filter",))
    ]
    filtered, unfiltered = (run.communicate(timeout=120)[1] for run in runs)
    assert unfiltered.count("Traceback (most recent call last)") > 1  # the scenario makes SDK noise
    assert runs[0].returncode == 1
    report = filtered
    # One report, at the end, for the one error sbsync could not handle.
    assert report.count("MessagingEntityNotFoundError: The messaging entity 'no-such-queue'") == 1, report
    first_traceback = report.index("Traceback (most recent call last)")
    before = report[:first_traceback]
    assert "Traceback" not in before and "Unexpected error occurred" not in report
    # Each recovered error is one WARNING line (sbsync's retry log), nothing more.
    retries = [line for line in before.splitlines() if line]
    assert retries and all("failed on attempt" in line for line in retries), before
