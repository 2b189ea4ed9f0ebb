# -*- coding: utf-8 -*-
"""Normalisation of SQLite values for PostgreSQL columns (pure Python, no database).

SQLite stores any value in any column, so what a value means is decided by the
TARGET column's type. Each PostgreSQL column gets a converter that turns an SQLite
value (None, int, float, str for TEXT, bytes for BLOB; bytearray for TEXT read
with the byte-preserving text factory, see migration_source) into a *token*: the
value exactly as PostgreSQL's COPY text format writes it (the type's output
function, then COPY's backslash escaping; NULL is \\N). The same token is sent
to COPY FROM by the migration and hashed by the verification, which compares it
with what PostgreSQL's own output functions produce for the stored value. A
value that cannot be converted without changing it raises Reject; the caller
rejects the whole row. Nothing is ever silently changed, set to NULL or dropped.

The rules (also in the modules' documentation and docs/runbooks/migrate.md):

integers (smallint, integer, bigint)
    SQLite integers in range; reals with no fractional part (5.0); text that is
    an optional sign and digits, optionally followed by a point and zeros ("12",
    "-3", "7.00"). Rejected: out of range, a fractional part, "12abc", blobs.
numeric(p, s)
    Integers; text in decimal or exponent notation; a real is read as its
    shortest round-trip decimal (repr), or, when that has more decimals than s,
    as the 15-significant-digit decimal SQLite itself shows for it (0.1 + 0.2 is
    0.30000000000000004 in binary and "0.3" in SQLite): the digits past the 15th
    are binary noise, not data. The value must then fit exactly: more decimals
    than s (after dropping trailing zeros) or more than p - s integer digits
    reject the row; nothing is rounded. NaN and infinities are rejected.
real, double precision
    Numbers and numeric text; an integer must be exactly representable. A value
    is stored as PostgreSQL stores it (real keeps 24 bits of mantissa, as
    PostgreSQL's own input does); overflow to infinity is rejected.
boolean
    0 and 1 (also 0.0 and 1.0); text, case-insensitively: t, f, true, false,
    y, n, yes, no, 1, 0. Anything else (2, "maybe", " true") is rejected.
timestamp (without time zone), timestamptz
    Per value:
    * text in ISO 8601 extended form: YYYY-MM-DD, optionally followed by T or a
      space and HH:MM[:SS[.fraction]], optionally followed by Z or an offset
      (+HH, +HHMM, +HH:MM, optionally after one space). A value with an offset
      is converted to UTC; a value without one is taken as UTC already (the
      daemon writes UTC, the schema's columns have no time zone).
    * a number, or text that is only a number, is a Unix epoch: seconds when
      its absolute value is below 10**11 (that reaches the year 5138),
      milliseconds from 10**11 to below 10**14 (10**11 ms is 1973-03-03);
      10**14 and more (microseconds, nanoseconds) is rejected, not guessed.
      Reals are rounded to the microsecond, PostgreSQL's resolution; numeric
      text with more digits than a microsecond is rejected.
    * fractions beyond the column's precision (microseconds by default) are
      rejected unless they are zeros; invalid dates (2024-02-30), hour 24 and
      years outside 1..9999 are rejected.
date
    Text YYYY-MM-DD; a timestamp (as above) whose time of day is exactly
    midnight. Anything with a time of day is rejected, not truncated.
text, varchar(n), char(n), enums
    Text; integers (decimal) and reals (shortest round-trip form) become their
    text. Rejected: invalid UTF-8, a NUL character (PostgreSQL text cannot hold
    one), blobs, more than n characters (PostgreSQL would silently cut trailing
    spaces; the module does not), a label an enum does not have.
json, jsonb
    Text that parses as JSON (RFC 8259: no NaN or Infinity, no lone
    surrogates). json keeps the text as it is; jsonb is written in the form
    PostgreSQL prints jsonb (keys by length then bytes, last duplicate wins,
    numbers as numeric). A \\u0000 escape is rejected for jsonb.
uuid
    Text in any form PostgreSQL accepts (hyphens optional, braces), stored
    lower-case with hyphens.
bytea
    Blobs as they are; text as its UTF-8 bytes.
"""

from __future__ import annotations

import array
import datetime
import decimal
import itertools
import json
import math
import operator
import re
import struct
import uuid

from ansible_collections.claude_kit.stack.plugins.module_utils.migration_encoding import (
    NEEDS_ESCAPE,
    NULL,
    copy_escape,
    escape_column,
    show_value,
)


class Reject(Exception):
    """A value that cannot be stored in the column without changing it."""


class UnsupportedType(Exception):
    """A target column type the module does not convert."""


# -- helpers ---------------------------------------------------------------------------


def source_type(value):
    """The SQLite storage class of a value as the reader returns it."""
    if value is None:
        return "null"
    cls = value.__class__
    if cls is int:
        return "integer"
    if cls is float:
        return "real"
    if cls is str or cls is bytearray:
        return "text"
    return "blob"


def _text(value):
    """An SQLite TEXT value (str, or bytearray when read byte-preserving) -> str, checked."""
    if value.__class__ is bytearray:
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Reject(f"invalid UTF-8 in text (byte {exc.start}: {bytes(value[exc.start:exc.start + 1])!r})") from None
    if "\x00" in value:
        raise Reject("text contains a NUL character, which PostgreSQL text cannot hold")
    return value


def _is_text(value):
    return value.__class__ is str or value.__class__ is bytearray


def _with_nulls(values, fast):
    """Apply a whole-list fast path to the non-NULL values; NULL becomes \\N."""
    if None not in values:
        return fast(values)
    present = [v for v in values if v is not None]
    out = fast(present) if present else []
    if out is None:
        return None
    it = iter(out)
    return [NULL if v is None else next(it) for v in values]


# -- converters ------------------------------------------------------------------------


class Converter:
    """Turns SQLite values into COPY tokens for one target column.

    slow(value) is the rule, value by value (None included); it returns the
    token or raises Reject. fast(value) and vector(values) are optional
    shortcuts: they return the very token slow() would, or None (per value, or
    for the whole list) where they are not sure. Unit tests hold them to that.
    """

    kind = "text"
    escapes = False  # whether tokens may need COPY escaping (text-like types)

    def __init__(self, name, notnull=False):
        self.name = name
        self.notnull = notnull

    def null(self):
        if self.notnull:
            raise Reject("NULL in a NOT NULL column")
        return NULL

    def slow(self, value):
        if value is None:
            return self.null()
        return self.one(value)

    def one(self, value):  # pragma: no cover - every converter defines it
        raise NotImplementedError

    def fast(self, value):
        return None

    def vector(self, values):
        return None

    def raw(self, values):
        """A %-format spec ("%d", "%s") when every value of the column is valid and that spec
        prints each exactly as slow() would; None otherwise. normalise_batch then formats
        whole rows in one C call instead of making a token per value. No NULLs here."""
        return None

    def convert(self, values, bad, column_index):
        """values (a sequence) -> list of tokens; failing rows go to bad[row] and get None."""
        tokens = self.vector(values)
        if tokens is None:
            if self.__class__.fast is Converter.fast:
                tokens = [None] * len(values)
            else:
                tokens = list(map(self.fast, values))
        if None in tokens:
            slow = self.slow
            for i, token in enumerate(tokens):
                if token is None:
                    value = values[i]
                    try:
                        tokens[i] = slow(value)
                    except Reject as exc:
                        bad.setdefault(i, []).append((column_index, value, str(exc)))
        return tokens


class IntConverter(Converter):
    kind = "integer"
    _TEXT_RE = re.compile(r"[+-]?[0-9]+(?:\.0*)?\Z")

    def __init__(self, name, bits, notnull=False):
        super().__init__(name, notnull)
        self.bits = bits
        self.lo = -(2 ** (bits - 1))
        self.hi = 2 ** (bits - 1) - 1
        self.type_name = {16: "smallint", 32: "integer", 64: "bigint"}[bits]
        self._code = {16: "h", 32: "i", 64: "q"}[bits]

    def _range(self, number):
        if not self.lo <= number <= self.hi:
            raise Reject(f"{number} is out of range for {self.type_name}")
        return str(number)

    def one(self, value):
        cls = value.__class__
        if cls is int:
            return self._range(value)
        if cls is float:
            if not math.isfinite(value):
                raise Reject(f"{value!r} is not a number an integer column can hold")
            if not value.is_integer():
                raise Reject(f"{value!r} has a fractional part")
            return self._range(int(value))
        if _is_text(value):
            text = _text(value)
            if not self._TEXT_RE.match(text):
                raise Reject(f"text {text[:40]!r} is not an integer")
            return self._range(int(text.split(".")[0]))
        raise Reject(f"a {source_type(value)} value cannot be stored in {self.type_name}")

    def raw(self, values):
        # array() takes Python ints only (no None, float, text), within the C type's range;
        # "%d" prints an int as str() does.
        try:
            array.array(self._code, values)
        except (TypeError, OverflowError):
            return None
        return "%d"

    def vector(self, values):
        code = self._code

        def fast(vals):
            # array() takes Python ints only, and only within the C type's range.
            try:
                array.array(code, vals)
            except (TypeError, OverflowError):
                return None
            return list(map(str, vals))

        if self.notnull and None in values:
            return None
        return _with_nulls(values, fast)


class NumericConverter(Converter):
    kind = "numeric"
    _TEXT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")

    def __init__(self, name, precision=None, scale=None, notnull=False):
        super().__init__(name, notnull)
        self.precision = precision
        self.scale = scale if precision is not None else None
        if precision is not None:
            self.quantum = decimal.Decimal(1).scaleb(-self.scale)
            self.int_digits = precision - self.scale  # values must be below 10 ** int_digits
            self.limit = 10 ** self.int_digits
            self.type_name = f"numeric({precision},{self.scale})"
            self._float_fmt = f"%.{self.scale}f" if 0 <= self.scale and precision <= 15 else None
            self._int_fmt = "%d." + "0" * self.scale if self.scale > 0 else "%d"
            self._neg_zero = "-" + (self._float_fmt % 0.0) if self._float_fmt else None
        else:
            self.type_name = "numeric"
        self._ctx = decimal.Context(prec=max(precision or 0, 60) + 10, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)

    @staticmethod
    def _plain(number):
        """Decimal -> PostgreSQL numeric text: fixed point, scale kept, no negative zero."""
        text = format(number, "f")
        if text.startswith("-") and not number:
            text = text[1:]
        return text

    def _fit(self, number, shown):
        """Exact fit into numeric(p, s) or Reject; returns the token."""
        if self.precision is None:
            if number and (number.adjusted() >= 131072 or number.as_tuple().exponent < -16383):
                raise Reject(f"{shown} is outside the range of numeric")
            return self._plain(number)
        if number and number.adjusted() >= self.int_digits:
            raise Reject(f"{shown} overflows {self.type_name} (at most {self.int_digits} digits before the point)")
        quantized = number.quantize(self.quantum, context=self._ctx)
        if quantized != number:
            raise Reject(f"{shown} has more than {self.scale} decimal places for {self.type_name} (not rounded)")
        if quantized and quantized.adjusted() >= self.int_digits:
            raise Reject(f"{shown} overflows {self.type_name}")
        return self._plain(quantized)

    def one(self, value):
        cls = value.__class__
        if cls is int:
            return self._fit(decimal.Decimal(value), str(value))
        if cls is float:
            if not math.isfinite(value):
                raise Reject(f"{value!r} cannot be stored in {self.type_name}")
            shortest = decimal.Decimal(repr(value))
            try:
                return self._fit(shortest, repr(value))
            except Reject:
                sqlite_digits = decimal.Decimal("%.15g" % value)
                if sqlite_digits == shortest or self.precision is None:
                    raise
                return self._fit(sqlite_digits, repr(value))
        if _is_text(value):
            text = _text(value)
            if not self._TEXT_RE.match(text):
                raise Reject(f"text {text[:40]!r} is not a number")
            return self._fit(decimal.Decimal(text), text[:40])
        raise Reject(f"a {source_type(value)} value cannot be stored in {self.type_name}")

    def vector(self, values):
        if self.precision is None or self._float_fmt is None:
            return None
        if self.notnull and None in values:
            return None

        def fast(vals):
            types = set(map(type, vals))
            if types == {float}:
                if not (min(vals) > -self.limit and max(vals) < self.limit):
                    return None
                tokens = list(map(self._float_fmt.__mod__, vals))
                # Exact when the printed value reads back as the same double: the
                # shortest decimal of that double then has at most `scale` places.
                back = list(map(float, tokens))
                if back != vals:
                    for i, (a, b) in enumerate(zip(back, vals)):
                        if a != b:
                            tokens[i] = None
                if self._neg_zero in tokens:
                    tokens = [None if t == self._neg_zero else t for t in tokens]
                return tokens
            if types == {int}:
                if not (min(vals) > -self.limit and max(vals) < self.limit):
                    return None
                return list(map(self._int_fmt.__mod__, vals))
            return None

        return _with_nulls(values, fast)


def _float_text(digits, exp10, fixed_below):
    """Shortest digits and decimal exponent -> PostgreSQL's float output layout."""
    if -4 <= exp10 < fixed_below:
        if exp10 >= len(digits) - 1:
            return digits + "0" * (exp10 - len(digits) + 1)
        if exp10 >= 0:
            return digits[: exp10 + 1] + "." + digits[exp10 + 1:]
        return "0." + "0" * (-exp10 - 1) + digits
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e{'+' if exp10 >= 0 else '-'}{abs(exp10):02d}"


def _round_float4(value):
    return struct.unpack("<f", struct.pack("<f", value))[0]


def float_token(value, bits=64):
    """A Python float -> PostgreSQL's float8out (bits=64) or float4out (bits=32) text."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    if bits == 64:
        shortest = repr(value)
    else:  # the fewest significant digits that read back as the same single
        for ndigits in range(1, 10):
            shortest = "%.*e" % (ndigits - 1, value)
            if _round_float4(float(shortest)) == value:
                break
    sign, digits, exponent = decimal.Decimal(shortest).as_tuple()
    exp10 = exponent + len(digits) - 1
    text = "".join(map(str, digits)).rstrip("0")
    return ("-" if sign else "") + _float_text(text, exp10, 15 if bits == 64 else 6)


class FloatConverter(Converter):
    kind = "float"
    _TEXT_RE = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)\Z", re.I)

    def __init__(self, name, bits, notnull=False):
        super().__init__(name, notnull)
        self.bits = bits
        self.type_name = "double precision" if bits == 64 else "real"

    def _token(self, number, shown):
        if self.bits == 32 and math.isfinite(number):
            try:
                number = _round_float4(number)
            except OverflowError:
                raise Reject(f"{shown} overflows real") from None
        return float_token(number, self.bits)

    def one(self, value):
        cls = value.__class__
        if cls is float:
            return self._token(value, repr(value))
        if cls is int:
            try:
                as_float = float(value)
            except OverflowError:
                raise Reject(f"{value} overflows {self.type_name}") from None
            if int(as_float) != value:
                raise Reject(f"{value} is not exactly representable in {self.type_name}")
            return self._token(as_float, str(value))
        if _is_text(value):
            text = _text(value)
            if not self._TEXT_RE.match(text):
                raise Reject(f"text {text[:40]!r} is not a number")
            number = float(text)
            if math.isinf(number) and "inf" not in text.lower():
                raise Reject(f"{text[:40]} overflows {self.type_name}")
            return self._token(number, text[:40])
        raise Reject(f"a {source_type(value)} value cannot be stored in {self.type_name}")

    def fast(self, value):
        if value.__class__ is float and self.bits == 64:
            return float_token(value)
        return None


class BoolConverter(Converter):
    kind = "boolean"
    _TEXT = {"t": "t", "true": "t", "y": "t", "yes": "t", "1": "t", "f": "f", "false": "f", "n": "f", "no": "f", "0": "f"}
    _INT = {0: "f", 1: "t"}

    def one(self, value):
        cls = value.__class__
        if cls is int or cls is float:
            if value == 0:
                return "f"
            if value == 1:
                return "t"
            raise Reject(f"{value!r} is not a boolean (only 0 and 1 are)")
        if _is_text(value):
            text = _text(value)
            token = self._TEXT.get(text.lower())
            if token is None:
                raise Reject(f"text {text[:40]!r} is not a boolean (t/f, true/false, yes/no, y/n, 1/0)")
            return token
        raise Reject(f"a {source_type(value)} value cannot be stored in boolean")

    def vector(self, values):
        def fast(vals):
            if set(map(type, vals)) != {int} or not set(vals) <= {0, 1}:
                return None
            return list(map(self._INT.__getitem__, vals))

        if self.notnull and None in values:
            return None
        return _with_nulls(values, fast)


_EPOCH = datetime.datetime(1970, 1, 1)
_MS_FROM = 10**11
_TOO_BIG = 10**14
_ISO_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?)?)?"
    r"(?: ?(Z|z|[+-][0-9]{2}(?::?[0-9]{2})?))?\Z"
)
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
_fromisoformat = datetime.datetime.fromisoformat


def timestamp_text(moment):
    """A naive datetime -> PostgreSQL's timestamp output (ISO DateStyle)."""
    text = moment.isoformat(" ")
    if moment.microsecond:
        text = text.rstrip("0")
    return text


def parse_timestamp(value):
    """An SQLite value -> naive UTC datetime, by the rules in this file's docstring."""
    cls = value.__class__
    if cls is int or cls is float:
        return _from_epoch(value, repr(value))
    if not _is_text(value):
        raise Reject(f"a {source_type(value)} value is not a timestamp")
    text = _text(value)
    if _NUMBER_RE.match(text):
        number = decimal.Decimal(text)
        return _from_epoch(number, text)
    match = _ISO_RE.match(text)
    if not match:
        raise Reject(f"text {text[:40]!r} is not an ISO 8601 timestamp or an epoch number")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = 0
    if fraction:
        if len(fraction) > 6 and fraction[6:].strip("0"):
            raise Reject(f"{text[:40]!r} has fractions of a second below a microsecond")
        micro = int(fraction[:6].ljust(6, "0"))
    try:
        moment = datetime.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), micro)
    except ValueError as exc:
        raise Reject(f"{text[:40]!r} is not a valid date and time ({exc})") from None
    if offset and offset not in "Zz":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + int(digits[2:4] or 0)
        if minutes >= 24 * 60:
            raise Reject(f"{text[:40]!r} has an invalid UTC offset")
        try:
            moment = moment - sign * datetime.timedelta(minutes=minutes)
        except OverflowError:
            raise Reject(f"{text[:40]!r} is out of range in UTC") from None
    return moment


def _from_epoch(number, shown):
    if number.__class__ is float and not math.isfinite(number):
        raise Reject(f"{shown} is not a finite number")
    magnitude = abs(number)
    if magnitude >= _TOO_BIG:
        raise Reject(f"epoch value {shown} is too large (10**14 or more: microseconds or nanoseconds are not guessed)")
    if magnitude >= _MS_FROM:
        unit = "milliseconds"
        seconds = number / 1000 if number.__class__ is float else decimal.Decimal(number) / 1000
    else:
        unit = "seconds"
        seconds = number
    if seconds.__class__ is decimal.Decimal:
        micro = seconds * 1_000_000
        if micro != micro.to_integral_value():
            raise Reject(f"epoch value {shown} has fractions of a microsecond")
        delta = datetime.timedelta(microseconds=int(micro))
    elif seconds.__class__ is int:
        delta = datetime.timedelta(seconds=seconds)
    else:
        delta = datetime.timedelta(seconds=seconds) if unit == "seconds" else datetime.timedelta(milliseconds=number)
    try:
        return _EPOCH + delta
    except OverflowError:
        raise Reject(f"epoch value {shown} ({unit}) is outside the years 1..9999") from None


class TimestampConverter(Converter):
    kind = "timestamp"

    def __init__(self, name, with_tz=False, precision=6, notnull=False):
        super().__init__(name, notnull)
        self.with_tz = with_tz
        self.precision = 6 if precision is None or precision < 0 else precision
        self.suffix = "+00" if with_tz else ""
        self.type_name = ("timestamp with time zone" if with_tz else "timestamp without time zone") + (
            f" ({self.precision})" if self.precision < 6 else ""
        )

    def one(self, value):
        moment = parse_timestamp(value)
        if self.precision < 6 and moment.microsecond % 10 ** (6 - self.precision):
            raise Reject(f"{show_value(value)} has more fractional digits than {self.type_name}")
        return timestamp_text(moment) + self.suffix

    def fast(self, value):
        # The two shapes applications write: SQLite's CURRENT_TIMESTAMP and
        # JavaScript's toISOString(); and whole epoch seconds or milliseconds.
        # Anything else goes through one().
        if self.precision < 6:
            return None
        if value.__class__ is int:
            if 0 <= value < _MS_FROM:
                return timestamp_text(_EPOCH + datetime.timedelta(seconds=value)) + self.suffix
            if _MS_FROM <= value < _TOO_BIG:
                return timestamp_text(_EPOCH + datetime.timedelta(milliseconds=value)) + self.suffix
            return None
        if value.__class__ is str:
            size = len(value)
            if size == 19:
                if value[10] == " " and value[4] == "-" and value[7] == "-" and value[13] == ":" and value[16] == ":" and value.isascii():
                    try:
                        _fromisoformat(value)
                    except ValueError:
                        return None
                    return value + self.suffix
            elif size == 24:
                if (value[10] == "T" and value[23] == "Z" and value[19] == "." and value[4] == "-" and value[7] == "-"
                        and value[13] == ":" and value[16] == ":" and value.isascii()):
                    head = value[:19]
                    try:
                        _fromisoformat(head)
                    except ValueError:
                        return None
                    fraction = value[20:23]
                    if not fraction.isdigit():
                        return None
                    fraction = fraction.rstrip("0")
                    return value[:10] + " " + value[11:19] + ("." + fraction if fraction else "") + self.suffix
        return None

    def vector(self, values):
        if self.precision < 6 or (self.notnull and None in values):
            return None
        return _with_nulls(values, self._shapes)

    def raw(self, values):
        # SQLite's CURRENT_TIMESTAMP shape is already PostgreSQL's output form (without a zone).
        if self.suffix or self.precision < 6 or None in values:
            return None
        try:
            if set(map(len, values)) != {19}:
                return None
        except TypeError:
            return None
        return "%s" if self._shapes(values) is not None else None

    def _shapes(self, vals):
        """A whole column in one of the two common shapes, checked and converted by C loops."""
        try:
            sizes = set(map(len, vals))  # TypeError for numbers
        except TypeError:
            return None
        if len(sizes) != 1:
            return None
        size = sizes.pop()
        if size not in (19, 24):
            return None
        try:
            joined = "".join(vals)  # TypeError unless every value is text
        except TypeError:
            return None
        if not joined.isascii():
            return None
        count = len(vals)
        for position, char in ((4, "-"), (7, "-"), (13, ":"), (16, ":")):
            if joined[position::size] != char * count:
                return None
        if size == 19:
            if joined[10::19] != " " * count:
                return None
        elif joined[10::24] != "T" * count or joined[19::24] != "." * count or joined[23::24] != "Z" * count:
            return None
        try:
            # Validates every field (digits, ranges, calendar); the values are not used.
            list(map(_fromisoformat, vals))
        except ValueError:
            return None
        if size == 19:
            return list(map(operator.add, vals, itertools.repeat(self.suffix))) if self.suffix else list(vals)
        # YYYY-MM-DDTHH:MM:SS.mmmZ -> YYYY-MM-DD HH:MM:SS[.m[m[m]]]: T and Z occur once
        # per value, at known places (checked above, the rest is digits). A fraction of
        # zeros goes first (through a placeholder, so that the seconds before it are
        # not taken for fraction digits), then the trailing zeros of the others.
        text = joined.replace("T", " ").replace(".000Z", "\x01").replace("00Z", "Z").replace("0Z", "Z").replace("\x01", "Z")
        if self.suffix:
            text = text.replace("Z", self.suffix + "Z")
        return text.split("Z")[:-1]


class DateConverter(Converter):
    kind = "date"

    def one(self, value):
        if _is_text(value):
            text = _text(value)
            if len(text) == 10:
                try:
                    day = datetime.date.fromisoformat(text)
                except ValueError:
                    day = None
                if day is not None and text[4] == "-" and text[7] == "-":
                    return day.isoformat()
        moment = parse_timestamp(value)
        if moment.time() != datetime.time(0):
            raise Reject(f"{show_value(value)} has a time of day; a date column would drop it")
        return moment.date().isoformat()

    def fast(self, value):
        if value.__class__ is str and len(value) == 10 and value[4] == "-" and value[7] == "-" and value.isascii():
            try:
                datetime.date.fromisoformat(value)
            except ValueError:
                return None
            return value
        return None


class TextConverter(Converter):
    kind = "text"
    escapes = True

    def __init__(self, name, max_chars=None, pad=False, labels=None, type_name="text", notnull=False):
        super().__init__(name, notnull)
        self.max_chars = max_chars
        self.pad = pad
        self.labels = frozenset(labels) if labels is not None else None
        self.type_name = type_name

    def _check(self, text):
        if self.max_chars is not None and len(text) > self.max_chars:
            raise Reject(f"{len(text)} characters do not fit {self.type_name} (not truncated)")
        if self.labels is not None and text not in self.labels:
            raise Reject(f"{text[:40]!r} is not a label of enum {self.type_name}")
        if self.pad and len(text) < self.max_chars:
            text = text.ljust(self.max_chars)
        return copy_escape(text)

    def one(self, value):
        cls = value.__class__
        if cls is str or cls is bytearray:
            return self._check(_text(value))
        if cls is int:
            return self._check(str(value))
        if cls is float:
            return self._check(repr(value))
        raise Reject(f"a blob cannot be stored in {self.type_name} (only text can)")

    def fast(self, value):
        if value.__class__ is str and self.labels is None and not self.pad and "\x00" not in value:
            if self.max_chars is None or len(value) <= self.max_chars:
                return copy_escape(value)
        return None

    def raw(self, values):
        # Text without NUL, within the length limit and with nothing COPY must escape is its own token.
        if self.pad or self.labels is not None or set(map(type, values)) != {str}:
            return None
        joined = "".join(values)
        if "\x00" in joined or NEEDS_ESCAPE.search(joined):
            return None
        if self.max_chars is not None and max(map(len, values)) > self.max_chars:
            return None
        return "%s"

    def vector(self, values):
        if self.pad or self.labels is not None or (self.notnull and None in values):
            return None

        def fast(vals):
            if set(map(type, vals)) != {str}:
                return None
            joined = "".join(vals)
            if "\x00" in joined:
                return None
            if self.max_chars is not None and max(map(len, vals)) > self.max_chars:
                return None
            if NEEDS_ESCAPE.search(joined):
                return escape_column(vals)
            return list(vals)

        return _with_nulls(values, fast)


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


_json_decoder = json.JSONDecoder(parse_float=decimal.Decimal, parse_constant=_reject_constant)
_json_decoder_plain = json.JSONDecoder(parse_constant=_reject_constant)  # validation only: floats are cheaper
_encode_json_string = json.encoder.encode_basestring


def _jsonb_key(key):
    raw = key.encode("utf-8")
    return len(raw), raw


def _jsonb_write(obj, out):
    cls = obj.__class__
    if cls is str:
        if "\x00" in obj:
            raise Reject("JSON contains \\u0000, which jsonb cannot hold")
        out.append(_encode_json_string(obj))
    elif cls is dict:
        if not obj:
            out.append("{}")
            return
        out.append("{")
        first = True
        for key in sorted(obj, key=_jsonb_key):
            if not first:
                out.append(", ")
            first = False
            if "\x00" in key:
                raise Reject("JSON contains \\u0000, which jsonb cannot hold")
            out.append(_encode_json_string(key))
            out.append(": ")
            _jsonb_write(obj[key], out)
        out.append("}")
    elif cls is list:
        if not obj:
            out.append("[]")
            return
        out.append("[")
        first = True
        for item in obj:
            if not first:
                out.append(", ")
            first = False
            _jsonb_write(item, out)
        out.append("]")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif obj is None:
        out.append("null")
    elif cls is int:
        out.append(str(obj))
    else:  # Decimal: PostgreSQL keeps jsonb numbers as numeric
        out.append(NumericConverter._plain(obj))


def jsonb_text(text):
    """JSON text -> the text PostgreSQL prints for it as jsonb; Reject if jsonb cannot hold it."""
    try:
        obj = _json_decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        raise Reject(f"not valid JSON: {str(exc)[:80]}") from None
    out = []
    try:
        _jsonb_write(obj, out)
    except RecursionError:
        raise Reject("JSON nested too deeply") from None
    except UnicodeEncodeError:
        raise Reject("JSON contains an unpaired surrogate escape (\\ud800-\\udfff)") from None
    result = "".join(out)
    try:
        result.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject("JSON contains an unpaired surrogate escape (\\ud800-\\udfff)") from None
    return result


def json_check(text):
    """JSON text -> the same text if PostgreSQL's json type accepts it; Reject otherwise."""
    try:
        obj = _json_decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        raise Reject(f"not valid JSON: {str(exc)[:80]}") from None
    try:
        # Unpaired surrogates only show up when the strings are encoded.
        for piece in _walk_strings(obj):
            piece.encode("utf-8")
    except RecursionError:
        raise Reject("JSON nested too deeply") from None
    except UnicodeEncodeError:
        raise Reject("JSON contains an unpaired surrogate escape (\\ud800-\\udfff)") from None
    return text


def _walk_strings(obj):
    stack = [obj]
    while stack:
        item = stack.pop()
        if item.__class__ is str:
            yield item
        elif item.__class__ is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif item.__class__ is list:
            stack.extend(item)


class JsonConverter(Converter):
    """JSON text. canonical=False (for loading) sends jsonb as the source text once it is known
    that PostgreSQL reads it as jsonb_text() does (no \\u escapes, or escapes it can hold);
    canonical=True (for digests) gives PostgreSQL's printed form."""

    kind = "json"
    escapes = True

    def __init__(self, name, binary=True, notnull=False, canonical=True):
        super().__init__(name, notnull)
        self.binary = binary
        self.canonical = canonical
        self.type_name = "jsonb" if binary else "json"

    def _token(self, text):
        if self.binary and self.canonical:
            return copy_escape(jsonb_text(text))
        if "\\u" in text:  # escapes: \\u0000 and unpaired surrogates need the full check
            jsonb_text(text) if self.binary else json_check(text)
        else:
            try:
                _json_decoder_plain.decode(text)
            except (ValueError, RecursionError) as exc:
                raise Reject(f"not valid JSON: {str(exc)[:80]}") from None
        return copy_escape(text)

    def one(self, value):
        if not _is_text(value):
            raise Reject(f"a {source_type(value)} value is not JSON text")
        return self._token(_text(value))

    def fast(self, value):
        if value.__class__ is str and "\x00" not in value:
            try:
                return self._token(value)
            except Reject:
                return None
        return None


class UuidConverter(Converter):
    kind = "uuid"
    _TEXT_RE = re.compile(r"\{?[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}\}?\Z")

    def one(self, value):
        if not _is_text(value):
            raise Reject(f"a {source_type(value)} value is not a UUID")
        text = _text(value)
        if not self._TEXT_RE.match(text) or (text[0] == "{") != (text[-1] == "}"):
            raise Reject(f"text {text[:40]!r} is not a UUID")
        return str(uuid.UUID(text.strip("{}").replace("-", "")))


class ByteaConverter(Converter):
    kind = "bytea"

    def one(self, value):
        cls = value.__class__
        if cls is bytes:
            return "\\\\x" + value.hex()
        if cls is str:
            return "\\\\x" + value.encode("utf-8").hex()
        if cls is bytearray:
            return "\\\\x" + bytes(value).hex()
        raise Reject(f"a {source_type(value)} value cannot be stored in bytea")


# -- choosing a converter for a column ---------------------------------------------------

SUPPORTED_TYPES = (
    "smallint, integer, bigint, numeric, real, double precision, boolean, timestamp, timestamptz, "
    "date, text, varchar, char, citext, enums, json, jsonb, uuid, bytea"
)


def numeric_typmod(typmod):
    """pg_attribute.atttypmod of a numeric column -> (precision, scale) or (None, None)."""
    if typmod is None or typmod < 4:
        return None, None
    value = typmod - 4
    precision = (value >> 16) & 0xFFFF
    scale = ((value & 0x7FF) ^ 1024) - 1024  # PostgreSQL 15 allows negative scales
    return precision, scale


def make_converter(column, canonical=True):
    """column: a dict with name, base (pg_type name of the base type), typmod, notnull,
    type_name (format_type), labels (enum labels or None). canonical=False gives the
    converter for loading (see JsonConverter). Raises UnsupportedType."""
    name, base, typmod, notnull = column["name"], column["base"], column.get("typmod", -1), column.get("notnull", False)
    shown = column.get("type_name") or base
    if column.get("labels") is not None:
        return TextConverter(name, labels=column["labels"], type_name=shown, notnull=notnull)
    if base in ("int2", "int4", "int8"):
        return IntConverter(name, {"int2": 16, "int4": 32, "int8": 64}[base], notnull=notnull)
    if base == "numeric":
        precision, scale = numeric_typmod(typmod)
        return NumericConverter(name, precision, scale, notnull=notnull)
    if base in ("float4", "float8"):
        return FloatConverter(name, 32 if base == "float4" else 64, notnull=notnull)
    if base == "bool":
        return BoolConverter(name, notnull=notnull)
    if base in ("timestamp", "timestamptz"):
        return TimestampConverter(name, with_tz=base == "timestamptz", precision=typmod, notnull=notnull)
    if base == "date":
        return DateConverter(name, notnull=notnull)
    if base in ("text", "citext"):
        return TextConverter(name, type_name=shown, notnull=notnull)
    if base == "varchar":
        return TextConverter(name, max_chars=typmod - 4 if typmod and typmod >= 4 else None, type_name=shown, notnull=notnull)
    if base == "bpchar":
        size = typmod - 4 if typmod and typmod >= 4 else None
        return TextConverter(name, max_chars=size, pad=size is not None, type_name=shown, notnull=notnull)
    if base in ("json", "jsonb"):
        return JsonConverter(name, binary=base == "jsonb", notnull=notnull, canonical=canonical)
    if base == "uuid":
        return UuidConverter(name, notnull=notnull)
    if base == "bytea":
        return ByteaConverter(name, notnull=notnull)
    raise UnsupportedType(f"column {name} has type {shown}, which the migration does not convert (supported: {SUPPORTED_TYPES})")


# -- rows --------------------------------------------------------------------------------


class Batch:
    """A normalised batch: lines (COPY text, no newline) of the rows that convert, in
    order; bad: {row index: [(column index, value, reason), ...]} for the others;
    tokens: the token list of each column (None where the row is bad), or None for a
    column whose raw values were formatted directly (raw: {column index: (values,
    spec)}; column() makes their tokens when asked); good: the indexes of the rows
    behind lines."""

    __slots__ = ("lines", "bad", "tokens", "size", "raw")

    def __init__(self, lines, bad, tokens, size, raw=None):
        self.lines = lines
        self.bad = bad
        self.tokens = tokens
        self.size = size
        self.raw = raw or {}

    def good(self):
        return [i for i in range(self.size) if i not in self.bad] if self.bad else range(self.size)

    def column(self, index):
        """Tokens of one column for the rows behind lines."""
        tokens = self.tokens[index]
        if tokens is None:
            tokens = _raw_tokens(*self.raw[index])
        if self.bad:
            return [t for i, t in enumerate(tokens) if i not in self.bad]
        return tokens


def _raw_tokens(values, spec):
    return list(map(str, values)) if spec == "%d" else list(values)


def normalise_batch(converters, rows):
    """Rows from SQLite -> Batch.

    rows: a list of tuples whose first len(converters) items are the source values
    of the converters' columns, in order (more items, such as a rowid, are ignored).
    Columns whose raw values are valid as they are (Converter.raw) are not turned
    into tokens: each line is then made by one %-format of the row.
    """
    if not rows:
        return Batch([], {}, [[] for _converter in converters], 0)
    columns = list(zip(*rows))
    bad = {}
    tokens, specs, raw = [], [], {}
    for i, conv in enumerate(converters):
        spec = conv.raw(columns[i])
        if spec is None:
            tokens.append(conv.convert(columns[i], bad, i))
            specs.append("%s")
        else:
            tokens.append(None)
            specs.append(spec)
            raw[i] = (columns[i], spec)
    if raw and not bad:
        fields = [columns[i] if tokens[i] is None else tokens[i] for i in range(len(converters))]
        return Batch(list(map("\t".join(specs).__mod__, zip(*fields))), bad, tokens, len(rows), raw)
    for i, (values, spec) in raw.items():
        tokens[i] = _raw_tokens(values, spec)
    if bad:
        lines = ["\t".join(row) for i, row in enumerate(zip(*tokens)) if i not in bad]
    else:
        lines = list(map("\t".join, zip(*tokens)))
    return Batch(lines, bad, tokens, len(rows))
