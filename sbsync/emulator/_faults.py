"""Fault injection: the public ``Faults`` handle and the loop-side rules it sets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ._amqp import Adapter


class FaultRules:
    """Pending failures and delays; read and consumed on the loop thread only."""

    def __init__(self) -> None:
        self.failures: list[list[Any]] = []  # [remaining count, operation or None]
        self.delays: dict[str | None, float] = {}

    def take_failure(self, operation: str) -> bool:
        """True when this operation must fail (consumes one pending failure)."""
        for rule in self.failures:
            if rule[1] is None or rule[1] == operation:
                rule[0] -= 1
                if rule[0] <= 0:
                    self.failures.remove(rule)
                return True
        return False

    def delay_for(self, operation: str) -> float:
        return self.delays.get(operation, self.delays.get(None, 0.0))

    def clear(self) -> None:
        self.failures.clear()
        self.delays.clear()


class Faults:
    """Inject failures into a running emulator. Every method may be called from any thread;
    it runs on the emulator's loop thread and returns once applied. Entity paths are as in
    ``Emulator.stats``; an unknown one raises KeyError."""

    def __init__(self, call: Callable[[Callable[[], Any]], Any], adapter: Callable[[], Adapter],
                 rules: FaultRules) -> None:
        self._call = call
        self._adapter = adapter
        self._rules = rules

    def drop_connections(self) -> int:
        """Abruptly close every client transport now; return how many were closed."""
        return int(self._call(lambda: self._adapter().drop_connections()))

    def fail_next(self, count: int, *, operation: str | None = None) -> None:
        """The next ``count`` matching operations fail with ``com.microsoft:server-busy``.

        ``operation``: a management operation name (``"com.microsoft:renew-lock"``),
        ``"send"``, ``"receive-attach"``, ``"cbs"``, or None for any of them. The SDK raises
        ServiceBusServerBusyError (after its retries), except for ``"cbs"``: every failed
        put-token surfaces as ServiceBusAuthenticationError."""
        if count > 0:
            self._call(lambda: self._rules.failures.append([count, operation]))

    def delay(self, seconds: float, *, operation: str | None = None) -> None:
        """Delay responses to matching operations by ``seconds`` (0 clears)."""
        def apply() -> None:
            if seconds > 0:
                self._rules.delays[operation] = seconds
            else:
                self._rules.delays.pop(operation, None)
        self._call(apply)

    def expire_session_lock(self, entity_path: str, session_id: str) -> None:
        """The session's lock is lost now; its receiver then gets SessionLockLostError."""
        self._call(lambda: self._adapter().expire_session_lock(entity_path, session_id))

    def expire_message_locks(self, entity_path: str) -> int:
        """Every message lock of the entity expires now; return how many."""
        return int(self._call(lambda: self._adapter().expire_message_locks(entity_path)))

    def stop_listening(self) -> None:
        """Stop accepting connections and drop the existing ones (the port is kept)."""
        self._call(lambda: self._adapter().stop_listening())

    def resume_listening(self) -> None:
        self._call(lambda: self._adapter().resume_listening())

    def clear(self) -> None:
        """Forget pending failures and delays."""
        self._call(self._rules.clear)
