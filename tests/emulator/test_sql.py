"""The SQL filter/action language on its own (pure logic: a dict stands in for a message)."""

from __future__ import annotations

from typing import Any

import pytest

from sbsync.emulator._sql import SqlError, compile_action, compile_filter


class Props:
    def __init__(self, user: dict[str, Any] | None = None, **system: Any) -> None:
        self._user = dict(user or {})
        self.system = {k.lower(): v for k, v in system.items()}

    def user(self) -> dict[str, Any]:
        return self._user

    def sys(self, name: str) -> Any:
        return self.system.get(name)

    def set_sys(self, name: str, value: Any) -> None:
        self.system[name] = value


def ev(text: str, user: dict[str, Any] | None = None, **system: Any) -> bool | None:
    return compile_filter(text)(Props(user, **system))


@pytest.mark.parametrize("text, expected", [
    ("1=1", True), ("1=0", False), ("1 <> 2", True), ("1 != 1", False),
    ("2 > 1 AND 1 < 2", True), ("2 >= 2 AND 2 <= 1", False),
    ("1 + 2 * 3 = 7", True), ("(1 + 2) * 3 = 9", True), ("7 / 2 = 3", True),
    ("-7 / 2 = -3", True), ("-7 % 3 = -1", True), ("7.0 / 2 = 3.5", True),
    ("1.5E1 = 15", True), ("'a' + 'b' = 'ab'", True), ("'it''s' = 'it' + '''s'", True),
    ("NOT 1 = 1", False), ("NOT (1 = 1 AND 1 = 0)", True), ("1 = 0 OR 2 = 2", True),
    ("TRUE", True), ("FALSE OR TRUE", True), ("-(2) = -2", True), ("+3 = 3", True),
    ("5 IN (1, 2, 5)", True), ("5 NOT IN (1, 2)", True), ("'x' IN ('y')", False),
    ("'abc' LIKE 'a%'", True), ("'abc' LIKE 'a_c'", True), ("'abc' LIKE 'a_'", False),
    ("'abc' NOT LIKE '%z%'", True), ("'50%' LIKE '50!%' ESCAPE '!'", True),
    ("'500' LIKE '50!%' ESCAPE '!'", False), ("'a.c' LIKE 'a.c'", True),
    ("'abc' LIKE 'a.c'", False),
])
def test_constant_predicates(text: str, expected: bool) -> None:
    assert ev(text) is expected


def test_properties_and_scopes() -> None:
    props = {"color": "blue", "quantity": 10, "price": 2.5, "flag": True, "sys": "user-sys"}
    assert ev("color = 'blue' AND quantity = 10", props)
    assert ev("user.color = 'blue'", props)
    assert ev("quantity * price = 25", props)
    assert ev("quantity > 9.5", props)  # int promoted to float
    assert ev("flag", props) is True
    assert ev("flag = TRUE", props)
    assert ev("[color] = 'blue'", props)
    assert ev('"color" = \'blue\'', props)
    assert ev("sys.Label = 'hello'", props, label="hello")
    assert ev("sys.label LIKE 'he%'", props, label="hello")
    assert ev("sys.MessageId = 'm1' AND sys.To IS NULL", props, messageid="m1")
    assert ev("sys.CorrelationId = 'c'", props) is None  # absent system property: null
    assert ev("property('color') = 'blue'", props)
    assert ev("property('sys.label') = 'x'", props, label="x")


def test_unknown_is_neither_true_nor_false() -> None:
    """A missing user property is unknown: comparisons with it are unknown, NOT keeps it
    unknown, IS NULL is true, EXISTS is false; AND/OR follow three-valued logic."""
    assert ev("missing = 1") is None
    assert ev("NOT missing = 1") is None
    assert ev("missing IS NULL") is True
    assert ev("missing IS NOT NULL") is False
    assert ev("EXISTS(missing)") is False
    assert ev("EXISTS(a)", {"a": None}) is True
    assert ev("missing = 1 AND 1 = 0") is False
    assert ev("missing = 1 OR 1 = 1") is True
    assert ev("missing = 1 OR 1 = 0") is None
    assert ev("missing + 1 = 2") is None
    assert ev("missing IN (1, 2)") is None
    assert ev("missing LIKE 'a%'") is None
    assert ev("1 IN (2, missing)") is None
    assert ev("1 = 'one'") is None  # unrelated types do not compare
    assert ev("1 / 0 = 1") is None


def test_parameters() -> None:
    flt = compile_filter("color = @c AND size > @min", {"@c": "red", "min": 3})
    assert flt(Props({"color": "red", "size": 4}))
    assert not flt(Props({"color": "red", "size": 2}))
    with pytest.raises(SqlError, match="@nope"):
        compile_filter("a = @nope")


@pytest.mark.parametrize("text", [
    "", "   ", "a =", "a = = 1", "(a = 1", "a = 1)", "a LIKE", "a IN ()", "a IN (1,",
    "sys.NoSuchThing = 1", "'unterminated", "a # 1", "EXISTS(1)", "a IS 1",
    "a LIKE 'x' ESCAPE 'ab'", "nofunc(1) = 1", "a = 1 b = 2", "- 'x' = 1",
])
def test_malformed_filters_are_refused(text: str) -> None:
    with pytest.raises(SqlError):
        compile_filter(text)


def test_actions_set_and_remove() -> None:
    props = Props({"a": 1, "gone": "x", "first": "Ada", "last": "Lovelace"}, label="old")
    compile_action("SET a = a + 1; SET b = 'new'; REMOVE gone; "
                   "SET full = first + ' ' + last; SET sys.Label = 'relabelled'")(props)
    assert props.user() == {"a": 2, "b": "new", "first": "Ada", "last": "Lovelace",
                            "full": "Ada Lovelace"}
    assert props.system["label"] == "relabelled"


@pytest.mark.parametrize("text", ["", "SET", "SET a", "SET a = ", "DROP a", "REMOVE",
                                  "SET a = 1 SET b = 2", "SET sys.SequenceNumber = 1"])
def test_malformed_actions_are_refused(text: str) -> None:
    with pytest.raises(SqlError):
        compile_action(text)


def test_parentheses_nest_without_backtracking() -> None:
    """Each "(" is parsed once: deep nesting stays linear (and past 100 levels is refused)."""
    assert ev("(" * 90 + "1" + ")" * 90 + " = 1")
    assert ev("((a + 1)) * 2 = 4 AND ((a = 1) OR (b = 2))", {"a": 1})
    assert ev("(a = 1) = TRUE", {"a": 1})
    assert ev("NOT (a)", {"a": False})
    assert ev("(a)", {"a": 5}) is None  # a number is not a truth value
    with pytest.raises(SqlError, match="nested"):
        compile_filter("(" * 101 + "1" + ")" * 101 + " = 1")
    with pytest.raises(SqlError, match="nested"):
        compile_filter("NOT " * 5000 + "1 = 1")
    with pytest.raises(SqlError, match="nested"):
        compile_action("SET a = " + "-" * 5000 + "1")
