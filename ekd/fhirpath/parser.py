"""FHIRPath lexer and parser producing a small tuple-free AST.

Hand-written instead of fhirpathpy's ANTLR parser because that one follows the N1 grammar, whose
operator table disagrees with the specification text (`is`/`as` bind looser than `|` and the
comparisons there, tighter here as in FHIRPath 2.0), lacks partial date-time literals such as
`@2015T`, silently ignores trailing garbage (`a )) b` parses as `a`) and does not report syntax
errors at all. The Python ANTLR runtime is also slow; a precedence-climbing parser is a few hundred
lines and parses an invariant in microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


class FhirPathSyntaxError(ValueError):
    """Raised for expressions that do not follow the FHIRPath grammar."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # id, delim, str, num, date, datetime, time, special ($this...), op, eof
    text: str
    pos: int
    value: Any = None


@dataclass(slots=True)
class Ast:
    """One node: `kind` says what it is, `value` carries literal/identifier data."""

    kind: str
    value: Any = None
    children: list[Ast] = field(default_factory=list)
    pos: int = 0


_DATE = r"\d{4}(?:-\d{2}(?:-\d{2})?)?"
_TIME = r"\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?"
_TZ = r"(?:Z|[+-]\d{2}:\d{2})"
_TEMPORAL = re.compile(
    rf"@(?:T(?P<time>{_TIME})|(?P<date>{_DATE})(?:(?P<t>T)(?P<dtime>{_TIME}(?P<tz>{_TZ})?)?)?)"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = ("<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", "{", "}", ",", "+", "-", "*", "/",
        "&", "|", "<", ">", "=", "~", "%")
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t"}


def _unescape(body: str, pos: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt == "u":
            code = body[i + 2 : i + 6]
            if not re.fullmatch(r"[0-9a-fA-F]{4}", code):
                raise FhirPathSyntaxError(f"Invalid unicode escape at {pos + i}")
            out.append(chr(int(code, 16)))
            i += 6
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            raise FhirPathSyntaxError(f"Invalid escape '\\{nxt}' at {pos + i}")
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise FhirPathSyntaxError(f"Unterminated comment at {i}")
            i = j + 2
            continue
        if ch in "'`":
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                what = "string" if ch == "'" else "delimited identifier"
                raise FhirPathSyntaxError(f"Unterminated {what} at {i}")
            body = _unescape(text[i + 1 : j], i + 1)
            tokens.append(Token("str" if ch == "'" else "delim", text[i : j + 1], i, body))
            i = j + 1
            continue
        if ch == "@":
            m = _TEMPORAL.match(text, i)
            if not m:
                raise FhirPathSyntaxError(f"Invalid date/time literal at {i}")
            if m.group("time") is not None:
                tokens.append(Token("time", m.group(0), i, m.group("time")))
            elif m.group("t"):
                tokens.append(Token("datetime", m.group(0), i, m.group(0)[1:]))
            else:
                tokens.append(Token("date", m.group(0), i, m.group("date")))
            i = m.end()
            continue
        if ch.isdigit():
            m = _NUMBER.match(text, i)
            assert m is not None
            tokens.append(Token("num", m.group(0), i, m.group(0)))
            i = m.end()
            continue
        if ch == "$":
            m = _IDENT.match(text, i + 1)
            if not m or m.group(0) not in ("this", "index", "total"):
                raise FhirPathSyntaxError(f"Unknown special variable at {i}")
            tokens.append(Token("special", "$" + m.group(0), i, m.group(0)))
            i = m.end()
            continue
        m = _IDENT.match(text, i)
        if m:
            tokens.append(Token("id", m.group(0), i, m.group(0)))
            i = m.end()
            continue
        for op in _OPS:
            if text.startswith(op, i):
                tokens.append(Token("op", op, i, op))
                i += len(op)
                break
        else:
            raise FhirPathSyntaxError(f"Unexpected character {ch!r} at {i}")
    tokens.append(Token("eof", "", n))
    return tokens


# Binary operators, by precedence (higher binds tighter), per the FHIRPath operator table.
_BINARY: dict[str, int] = {
    "implies": 1,
    "or": 2, "xor": 2,
    "and": 3,
    "in": 4, "contains": 4,
    "=": 5, "~": 5, "!=": 5, "!~": 5,
    "<": 6, ">": 6, "<=": 6, ">=": 6,
    "|": 7,
    "is": 8, "as": 8,
    "+": 9, "-": 9, "&": 9,
    "*": 10, "/": 10, "div": 10, "mod": 10,
}
_UNARY_PREC = 11
_WORD_OPS = {"implies", "or", "xor", "and", "in", "contains", "is", "as", "div", "mod"}
CALENDAR_UNITS = frozenset({
    "year", "years", "month", "months", "week", "weeks", "day", "days", "hour", "hours",
    "minute", "minutes", "second", "seconds", "millisecond", "milliseconds",
})


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self, k: int = 0) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> Token:
        tok = self.next()
        if tok.kind != "op" or tok.text != text:
            raise FhirPathSyntaxError(f"Expected '{text}' at {tok.pos}, found '{tok.text}'")
        return tok

    def at_op(self, text: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.text == text

    def binary_op(self) -> str | None:
        tok = self.peek()
        if tok.kind == "op" and tok.text in _BINARY:
            return tok.text
        if tok.kind == "id" and tok.text in _WORD_OPS:
            return tok.text
        return None

    def parse(self) -> Ast:
        if self.peek().kind == "eof":
            raise FhirPathSyntaxError("Empty expression")
        node = self.expression(0)
        tok = self.peek()
        if tok.kind != "eof":
            raise FhirPathSyntaxError(f"Unexpected '{tok.text}' at {tok.pos}")
        return node

    def expression(self, min_prec: int) -> Ast:
        left = self.unary()
        while True:
            op = self.binary_op()
            if op is None:
                return left
            prec = _BINARY[op]
            if prec < min_prec:
                return left
            tok = self.next()
            if op in ("is", "as"):
                left = Ast("type_op", op, [left, self.type_specifier()], tok.pos)
            else:
                right = self.expression(prec + 1)
                left = Ast("binary", op, [left, right], tok.pos)

    def unary(self) -> Ast:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("+", "-"):
            self.next()
            operand = self.expression(_UNARY_PREC)
            return Ast("unary", tok.text, [operand], tok.pos)
        return self.postfix(self.term())

    def postfix(self, node: Ast) -> Ast:
        while True:
            if self.at_op("."):
                self.next()
                node = self.invocation(node)
            elif self.at_op("["):
                tok = self.next()
                index = self.expression(0)
                self.expect("]")
                node = Ast("index", None, [node, index], tok.pos)
            else:
                return node

    def identifier(self) -> Token:
        tok = self.next()
        if tok.kind not in ("id", "delim"):
            raise FhirPathSyntaxError(f"Expected an identifier at {tok.pos}, found '{tok.text}'")
        return tok

    def invocation(self, target: Ast | None) -> Ast:
        """A member, function or special variable, applied to `target` (None: the focus)."""
        tok = self.peek()
        if tok.kind == "special":
            self.next()
            node = Ast("special", tok.value, [], tok.pos)
            return node if target is None else Ast("chain", None, [target, node], tok.pos)
        name = self.identifier()
        if name.kind == "id" and self.at_op("("):
            self.next()
            args: list[Ast] = []
            if not self.at_op(")"):
                args.append(self.expression(0))
                while self.at_op(","):
                    self.next()
                    args.append(self.expression(0))
            self.expect(")")
            node = Ast("function", name.value, args, name.pos)
        else:
            node = Ast("member", name.value, [], name.pos)
        if target is None:
            return node
        return Ast("chain", None, [target, node], name.pos)

    def term(self) -> Ast:
        tok = self.peek()
        if tok.kind == "op":
            if tok.text == "(":
                self.next()
                inner = self.expression(0)
                self.expect(")")
                return Ast("paren", None, [inner], tok.pos)
            if tok.text == "{":
                self.next()
                self.expect("}")
                return Ast("empty", None, [], tok.pos)
            if tok.text == "%":
                self.next()
                name = self.next()
                if name.kind not in ("id", "delim", "str"):
                    raise FhirPathSyntaxError(f"Expected a constant name at {name.pos}")
                return Ast("constant", name.value, [], tok.pos)
            raise FhirPathSyntaxError(f"Unexpected '{tok.text}' at {tok.pos}")
        if tok.kind == "str":
            self.next()
            return Ast("literal", ("string", tok.value), [], tok.pos)
        if tok.kind == "num":
            self.next()
            unit = self.peek()
            if unit.kind == "str":
                self.next()
                return Ast("literal", ("quantity", (tok.value, unit.value, True)), [], tok.pos)
            if unit.kind == "id" and unit.text in CALENDAR_UNITS:
                self.next()
                return Ast("literal", ("quantity", (tok.value, unit.text, False)), [], tok.pos)
            return Ast("literal", ("number", tok.value), [], tok.pos)
        if tok.kind in ("date", "datetime", "time"):
            self.next()
            return Ast("literal", (tok.kind, tok.value), [], tok.pos)
        if tok.kind == "id" and tok.text in ("true", "false") and not self._is_call():
            self.next()
            return Ast("literal", ("boolean", tok.text == "true"), [], tok.pos)
        if tok.kind in ("id", "delim", "special"):
            return self.invocation(None)
        raise FhirPathSyntaxError(f"Unexpected '{tok.text or 'end of expression'}' at {tok.pos}")

    def _is_call(self) -> bool:
        nxt = self.peek(1)
        return nxt.kind == "op" and nxt.text == "("

    def type_specifier(self) -> Ast:
        first = self.identifier()
        parts = [first.value]
        while self.at_op(".") and self.peek(1).kind in ("id", "delim"):
            self.next()
            parts.append(self.identifier().value)
        return Ast("type", tuple(parts), [], first.pos)


def parse(text: str) -> Ast:
    return _Parser(text).parse()
