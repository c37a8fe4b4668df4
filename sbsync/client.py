"""``ServiceBusClient``: the blocking, thread-safe twin of ``azure.servicebus.ServiceBusClient``."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Hashable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from azure.core.paging import ItemPaged
from azure.servicebus import (
    ServiceBusReceiveMode,
    ServiceBusSessionFilter,
    ServiceBusSubQueue,
    parse_connection_string,
)
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.aio import ServiceBusSender as AsyncServiceBusSender

from ._credentials import to_async_credential
from ._handle import CLOSE_TIMEOUT, Handle, check_timeout
from ._lifecycle import Lifecycle
from ._portal import Portal
from ._retry import RetryPolicy
from ._sdk import check_hooks, install_log_filter, require_session_listing
from ._warm_links import DEFAULT_IDLE_TIMEOUT, WarmLinks, check_idle_timeout, link_key
from .exceptions import UnsupportedTransportError, closed_error
from .receiver import ServiceBusReceiver
from .sender import ServiceBusSender

if TYPE_CHECKING:
    from azure.core.async_paging import AsyncItemPaged
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential, TokenCredential

__all__ = ["ServiceBusClient"]

_LOGGER = logging.getLogger(__name__)


class ServiceBusClient(Handle[AsyncServiceBusClient]):
    """A Service Bus client whose methods block; safe to share between threads.

    Same constructor and methods as ``azure.servicebus.ServiceBusClient``. It owns one event
    loop on one daemon thread (``sbsync-loop-N``) that runs ``azure.servicebus.aio`` for
    every sender and receiver it creates. ``close()`` (or ``with``) releases it all: its
    senders and receivers then raise ``ClientClosedError`` (a ``ValueError``, as the SDK's
    shut-down handlers raise), while the client itself reopens on its next use (``with``,
    ``get_*_sender``/``get_*_receiver``, ``list_*_sessions``), as the SDK's does. A process
    that never closes still exits.

    Keyword-only extras: ``retry_deadline`` (seconds all attempts of one call may take) and
    ``sender_idle_timeout`` (seconds a closed sender's link stays open for the next sender
    with the same arguments; default 60, ``0`` parks none, ``None`` keeps them until
    ``close()``).
    """

    _kind = "client"
    _guard_open = False

    def __init__(
        self,
        fully_qualified_namespace: str,
        credential: TokenCredential | AzureSasCredential | AzureNamedKeyCredential,
        *,
        retry_total: int = 3,
        retry_backoff_factor: float = 0.8,
        retry_backoff_max: float = 120,
        retry_mode: str = "exponential",
        retry_deadline: float | None = None,
        sender_idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        if not isinstance(fully_qualified_namespace, str) or not fully_qualified_namespace:
            raise TypeError("fully_qualified_namespace must be a non-empty string.")
        async_credential = to_async_credential(credential)
        policy, options = _split_retry_settings(
            retry_total, retry_backoff_factor, retry_backoff_max, retry_mode, retry_deadline, kwargs
        )
        self._setup(
            fully_qualified_namespace,
            lambda: AsyncServiceBusClient(fully_qualified_namespace, async_credential, **options),
            policy=policy,
            sender_idle_timeout=sender_idle_timeout,
        )

    def _setup(
        self,
        namespace: str,
        build: Any,
        entity: str | None = None,
        *,
        policy: RetryPolicy,
        sender_idle_timeout: float | None,
    ) -> None:
        check_idle_timeout(sender_idle_timeout)
        self._sender_idle_timeout = sender_idle_timeout
        self._client_build = build
        self._policy = policy
        self._namespace = namespace
        self._entity_path = entity
        # Guards the lifecycle: close() and a reopening use may come from different threads.
        self._lifecycle_lock = threading.RLock()
        self._abandon: weakref.finalize[Any, Any] | None = None
        self._start()

    def _start(self) -> None:
        """A new loop (portal), SDK client and link bookkeeping: at construction and on reopen."""
        super().__init__(Portal(), self._client_build)
        self._retry_policy = self._policy
        self._entity = self._entity_path
        self._handles: weakref.WeakSet[Handle[Any]] = weakref.WeakSet()
        self._handles_lock = threading.Lock()  # handles are made in caller threads, closed on the loop
        self._warm: WarmLinks | None = None  # loop thread only
        # Loop thread only: every SDK sender/receiver of this generation not yet released, so
        # close() reaches the links of handles dropped unclosed; and the releases and closes
        # still running (receivers close in the background, idle warm links, dropped handles).
        self._links: set[Any] = set()
        self._closing: set[asyncio.Future[None]] = set()
        # A client dropped without close() (and with no sender/receiver left) stops its loop.
        if self._abandon is not None:
            self._abandon.detach()  # the previous loop is stopped already
        self._abandon = weakref.finalize(self, self._portal.abandon)
        # At interpreter exit the portal's own atexit hook stops the loop, calls in flight
        # frozen rather than failed; this finalizer (run by weakref's atexit hook, which runs
        # first) would fail them with ClientClosedError tracebacks in the threads still waiting.
        self._abandon.atexit = False
        self._lifecycle = Lifecycle.OPEN
        self._build_now()

    def _reopen_if_closed(self) -> None:
        """Caller side: a closed client starts afresh on its next use, as the SDK's does."""
        if self._lifecycle is Lifecycle.OPEN:
            return
        if self._lifecycle is Lifecycle.CLOSING:  # a use racing close() fails as a call in flight would
            raise closed_error("client", during_call=True)
        with self._lifecycle_lock:
            if self._lifecycle is Lifecycle.CLOSED:
                _LOGGER.debug("%r reopening", self)
                self._start()

    @classmethod
    def from_connection_string(
        cls,
        conn_str: str,
        *,
        retry_total: int = 3,
        retry_backoff_factor: float = 0.8,
        retry_backoff_max: float = 120,
        retry_mode: str = "exponential",
        retry_deadline: float | None = None,
        sender_idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        **kwargs: Any,
    ) -> ServiceBusClient:
        """Create a client from a connection string (``Endpoint=sb://...;SharedAccessKeyName=...``)."""
        if not isinstance(conn_str, str):
            raise TypeError(
                "conn_str must be a str (a connection string like 'Endpoint=sb://...;"
                f"SharedAccessKeyName=...;SharedAccessKey=...'), not {type(conn_str).__name__}."
            )
        props = parse_connection_string(conn_str)  # ValueError for a malformed string, as the SDK
        policy, options = _split_retry_settings(
            retry_total, retry_backoff_factor, retry_backoff_max, retry_mode, retry_deadline, kwargs
        )
        client = cls.__new__(cls)
        client._setup(
            props.fully_qualified_namespace,
            lambda: AsyncServiceBusClient.from_connection_string(conn_str, **options),
            props.entity_path,
            policy=policy,
            sender_idle_timeout=sender_idle_timeout,
        )
        return client

    def __repr__(self) -> str:
        closed = " closed" if self._is_closed() else ""
        return f"<sbsync.ServiceBusClient namespace={self._namespace!r}{closed}>"

    @property
    def fully_qualified_namespace(self) -> str:
        """The namespace host name, e.g. ``<yournamespace>.servicebus.windows.net``."""
        return self._namespace

    def __enter__(self) -> ServiceBusClient:
        self._reopen_if_closed()
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close every sender and receiver, then stop the loop thread. Idempotent.

        The client reopens on its next use; its senders and receivers stay closed.
        """
        with self._lifecycle_lock:
            if self._lifecycle is Lifecycle.CLOSED:
                return
            self._lifecycle = Lifecycle.CLOSING
            self._closed = True
            try:
                self._portal.shutdown(self._aclose_all, timeout=CLOSE_TIMEOUT)
            finally:
                self._lifecycle = Lifecycle.CLOSED

    async def _aclose_all(self) -> None:
        # Links close concurrently: the SDK's own client.close() would close them one by one.
        # Every handle is released, including one whose close() raced this and found the
        # client already closing; then whatever dropped handles left open.
        with self._handles_lock:
            handles = list(self._handles)
        for handle in handles:
            handle._closed = True
        await asyncio.gather(*(h._aclose() for h in handles), return_exceptions=True)
        if self._sdk_gen == self._portal.generation:
            leftovers = list(self._links)
            self._links.clear()
            if self._warm is not None:
                leftovers += self._warm.drain()
            await asyncio.gather(*(sdk.close() for sdk in leftovers), return_exceptions=True)
            if self._closing:
                await asyncio.wait(list(self._closing), timeout=CLOSE_TIMEOUT / 2)
        await self._aclose()

    # -- factories --------------------------------------------------------------------------

    def _on_new_sdk(self) -> None:
        if self._warm is not None:
            self._portal.orphan(self._warm)  # a forked child must not reuse the parent's links
            self._portal.orphan(self._links)
        self._warm = WarmLinks(self._sender_idle_timeout, self._close_later)
        self._links = set()
        self._closing = set()

    def _track(self, sdk: Any) -> None:
        """Loop thread: a sender/receiver built ``sdk`` (see ``_links``)."""
        self._links.add(sdk)

    def _close_later(self, sdk: Any) -> None:
        """Loop thread: close a link no handle holds, in a task ``client.close()`` waits for."""
        self._wait_on_close(asyncio.ensure_future(_close_quietly(sdk)))

    def _wait_on_close(self, release: asyncio.Future[None]) -> None:
        """Loop thread: ``client.close()`` waits for ``release`` (a link closing) to end."""
        self._closing.add(release)
        release.add_done_callback(self._closing.discard)

    def _untrack(self, sdk: Any) -> bool:
        """Loop thread: ``sdk`` is being released by its handle; False if it was not tracked."""
        if sdk in self._links:
            self._links.remove(sdk)
            return True
        return False

    def _warm_sender(self, key: Hashable | None) -> AsyncServiceBusSender | None:
        """Loop thread: a parked sender link for ``key``, if any."""
        self._sdk()  # a fork since the last call replaces the parked links
        return self._warm.take(key) if self._warm is not None else None

    def _park(self, key: Hashable | None, sdk: AsyncServiceBusSender) -> bool:
        """Loop thread: keep a closed sender's idle link warm, unless the client is closing."""
        if self._is_closed() or self._warm is None or self._sdk_gen != self._portal.generation:
            return False
        return self._warm.park(key, sdk)

    def _adopt(self, handle: Handle[Any]) -> None:
        with self._handles_lock:
            self._handles.add(handle)
        # Weakly: a dropped handle must not keep its client (and the client's loop) alive.
        finalizer = weakref.finalize(handle, _close_dropped_link, weakref.ref(self), handle._held)
        finalizer.atexit = False  # at exit the portal stops the loop; live links are not "dropped"
        handle._build_now()

    def get_queue_sender(
        self,
        queue_name: str,
        *,
        client_identifier: str | None = None,
        socket_timeout: float | None = None,
        **kwargs: Any,
    ) -> ServiceBusSender:
        """A sender for a queue. The link opens on first use (or ``with``), or is a warm one
        a closed sender of this client left with the same arguments."""
        return self._sender("queue", queue_name, client_identifier, socket_timeout, kwargs)

    def get_topic_sender(
        self,
        topic_name: str,
        *,
        client_identifier: str | None = None,
        socket_timeout: float | None = None,
        **kwargs: Any,
    ) -> ServiceBusSender:
        """A sender for a topic. The link opens on first use (or ``with``), or is a warm one
        a closed sender of this client left with the same arguments."""
        return self._sender("topic", topic_name, client_identifier, socket_timeout, kwargs)

    def _sender(
        self,
        kind: str,
        entity: str,
        client_identifier: str | None,
        socket_timeout: float | None,
        kwargs: dict[str, Any],
    ) -> ServiceBusSender:
        self._reopen_if_closed()
        key = link_key(kind, entity, client_identifier, socket_timeout, **kwargs)

        def build() -> Any:  # on the loop thread
            sdk = self._sdk()
            make = sdk.get_queue_sender if kind == "queue" else sdk.get_topic_sender
            return self._warm_sender(key) or make(
                entity, client_identifier=client_identifier, socket_timeout=socket_timeout, **kwargs
            )

        sender = ServiceBusSender(self, build, entity=entity, link_key=key)
        self._adopt(sender)
        return sender

    def get_queue_receiver(
        self,
        queue_name: str,
        *,
        client_identifier: str | None = None,
        socket_timeout: float | None = None,
        session_id: str | Literal[ServiceBusSessionFilter.NEXT_AVAILABLE] | None = None,
        sub_queue: ServiceBusSubQueue | str | None = None,
        receive_mode: ServiceBusReceiveMode | str = ServiceBusReceiveMode.PEEK_LOCK,
        max_wait_time: float | None = None,
        auto_lock_renewer: Any | None = None,
        prefetch_count: int = 0,
        **kwargs: Any,
    ) -> ServiceBusReceiver:
        """A receiver for a queue (a session of it with ``session_id``; a sub-queue with ``sub_queue``).

        ``auto_lock_renewer`` gets ``register(receiver, message_or_session)`` calls for what
        this receiver locks, as the SDK does.
        """
        self._reopen_if_closed()
        receiver = ServiceBusReceiver(
            self,
            lambda: self._sdk().get_queue_receiver(
                queue_name,
                client_identifier=client_identifier,
                socket_timeout=socket_timeout,
                session_id=session_id,
                sub_queue=sub_queue,
                receive_mode=receive_mode,
                max_wait_time=max_wait_time,
                prefetch_count=prefetch_count,
                **kwargs,
            ),
            entity=queue_name,
            session=session_id is not None,
            auto_lock_renewer=auto_lock_renewer,
            max_wait_time=max_wait_time,
            receive_mode=receive_mode,
        )
        self._adopt(receiver)
        return receiver

    def get_subscription_receiver(
        self,
        topic_name: str,
        subscription_name: str,
        *,
        client_identifier: str | None = None,
        socket_timeout: float | None = None,
        session_id: str | Literal[ServiceBusSessionFilter.NEXT_AVAILABLE] | None = None,
        sub_queue: ServiceBusSubQueue | str | None = None,
        receive_mode: ServiceBusReceiveMode | str = ServiceBusReceiveMode.PEEK_LOCK,
        max_wait_time: float | None = None,
        auto_lock_renewer: Any | None = None,
        prefetch_count: int = 0,
        **kwargs: Any,
    ) -> ServiceBusReceiver:
        """A receiver for a topic subscription (see :meth:`get_queue_receiver`)."""
        self._reopen_if_closed()
        receiver = ServiceBusReceiver(
            self,
            lambda: self._sdk().get_subscription_receiver(
                topic_name,
                subscription_name,
                client_identifier=client_identifier,
                socket_timeout=socket_timeout,
                session_id=session_id,
                sub_queue=sub_queue,
                receive_mode=receive_mode,
                max_wait_time=max_wait_time,
                prefetch_count=prefetch_count,
                **kwargs,
            ),
            entity=f"{topic_name}/Subscriptions/{subscription_name}",
            session=session_id is not None,
            auto_lock_renewer=auto_lock_renewer,
            max_wait_time=max_wait_time,
            receive_mode=receive_mode,
        )
        self._adopt(receiver)
        return receiver

    # -- session listing ----------------------------------------------------------------------

    def list_queue_sessions(
        self,
        queue_name: str,
        *,
        state_updated_after: datetime | None = None,
        timeout: float | None = None,
    ) -> ItemPaged[str]:
        """Session ids of a session-enabled queue, paged (``timeout`` spans all pages).

        Needs azure-servicebus 7.15+ (``IncompatibleSdkError`` otherwise)."""
        check_timeout(timeout)
        require_session_listing()
        return self._paged(
            "list_queue_sessions",
            lambda c: c.list_queue_sessions(queue_name, state_updated_after=state_updated_after, timeout=timeout),
            timeout,
        )

    def list_subscription_sessions(
        self,
        topic_name: str,
        subscription_name: str,
        *,
        state_updated_after: datetime | None = None,
        timeout: float | None = None,
    ) -> ItemPaged[str]:
        """Session ids of a session-enabled subscription, paged (``timeout`` spans all pages).

        Needs azure-servicebus 7.15+ (``IncompatibleSdkError`` otherwise)."""
        check_timeout(timeout)
        require_session_listing()
        return self._paged(
            "list_subscription_sessions",
            lambda c: c.list_subscription_sessions(
                topic_name, subscription_name, state_updated_after=state_updated_after, timeout=timeout
            ),
            timeout,
        )

    def _paged(self, operation: str, start: Any, timeout: float | None) -> ItemPaged[str]:
        """A sync ``ItemPaged`` that fetches each page of the SDK's ``AsyncItemPaged`` on the loop."""
        self._reopen_if_closed()

        async def open_pages(client: AsyncServiceBusClient) -> Any:
            paged: AsyncItemPaged[str] = start(client)  # argument errors surface here, as in the SDK
            return paged.by_page()

        pages = self._run(operation, open_pages)

        async def next_page(_: AsyncServiceBusClient) -> list[str] | None:
            try:
                page = await pages.__anext__()
            except StopAsyncIteration:
                return None
            return [item async for item in page]

        def get_next(_token: str | None) -> list[str] | None:
            return self._run(operation, next_page, timeout=timeout)

        def extract_data(page: list[str] | None) -> tuple[str | None, Iterator[str]]:
            if page is None:
                return None, iter(())
            return "next", iter(page)

        return ItemPaged(get_next, extract_data)


def _split_retry_settings(
    retry_total: int,
    retry_backoff_factor: float,
    retry_backoff_max: float,
    retry_mode: str,
    retry_deadline: float | None,
    kwargs: dict[str, Any],
) -> tuple[RetryPolicy, dict[str, Any]]:
    """sbsync's retry policy, and the options for the aio client, which then makes one attempt
    per call (sbsync's RetryPolicy owns the attempts). Also where options sbsync cannot honour
    are refused, before anything is built."""
    if kwargs.get("uamqp_transport"):
        raise UnsupportedTransportError(
            "uamqp_transport=True is not supported: sbsync runs azure-servicebus on its default "
            "pyamqp transport (uAMQP is deprecated upstream). Remove the option."
        )
    check_hooks()  # the installed SDK has what sbsync needs (or say what is lost, once)
    install_log_filter()  # no SDK tracebacks on stderr for errors sbsync handles
    policy = RetryPolicy(
        retry_total=retry_total,
        retry_backoff_factor=retry_backoff_factor,
        retry_backoff_max=retry_backoff_max,
        retry_mode=retry_mode,
        deadline=retry_deadline,
    )
    options = dict(
        retry_total=0,
        retry_backoff_factor=retry_backoff_factor,
        retry_backoff_max=retry_backoff_max,
        retry_mode=retry_mode,
        **kwargs,
    )
    return policy, options


def _close_dropped_link(client_ref: weakref.ReferenceType[ServiceBusClient], held: list[Any]) -> None:
    """Any thread (a finalizer): a sender/receiver was garbage-collected without close().

    Its SDK object is closed on the loop, as the sync SDK's socket goes with its object;
    otherwise the link would stay open, kept alive by its connection's tasks, until
    ``client.close()``. The close task holds the client's sets, not the client, so a client
    dropped along with the handle can still be collected (its portal then stops the loop).
    """
    client = client_ref()
    if client is None or not held or client._portal.closed:
        return  # released already, or closing with the client
    sdk, links, dropping, portal = held[0], client._links, client._closing, client._portal
    del client
    try:
        portal.submit(lambda: _aclose_dropped_link(sdk, links, dropping))
    except Exception:  # the loop is stopping: client.close() or abandon() closes it
        _LOGGER.debug("Could not schedule the close of a dropped link", exc_info=True)


async def _close_quietly(sdk: Any) -> None:
    try:
        await sdk.close()
    except Exception:
        _LOGGER.debug("Error closing a link", exc_info=True)


async def _aclose_dropped_link(sdk: Any, links: set[Any], dropping: set[asyncio.Future[None]]) -> None:
    """Loop thread: close a dropped handle's SDK object unless something else released it."""
    if sdk not in links:
        return  # released meanwhile (or by client.close()), or a previous generation's
    links.discard(sdk)
    task = asyncio.current_task()
    assert task is not None
    dropping.add(task)  # client.close() waits for it
    try:
        await _close_quietly(sdk)
    finally:
        dropping.discard(task)
