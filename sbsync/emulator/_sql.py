"""Service Bus SQL filter and SQL rule action language: tokenizer, parser, compiler.

The language is the service's SQL-92 subset ("Subscription Rule SQL Filter Syntax" and
"SQL rule action syntax" on learn.microsoft.com): comparisons, arithmetic, ``AND/OR/NOT``
with three-valued logic, ``[NOT] LIKE`` with ``ESCAPE``, ``[NOT] IN``, ``IS [NOT] NULL``,
``EXISTS``, ``sys.`` and ``user.`` properties (``user`` is the default scope), integer,
decimal, approximate-number, boolean, string and ``NULL`` literals, ``@parameters``, the
``newid()`` and ``property(name)`` functions, and actions ``SET p = expr`` / ``REMOVE p``.

Why a hand-written recursive-descent parser rather than a parsing library: the grammar is
~15 productions, the emulator must stay a ``pip install`` away with python-qpid-proton as
its only dependency, and the parser's job is to *compile* once (at rule creation) into
plain Python closures, so matching a message costs a few function calls and no tree walk.
Errors carry the offending position, the way the service reports them.

Evaluation follows the service's documented rules: a missing ``user.`` property is
*unknown* (``None``), unknown propagates through arithmetic and comparisons, ``IS NULL`` is
true for it and ``EXISTS`` false; a message is selected only when the filter is TRUE.
Naming an unknown ``sys.`` property is an error at rule creation. Operands follow C#
promotion (int -> float; ``+`` with a string concatenates); comparing unrelated types is
unknown rather than an error, so one odd message never stops a topic.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from typing import Any, Callable, Protocol

__all__ = [
    "SYSTEM_PROPERTIES",
    "Action",
    "SqlError",
    "View",
    "compile_action",
    "compile_filter",
]


class SqlError(ValueError):
    """A filter or action expression the service would refuse (HTTP 400)."""


class View(Protocol):
    """What expressions read and actions write: a message's properties."""

    def user(self) -> dict[str, Any]: ...

    def sys(self, name: str) -> Any: ...

    def set_sys(self, name: str, value: Any) -> None: ...


# sys. property names (lower case) the service knows; reading one the message lacks is null
SYSTEM_PROPERTIES = frozenset((
    "messageid", "correlationid", "to", "replyto", "label", "subject", "sessionid",
    "replytosessionid", "contenttype", "partitionkey", "timetolive", "sequencenumber",
    "enqueuedsequencenumber", "enqueuedtimeutc", "scheduledenqueuetimeutc", "expiresatutc",
    "deliverycount", "size", "deadlettersource", "viapartitionkey",
    "lockeduntilutc", "locktoken", "state",
))
# sys. properties an action may SET (the message's own headers; broker stamps are read-only)
SETTABLE_SYSTEM = frozenset((
    "messageid", "correlationid", "to", "replyto", "label", "subject", "sessionid",
    "replytosessionid", "contenttype", "partitionkey", "timetolive",
    "scheduledenqueuetimeutc",
))

_KEYWORDS = frozenset(("and", "or", "not", "like", "escape", "in", "is", "null", "true",
                       "false", "exists", "set", "remove"))

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>'(?:[^']|'')*')
  | (?P<qid>"(?:[^"]|"")*")
  | (?P<did>\[(?:[^\]]|\]\])*\])
  | (?P<param>@[A-Za-z_][A-Za-z0-9_]*)
  | (?P<id>[^\W\d][\w]*)
  | (?P<op><>|!=|>=|<=|[=<>+\-*/%(),.;])
""", re.VERBOSE)


class _Tok:
    __slots__ = ("kind", "pos", "text", "value")

    def __init__(self, kind: str, text: str, value: Any, pos: int) -> None:
        self.kind = kind  # num str id kw op param end
        self.text = text
        self.value = value
        self.pos = pos


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SqlError(f"Invalid character {text[pos]!r} at position {pos}.")
        kind = m.lastgroup or ""
        raw = m.group()
        if kind == "num":
            if re.fullmatch(r"\d+", raw):
                toks.append(_Tok("num", raw, int(raw), pos))
            else:
                toks.append(_Tok("num", raw, float(raw), pos))
        elif kind == "str":
            toks.append(_Tok("str", raw, raw[1:-1].replace("''", "'"), pos))
        elif kind == "qid":
            toks.append(_Tok("id", raw, raw[1:-1].replace('""', '"'), pos))
        elif kind == "did":
            toks.append(_Tok("id", raw, raw[1:-1].replace("]]", "]"), pos))
        elif kind == "id":
            low = raw.lower()
            toks.append(_Tok("kw" if low in _KEYWORDS else "id", raw,
                             low if low in _KEYWORDS else raw, pos))
        elif kind == "param":
            toks.append(_Tok("param", raw, raw[1:], pos))
        elif kind == "op":
            toks.append(_Tok("op", raw, raw, pos))
        pos = m.end()
    toks.append(_Tok("end", "", None, n))
    return toks


# ---------------------------------------------------------------- evaluation helpers

Expr = Callable[[View], Any]
Pred = Callable[[View], "bool | None"]

_NUM = (int, float)


def _num(v: Any) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool)


def _compare(op: str) -> Callable[[Any, Any], bool | None]:
    def cmp(a: Any, b: Any) -> bool | None:
        if a is None or b is None:
            return None
        if _num(a) and _num(b):
            pass
        elif type(a) is not type(b):
            if not (isinstance(a, str) and isinstance(b, str)):
                return None
        elif isinstance(a, bool) and op not in ("=", "<>", "!="):
            return None
        try:
            if op == "=":
                return bool(a == b)
            if op in ("<>", "!="):
                return bool(a != b)
            if op == "<":
                return bool(a < b)
            if op == "<=":
                return bool(a <= b)
            if op == ">":
                return bool(a > b)
            return bool(a >= b)
        except TypeError:
            return None
    return cmp


def _arith(op: str) -> Callable[[Any, Any], Any]:
    def calc(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        if op == "+" and (isinstance(a, str) or isinstance(b, str)):
            return _text(a) + _text(b)  # C#: string + anything concatenates
        if not (_num(a) and _num(b)):
            return None
        try:
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                if isinstance(a, int) and isinstance(b, int):
                    q = abs(a) // abs(b)  # C# integer division truncates toward zero
                    return q if (a >= 0) == (b >= 0) else -q
                return a / b
            if isinstance(a, int) and isinstance(b, int):  # C# remainder: sign of dividend
                r = abs(a) % abs(b)
                return r if a >= 0 else -r
            return math.fmod(a, b)
        except ZeroDivisionError:
            return None
    return calc


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    return str(v)


def like_regex(pattern: str, escape: str | None) -> re.Pattern[str]:
    """``%`` any run, ``_`` one character, ``escape`` makes the next character literal."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if escape is not None and c == escape:
            i += 1
            if i >= len(pattern):
                raise SqlError("The LIKE pattern ends with its escape character.")
            out.append(re.escape(pattern[i]))
        elif c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _bool(x: Any) -> bool | None:
    return x if isinstance(x, bool) else None


def _not(p: Pred) -> Pred:
    def f(v: View) -> bool | None:
        r = p(v)
        return (not r) if isinstance(r, bool) else None
    return f


def _junction(a: Pred, b: Pred, decisive: bool) -> Pred:
    """AND (``decisive`` False) or OR (True) in three-valued logic: either side's decisive value
    decides; otherwise unknown if either side is, else the other value."""
    def f(v: View) -> bool | None:
        x = _bool(a(v))
        if x is decisive:
            return decisive
        y = _bool(b(v))
        if y is decisive:
            return decisive
        return None if x is None or y is None else not decisive
    return f


# ---------------------------------------------------------------- parser


class _Prop:
    """A property reference: scope ('user' or 'sys') and name."""

    __slots__ = ("name", "scope")

    def __init__(self, scope: str, name: str) -> None:
        self.scope = scope
        self.name = name

    def reader(self) -> Expr:
        name = self.name
        if self.scope == "sys":
            key = name.lower()
            return lambda v: v.sys(key)
        return lambda v: v.user().get(name)

    def exists(self) -> Pred:
        name = self.name
        if self.scope == "sys":
            key = name.lower()
            return lambda v: v.sys(key) is not None
        return lambda v: name in v.user()


class _Parser:
    def __init__(self, text: str, parameters: Mapping[str, Any] | None) -> None:
        if not isinstance(text, str) or not text.strip():
            raise SqlError("The SQL expression is empty.")
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.params = {k.lstrip("@").lower(): v for k, v in (parameters or {}).items()}

    # -- token helpers
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def error(self, what: str) -> SqlError:
        t = self.tok
        near = f"near {t.text!r}" if t.kind != "end" else "at the end"
        return SqlError(f"{what} {near} (position {t.pos}) in {self.text!r}.")

    def is_kw(self, *words: str) -> bool:
        return self.tok.kind == "kw" and self.tok.value in words

    def is_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect_op(self, op: str) -> None:
        if not self.is_op(op):
            raise self.error(f"Expected {op!r}")
        self.i += 1

    def end(self) -> None:
        if self.tok.kind != "end":
            raise self.error("Unexpected token")

    # -- predicates
    def predicate(self) -> Pred:
        left = self.conjunction()
        while self.is_kw("or"):
            self.i += 1
            left = _junction(left, self.conjunction(), True)
        return left

    def conjunction(self) -> Pred:
        left = self.negation()
        while self.is_kw("and"):
            self.i += 1
            left = _junction(left, self.negation(), False)
        return left

    def negation(self) -> Pred:
        if self.is_kw("not"):
            self.i += 1
            return _not(self.negation())
        return self.condition()

    def condition(self) -> Pred:
        if self.is_kw("exists"):
            self.i += 1
            self.expect_op("(")
            prop = self.property()
            self.expect_op(")")
            return prop.exists()
        # "(" may open a predicate or an arithmetic expression: ``primary`` parses either
        # (predicates are values too: True, False or None), so nothing is parsed twice
        start = self.tok
        left = self.expression()
        if self.is_op(*_COMPARE_OPS):
            op = self.take().value
            right = self.expression()
            cmp = _compare(op)
            return lambda v: cmp(left(v), right(v))
        negate = False
        if self.is_kw("not") and self.toks[self.i + 1].kind == "kw" \
                and self.toks[self.i + 1].value in ("like", "in"):
            self.i += 1
            negate = True
        if self.is_kw("like"):
            self.i += 1
            pred = self.like(left)
            return _not(pred) if negate else pred
        if self.is_kw("in"):
            self.i += 1
            pred = self.in_list(left)
            return _not(pred) if negate else pred
        if self.is_kw("is"):
            self.i += 1
            is_not = False
            if self.is_kw("not"):
                self.i += 1
                is_not = True
            if not self.is_kw("null"):
                raise self.error("Expected NULL")
            self.i += 1
            if is_not:
                return lambda v: left(v) is not None
            return lambda v: left(v) is None
        if start is self.tok:
            raise self.error("Expected a condition")
        # a bare value: a parenthesised predicate, a property holding true, TRUE itself;
        # logic operators and the filter's result read anything but a bool as unknown
        return left

    def like(self, left: Expr) -> Pred:
        pattern = self.expression()
        escape: Expr | None = None
        if self.is_kw("escape"):
            self.i += 1
            escape = self.expression()
        const_pat = getattr(pattern, "const", _NO)
        const_esc = getattr(escape, "const", _NO) if escape is not None else None
        if const_pat is not _NO and (escape is None or const_esc is not _NO):
            if not isinstance(const_pat, str):
                raise self.error("The LIKE pattern must be a string")
            if const_esc is not None and (not isinstance(const_esc, str) or len(const_esc) != 1):
                raise self.error("The ESCAPE value must be one character")
            rx = like_regex(const_pat, const_esc)

            def match(v: View) -> bool | None:
                x = left(v)
                if not isinstance(x, str):
                    return None
                return rx.fullmatch(x) is not None
            return match

        def dynamic(v: View) -> bool | None:
            x, p = left(v), pattern(v)
            e = escape(v) if escape is not None else None
            if not isinstance(x, str) or not isinstance(p, str):
                return None
            if e is not None and (not isinstance(e, str) or len(e) != 1):
                return None
            try:
                return like_regex(p, e).fullmatch(x) is not None
            except SqlError:
                return None
        return dynamic

    def in_list(self, left: Expr) -> Pred:
        self.expect_op("(")
        items = [self.expression()]
        while self.is_op(","):
            self.i += 1
            items.append(self.expression())
        self.expect_op(")")
        eq = _compare("=")

        def f(v: View) -> bool | None:
            x = left(v)
            if x is None:
                return None
            unknown = False
            for item in items:
                r = eq(x, item(v))
                if r:
                    return True
                if r is None:
                    unknown = True
            return None if unknown else False
        return f

    # -- expressions
    def expression(self) -> Expr:
        left = self.term()
        while self.is_op("+", "-"):
            left = _binary(self.take().value, left, self.term())
        return left

    def term(self) -> Expr:
        left = self.unary()
        while self.is_op("*", "/", "%"):
            left = _binary(self.take().value, left, self.unary())
        return left

    def unary(self) -> Expr:
        if self.is_op("-", "+"):
            op = self.take().value
            inner = self.unary()
            const: Any = getattr(inner, "const", _NO)
            if const is not _NO:
                if not _num(const):
                    raise self.error("A sign applies to a number")
                return _const(-const if op == "-" else const)
            if op == "+":
                return inner
            return lambda v: (lambda x: -x if _num(x) else None)(inner(v))
        return self.primary()

    def primary(self) -> Expr:
        t = self.tok
        if t.kind in ("num", "str"):
            self.i += 1
            return _const(t.value)
        if t.kind == "kw" and t.value in ("true", "false"):
            self.i += 1
            return _const(t.value == "true")
        if t.kind == "kw" and t.value == "null":
            self.i += 1
            return _const(None)
        if t.kind == "param":
            self.i += 1
            key = t.value.lower()
            if key not in self.params:
                raise SqlError(f"The parameter @{t.value} has no value (position {t.pos}).")
            return _const(self.params[key])
        if self.is_op("("):
            self.i += 1
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise self.error("Too deeply nested")
            inner = self.predicate()
            self.expect_op(")")
            self.depth -= 1
            return inner
        if t.kind == "id" and self.toks[self.i + 1].kind == "op" \
                and self.toks[self.i + 1].value == "(":
            return self.function()
        if t.kind == "id":
            return self.property().reader()
        raise self.error("Expected an expression")

    def function(self) -> Expr:
        name = self.take().value.lower()
        self.expect_op("(")
        if name == "newid":
            self.expect_op(")")
            return lambda v: uuid.uuid4()
        if name == "property":
            arg = self.expression()
            self.expect_op(")")

            def prop(v: View) -> Any:
                ref = arg(v)
                if not isinstance(ref, str):
                    return None
                scope, _, rest = ref.partition(".")
                if rest and scope.lower() == "sys":
                    return v.sys(rest.lower())
                if rest and scope.lower() == "user":
                    return v.user().get(rest)
                return v.user().get(ref)
            return prop
        raise self.error(f"Unknown function {name!r}")

    def property(self) -> _Prop:
        t = self.tok
        if t.kind != "id":
            raise self.error("Expected a property name")
        self.i += 1
        scope = "user"
        name = t.value
        if self.is_op(".") and t.text.lower() in ("sys", "user"):
            self.i += 1
            n = self.tok
            if n.kind not in ("id", "kw"):
                raise self.error("Expected a property name")
            self.i += 1
            scope, name = t.text.lower(), n.text if n.kind == "kw" else n.value
        if scope == "sys" and name.lower() not in SYSTEM_PROPERTIES:
            raise SqlError(f"sys.{name} is not a system property (position {t.pos}).")
        return _Prop(scope, name)


_COMPARE_OPS = ("=", "<>", "!=", ">", ">=", "<", "<=")
_ARITH_OPS = ("+", "-", "*", "/", "%")
_NO = object()
_MAX_DEPTH = 100  # parentheses; Python's own recursion limit is not a good error message


def _const(value: Any) -> Expr:
    def f(v: View) -> Any:
        return value
    f.const = value  # type: ignore[attr-defined]
    return f


def _binary(op: str, a: Expr, b: Expr) -> Expr:
    calc = _arith(op)
    ca, cb = getattr(a, "const", _NO), getattr(b, "const", _NO)
    if ca is not _NO and cb is not _NO:
        return _const(calc(ca, cb))  # fold constants once, at compile time
    return lambda v: calc(a(v), b(v))


# ---------------------------------------------------------------- public API


def compile_filter(text: str, parameters: Mapping[str, Any] | None = None) -> Pred:
    """Compile a SQL filter; the result maps a ``View`` to True, False or None (unknown)."""
    p = _Parser(text, parameters)
    try:
        pred = p.predicate()
    except RecursionError:  # e.g. thousands of NOTs in a row
        raise SqlError("The SQL expression is too deeply nested.") from None
    p.end()
    return lambda v: _bool(pred(v))


Action = Callable[[View], None]


def compile_action(text: str, parameters: Mapping[str, Any] | None = None) -> Action:
    """Compile a SQL rule action (``SET p = expr`` / ``REMOVE p``, separated by ``;``)."""
    try:
        return _compile_action(_Parser(text, parameters))
    except RecursionError:
        raise SqlError("The SQL action is too deeply nested.") from None


def _compile_action(p: _Parser) -> Action:
    steps: list[Action] = []
    while p.tok.kind != "end":
        if p.is_kw("set"):
            p.i += 1
            prop = p.property()
            p.expect_op("=")
            steps.append(_setter(prop, p.expression()))
        elif p.is_kw("remove"):
            p.i += 1
            steps.append(_remover(p.property()))
        else:
            raise p.error("Expected SET or REMOVE")
        if p.is_op(";"):
            while p.is_op(";"):
                p.i += 1
        elif p.tok.kind != "end":
            raise p.error("Expected ';'")
    if not steps:
        raise SqlError("The SQL rule action is empty.")

    def run(v: View) -> None:
        for step in steps:
            step(v)
    return run


def _setter(prop: _Prop, expr: Expr) -> Action:
    name = prop.name
    if prop.scope == "sys":
        key = name.lower()
        if key not in SETTABLE_SYSTEM:
            raise SqlError(f"sys.{name} cannot be set by an action.")
        return lambda v: v.set_sys(key, expr(v))

    def set_user(v: View) -> None:
        v.user()[name] = expr(v)
    return set_user


def _remover(prop: _Prop) -> Action:
    name = prop.name
    if prop.scope == "sys":
        key = name.lower()
        if key not in SETTABLE_SYSTEM:
            raise SqlError(f"sys.{name} cannot be removed by an action.")
        return lambda v: v.set_sys(key, None)
    return lambda v: v.user().pop(name, None)
