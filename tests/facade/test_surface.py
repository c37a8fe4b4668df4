"""The public surface matches the sync SDK's, so that migrating is one changed import."""

from __future__ import annotations

import inspect
import types
import typing

import azure.servicebus as sdk
import azure.servicebus.exceptions as sdk_exceptions
import pytest

import sbsync
import sbsync.exceptions

PAIRS = [
    (sbsync.ServiceBusClient, sdk.ServiceBusClient),
    (sbsync.ServiceBusSender, sdk.ServiceBusSender),
    (sbsync.ServiceBusReceiver, sdk.ServiceBusReceiver),
    (sbsync.ServiceBusSession, sdk.ServiceBusSession),
]
DUNDERS = {"__enter__", "__exit__", "__iter__", "__next__"}
# Senders, receivers and sessions come from the client (or receiver.session), never constructed.
NOT_CONSTRUCTED = {sbsync.ServiceBusSender, sbsync.ServiceBusReceiver, sbsync.ServiceBusSession}


def _public(cls: type) -> list[str]:
    return sorted(n for n in dir(cls) if not n.startswith("_") or n in DUNDERS)


def _members(pair):
    ours, theirs = pair
    names = _public(theirs)
    if ours is sbsync.ServiceBusClient:
        names.append("__init__")
    return [(ours, theirs, n) for n in names]


MEMBERS = [m for pair in PAIRS for m in _members(pair)]


@pytest.mark.parametrize(("ours", "theirs", "name"), MEMBERS, ids=[f"{t.__name__}.{n}" for _, t, n in MEMBERS])
def test_same_member_same_signature(ours, theirs, name):
    assert hasattr(ours, name), f"{ours.__name__} lacks {name}"
    sdk_attr = inspect.getattr_static(theirs, name)
    our_attr = inspect.getattr_static(ours, name)
    if isinstance(sdk_attr, property):
        assert isinstance(our_attr, property), name
        return
    sdk_params = inspect.signature(getattr(theirs, name)).parameters
    our_params = inspect.signature(getattr(ours, name)).parameters
    for pname, sp in sdk_params.items():
        assert pname in our_params, f"{name} lacks parameter {pname}"
        op = our_params[pname]
        assert op.kind == sp.kind, f"{name}({pname}) kind {op.kind} != {sp.kind}"
        assert op.default == sp.default, f"{name}({pname}) default {op.default!r} != {sp.default!r}"
    assert [p for p in our_params if p in sdk_params] == list(sdk_params), f"{name}: parameter order differs"
    for pname, op in our_params.items():
        if pname not in sdk_params:  # sbsync's extras (timeout, ...) are keyword-only and optional
            assert op.kind is inspect.Parameter.KEYWORD_ONLY and op.default is not inspect.Parameter.empty, (name, pname)


FACADE_TO_SDK = {ours: theirs for ours, theirs in PAIRS}
UNIONS = {typing.Union, getattr(types, "UnionType", typing.Union)}


def _normalized(tp):
    tp = FACADE_TO_SDK.get(tp, tp)
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    args = tuple(_normalized(a) for a in typing.get_args(tp))
    return ("union", frozenset(args)) if origin in UNIONS else (origin, args)


def _return_hint(cls, name):
    attr = inspect.getattr_static(cls, name)
    fn = attr.fget if isinstance(attr, property) else getattr(cls, name)
    return typing.get_type_hints(fn).get("return")


@pytest.mark.parametrize(("ours", "theirs", "name"), MEMBERS, ids=[f"{t.__name__}.{n}" for _, t, n in MEMBERS])
def test_same_return_type(ours, theirs, name):
    if name in ("__init__", "__exit__"):
        return
    try:
        expected = _return_hint(theirs, name)
    except NameError:
        pytest.skip("the SDK's own annotation does not resolve at runtime")
    assert _normalized(_return_hint(ours, name)) == _normalized(expected)


def test_no_extra_public_methods():
    for ours, theirs in PAIRS:
        extra = set(_public(ours)) - set(_public(theirs))
        allowed = {"fully_qualified_namespace"} if ours is sbsync.ServiceBusClient else set()
        assert extra <= allowed, (ours.__name__, extra - allowed)


def test_sdk_names_are_reexported():
    for name in sdk.__all__:
        if name == "AutoLockRenewer":
            continue  # comes with sbsync's own renewer
        assert hasattr(sbsync, name), name
        if not name.startswith("ServiceBus") or name not in {c.__name__ for _, c in PAIRS}:
            assert getattr(sbsync, name) is getattr(sdk, name), name
    assert set(sbsync.__all__) <= set(dir(sbsync))


def test_every_sdk_exception_is_reexported():
    for name, value in vars(sdk_exceptions).items():
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert getattr(sbsync.exceptions, name) is value, name
    assert issubclass(sbsync.exceptions.ClientClosedError, ValueError)
    assert issubclass(sbsync.exceptions.LoopThreadError, RuntimeError)


def test_bad_arguments_fail_clearly(client, queue, session_queue):
    sender = client.get_queue_sender(queue)
    with pytest.raises(ValueError, match="greater than 0"):
        sender.send_messages(sbsync.ServiceBusMessage("x"), timeout=0)
    with pytest.raises(TypeError, match="number of seconds"):
        sender.send_messages(sbsync.ServiceBusMessage("x"), timeout="5")
    with pytest.raises(TypeError):
        sender.send_messages(12345)
    receiver = client.get_queue_receiver(queue)
    with pytest.raises(ValueError):
        receiver.receive_messages(max_message_count=0)
    with pytest.raises(ValueError):
        receiver.receive_messages(max_wait_time=-1)
    with pytest.raises(ValueError):
        receiver.peek_messages(timeout=-2)
    with pytest.raises(ValueError, match="max_message_count"):
        receiver.peek_messages(0)
    with pytest.raises(TypeError, match="max_message_count"):
        receiver.receive_messages("5")
    with pytest.raises(TypeError, match="sequence_numbers"):
        receiver.receive_deferred_messages("x")
    with pytest.raises(TypeError, match="message"):
        receiver.renew_message_lock(None)
    with pytest.raises(TypeError):
        receiver.complete_message("not a message")
    with pytest.raises(TypeError, match="schedule_time_utc"):
        sender.schedule_messages(sbsync.ServiceBusMessage("x"), "tomorrow")
    with pytest.raises(TypeError, match="sequence_numbers"):
        sender.cancel_scheduled_messages(["1"])
    with pytest.raises(ValueError, match="max_size_in_bytes"):
        sender.create_message_batch(-1)
    with pytest.raises(ValueError):
        client.get_queue_receiver(queue, prefetch_count=-1)
    session_receiver = client.get_queue_receiver(session_queue, session_id="never-used")
    with pytest.raises(TypeError, match="state"):
        session_receiver.session.set_state(123)
    with pytest.raises(TypeError):
        sbsync.ServiceBusClient("host", credential=object())
    with pytest.raises(ValueError):
        sbsync.ServiceBusClient.from_connection_string("not a connection string")


def test_repr_shows_no_secret(conn_str, client, queue):
    key = conn_str.split("SharedAccessKey=")[1].split(";")[0]
    texts = [repr(client), repr(client.get_queue_sender(queue)), repr(client.get_queue_receiver(queue))]
    assert all(key not in t for t in texts)
    assert "127.0.0.1" in texts[0] and queue in texts[1]
