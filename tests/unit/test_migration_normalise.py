"""Normalisation rules of the SQLite -> PostgreSQL migration (migration_normalise), value by value."""

import decimal
import random

import pytest

from ansible_collections.claude_kit.stack.plugins.module_utils import migration_encoding as me
from ansible_collections.claude_kit.stack.plugins.module_utils import migration_normalise as mn
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_normalise import Reject


def conv(base, typmod=-1, notnull=False, labels=None):
    return mn.make_converter({"name": "c", "base": base, "typmod": typmod, "notnull": notnull, "type_name": base, "labels": labels})


def ok(converter, value):
    return converter.slow(value)


def rejected(converter, value, match=None):
    with pytest.raises(Reject) as info:
        converter.slow(value)
    if match:
        assert match in str(info.value)
    return str(info.value)


VARCHAR = lambda n: n + 4  # atttypmod of varchar(n)
NUMERIC = lambda p, s: ((p << 16) | s) + 4  # atttypmod of numeric(p, s)


# -- timestamps ------------------------------------------------------------------------

TS = conv("timestamp")


@pytest.mark.parametrize(
    "value,expected",
    [
        (1700000000, "2023-11-14 22:13:20"),  # epoch seconds
        (1700000000123, "2023-11-14 22:13:20.123"),  # epoch milliseconds
        (1700000000.5, "2023-11-14 22:13:20.5"),  # real seconds
        (1700000000123.25, "2023-11-14 22:13:20.12325"),  # real milliseconds, to the microsecond
        (0, "1970-01-01 00:00:00"),
        (-86400, "1969-12-31 00:00:00"),
        (99_999_999_999, "5138-11-16 09:46:39"),  # the largest value read as seconds
        (100_000_000_000, "1973-03-03 09:46:40"),  # the smallest read as milliseconds
        ("1700000000", "2023-11-14 22:13:20"),  # numeric text: same rule
        ("1700000000123", "2023-11-14 22:13:20.123"),
        ("2024-01-15 10:30:00", "2024-01-15 10:30:00"),
        ("2024-01-15T10:30:00", "2024-01-15 10:30:00"),
        ("2024-01-15T10:30:00.123Z", "2024-01-15 10:30:00.123"),
        ("2024-01-15T10:30:00.100Z", "2024-01-15 10:30:00.1"),
        ("2024-01-15T10:30:00.000Z", "2024-01-15 10:30:00"),
        ("2024-01-15 10:30:00.123456", "2024-01-15 10:30:00.123456"),
        ("2024-01-15 10:30:00.1234560", "2024-01-15 10:30:00.123456"),  # extra digits that are zeros
        ("2024-01-15T10:30:00+02:00", "2024-01-15 08:30:00"),  # offsets are converted to UTC
        ("2024-01-15T01:30:00+02:00", "2024-01-14 23:30:00"),
        ("2024-01-15 10:30:00-0530", "2024-01-15 16:00:00"),
        ("2024-01-15 10:30:00 +01", "2024-01-15 09:30:00"),
        ("2024-01-15 10:30", "2024-01-15 10:30:00"),
        ("2024-01-15", "2024-01-15 00:00:00"),
        ("0099-01-01 00:00:00", "0099-01-01 00:00:00"),
    ],
)
def test_timestamp_values(value, expected):
    assert ok(TS, value) == expected


@pytest.mark.parametrize(
    "value,reason",
    [
        ("2024-02-30 10:00:00", "not a valid date"),
        ("2024-01-15 24:00:00", "not a valid date"),
        ("2024-01-15 10:30:00.1234567", "below a microsecond"),
        ("15/01/2024", "not an ISO 8601"),
        ("yesterday", "not an ISO 8601"),
        ("2024-01-15T10:30:00+25:00", "invalid UTC offset"),
        (10**14, "too large"),  # microseconds are not guessed
        (-(10**14), "too large"),
        ("1700000000.1234567", "fractions of a microsecond"),
        (b"\x00\x01", "blob"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (-(10**11) + 1, "outside the years"),
    ],
)
def test_timestamp_rejects(value, reason):
    rejected(TS, value, reason)


def test_timestamp_null_and_not_null():
    assert ok(TS, None) == "\\N"
    rejected(conv("timestamp", notnull=True), None, "NULL in a NOT NULL column")


def test_timestamptz_is_written_in_utc():
    tz = conv("timestamptz")
    assert ok(tz, "2024-01-15T10:30:00+02:00") == "2024-01-15 08:30:00+00"
    assert ok(tz, 1700000000) == "2023-11-14 22:13:20+00"
    assert tz.vector(("2024-01-15 10:30:00", "2024-01-15 11:30:00")) == ["2024-01-15 10:30:00+00", "2024-01-15 11:30:00+00"]


def test_timestamp_precision_is_not_rounded():
    ts0 = conv("timestamp", typmod=0)
    assert ok(ts0, "2024-01-15 10:30:00") == "2024-01-15 10:30:00"
    rejected(ts0, "2024-01-15 10:30:00.5", "more fractional digits")


def test_invalid_utf8_in_timestamp_text():
    rejected(TS, bytearray(b"2024-01-15 10:30:\xff0"), "invalid UTF-8")


# -- booleans --------------------------------------------------------------------------

BOOL = conv("bool")


@pytest.mark.parametrize(
    "value,expected",
    [(0, "f"), (1, "t"), (1.0, "t"), ("t", "t"), ("f", "f"), ("true", "t"), ("false", "f"), ("FALSE", "f"),
     ("True", "t"), ("yes", "t"), ("NO", "f"), ("y", "t"), ("n", "f"), ("1", "t"), ("0", "f"), (None, "\\N")],
)
def test_boolean_values(value, expected):
    assert ok(BOOL, value) == expected


@pytest.mark.parametrize("value", [2, -1, 0.5, "maybe", " true", "", "on", b"\x01"])
def test_boolean_rejects(value):
    rejected(BOOL, value)


def test_false_text_is_false_not_truthy():
    # The classic bug: bool("false") is True in Python.
    assert ok(BOOL, "false") == "f"
    assert BOOL.convert(("false", "true", "f"), {}, 0) == ["f", "t", "f"]


# -- integers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base,value,expected",
    [("int4", 5, "5"), ("int4", 5.0, "5"), ("int4", "12", "12"), ("int4", "-3", "-3"), ("int4", "+7", "7"),
     ("int4", "7.00", "7"), ("int4", -(2**31), "-2147483648"), ("int4", 2**31 - 1, "2147483647"),
     ("int2", 32767, "32767"), ("int8", 2**63 - 1, str(2**63 - 1))],
)
def test_integer_values(base, value, expected):
    assert ok(conv(base), value) == expected


@pytest.mark.parametrize(
    "base,value,reason",
    [("int4", "12abc", "not an integer"), ("int4", 5.5, "fractional part"), ("int4", 2**31, "out of range for integer"),
     ("int4", -(2**31) - 1, "out of range"), ("int2", 40000, "out of range for smallint"), ("int8", 2**63, "out of range for bigint"),
     ("int4", " 12", "not an integer"), ("int4", "1e3", "not an integer"), ("int4", "", "not an integer"),
     ("int4", float("inf"), "not a number"), ("int4", b"12", "blob"), ("int4", "１２", "not an integer")],
)
def test_integer_rejects(base, value, reason):
    rejected(conv(base), value, reason)


# -- numeric ---------------------------------------------------------------------------

MONEY = conv("numeric", NUMERIC(10, 4))


@pytest.mark.parametrize(
    "value,expected",
    [(0.0123, "0.0123"), (12.5, "12.5000"), (5, "5.0000"), (-3, "-3.0000"), ("12.50", "12.5000"), ("1e3", "1000.0000"),
     ("-0.0001", "-0.0001"), (0.1 + 0.2, "0.3000"),  # 0.30000000000000004: binary noise past 15 digits
     (-0.0, "0.0000"), (999999.9999, "999999.9999"), ("12.345600", "12.3456")],
)
def test_numeric_values(value, expected):
    assert ok(MONEY, value) == expected


@pytest.mark.parametrize(
    "value,reason",
    [(1.23456, "more than 4 decimal places"), ("0.00001", "more than 4 decimal places"), (1234567.0, "overflows"),
     (1000000, "overflows"), ("1e6", "overflows"), (999999.99995, "more than 4 decimal places"),
     (float("nan"), "cannot be stored"), (float("inf"), "cannot be stored"), ("12abc", "not a number"), ("NaN", "not a number"),
     (b"1", "blob")],
)
def test_numeric_rejects(value, reason):
    rejected(MONEY, value, reason)


def test_numeric_small_precision():
    confidence = conv("numeric", NUMERIC(3, 2))
    assert ok(confidence, 0.95) == "0.95"
    assert ok(confidence, 9.99) == "9.99"
    rejected(confidence, 10, "overflows")
    rejected(confidence, 0.955, "decimal places")


def test_unconstrained_numeric_keeps_scale():
    plain = conv("numeric")
    assert ok(plain, "1.50") == "1.50"
    assert ok(plain, "1e2") == "100"
    assert ok(plain, 0.30000000000000004) == "0.30000000000000004"
    assert ok(plain, "-0.0") == "0.0"


def test_numeric_typmod_decoding():
    assert mn.numeric_typmod(NUMERIC(10, 4)) == (10, 4)
    assert mn.numeric_typmod(-1) == (None, None)


# -- floats (PostgreSQL's own output format) ---------------------------------------------

# From PostgreSQL 15 with extra_float_digits = 1: SELECT v::float8, v::float4.
FLOAT_OUTPUT = [
    (1e15, "1e+15", "1e+15"), (1e14, "100000000000000", "1e+14"), (123456789012345.6, "123456789012345.6", "1.2345679e+14"),
    (0.0001, "0.0001", "0.0001"), (0.00001, "1e-05", "1e-05"), (5.0, "5", "5"), (1.5, "1.5", "1.5"), (-0.0, "-0", "-0"),
    (1.2345678901234567e16, "1.2345678901234568e+16", "1.2345678e+16"), (1e6, "1000000", "1e+06"), (100000.0, "100000", "100000"),
    (3.4e38, "3.4e+38", "3.4e+38"), (0.1, "0.1", "0.1"), (16777217.0, "16777217", "1.6777216e+07"),
]


@pytest.mark.parametrize("value,f8,f4", FLOAT_OUTPUT)
def test_float_tokens_match_postgresql(value, f8, f4):
    assert ok(conv("float8"), value) == f8
    assert ok(conv("float4"), value) == f4


def test_float_rejects():
    rejected(conv("float4"), 1e300, "overflows real")
    rejected(conv("float8"), 2**53 + 1, "not exactly representable")
    rejected(conv("float8"), "1.5x", "not a number")
    assert ok(conv("float8"), "NaN") == "NaN"
    assert ok(conv("float8"), 2**53) == "9.007199254740992e+15"  # PostgreSQL switches to exponents at 1e15
    assert ok(conv("float8"), 2**49) == "562949953421312"


# -- text ------------------------------------------------------------------------------


def test_varchar_length_is_checked_not_truncated():
    v5 = conv("varchar", VARCHAR(5))
    assert ok(v5, "abcde") == "abcde"
    assert ok(v5, "ääääá") == "ääääá"  # characters, not bytes
    rejected(v5, "abcdef", "6 characters do not fit")
    assert ok(v5, "abcd ") == "abcd "  # five characters fit
    rejected(v5, "abcde ", "do not fit")  # PostgreSQL would silently drop the space; the module does not


def test_invalid_utf8_and_nul_are_rejected():
    text = conv("text")
    reason = rejected(text, bytearray(b"caf\xe9"), "invalid UTF-8")
    assert "byte 3" in reason
    rejected(text, "a\x00b", "NUL")
    rejected(text, bytearray(b"a\x00b"), "NUL")
    assert ok(text, bytearray("café".encode())) == "café"


def test_text_escaping_for_copy():
    text = conv("text")
    assert ok(text, "a\tb\nc\\d\re\bf\fg\vh") == "a\\tb\\nc\\\\d\\re\\bf\\fg\\vh"
    assert me.copy_unescape(ok(text, "a\tb\nc\\d\re\bf\fg\vh")) == "a\tb\nc\\d\re\bf\fg\vh"
    assert me.copy_unescape("\\N") is None


def test_numbers_in_text_columns_and_blobs():
    text = conv("text")
    assert ok(text, 42) == "42"
    assert ok(text, 1.5) == "1.5"
    rejected(text, b"\x89PNG", "blob")


def test_char_is_padded_and_enum_labels_checked():
    char4 = conv("bpchar", VARCHAR(4))
    assert ok(char4, "ab") == "ab  "
    rejected(char4, "abcde", "do not fit")
    level = conv("level_t", labels=["info", "warning"])
    assert ok(level, "info") == "info"
    rejected(level, "critical", "not a label")


# -- JSON ------------------------------------------------------------------------------


def test_jsonb_is_written_as_postgresql_prints_it():
    jsonb = conv("jsonb")
    # Keys by length then bytes, last duplicate wins, numbers as numeric, PostgreSQL's spacing.
    text = '{"b":1,"aa":[1.50,1e2,-0,-0.0,1E-2],"a":"x\\u00e9\\n\\u0001\\u007f\\"","c":{},"b":2}'
    assert ok(jsonb, text) == '{"a": "x\u00e9\\\\n\\\\u0001\x7f\\\\"", "b": 2, "c": {}, "aa": [1.50, 100, 0, 0.0, 0.01]}'
    assert ok(jsonb, '"\\ud83d\\ude00"') == '"\U0001F600"'
    assert ok(jsonb, " [] ") == "[]"


@pytest.mark.parametrize(
    "text,reason",
    [('{"a": 1', "not valid JSON"), ("{'a': 1}", "not valid JSON"), ("NaN", "not valid JSON"), ('{"a": Infinity}', "not valid JSON"),
     ('"\\ud800"', "unpaired surrogate"), ('{"a": "\\u0000"}', "\\u0000"), ("", "not valid JSON"), ('{"a": 1} x', "not valid JSON")],
)
def test_jsonb_rejects(text, reason):
    rejected(conv("jsonb"), text, reason)


def test_json_keeps_the_text():
    json_ = conv("json")
    assert ok(json_, '{"a" : 1, "a": 2}') == '{"a" : 1, "a": 2}'
    assert ok(json_, '{"a": "\\u0000"}') == '{"a": "\\\\u0000"}'  # json may hold it, as text
    rejected(json_, "{nope}", "not valid JSON")
    rejected(json_, 5, "not JSON text")


# -- dates, uuid, bytea ----------------------------------------------------------------


def test_dates():
    date = conv("date")
    assert ok(date, "2024-01-15") == "2024-01-15"
    assert ok(date, "2024-01-15 00:00:00") == "2024-01-15"
    assert ok(date, 1705276800) == "2024-01-15"
    rejected(date, "2024-01-15 10:00:00", "time of day")
    rejected(date, "2024-02-30", "not a valid date")
    rejected(date, "15.01.2024", "not an ISO 8601")


def test_uuid_and_bytea():
    u = conv("uuid")
    canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    for form in ("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11"):
        assert ok(u, form) == canonical
    rejected(u, "a0eebc99", "not a UUID")
    assert ok(conv("bytea"), b"\x01\x02") == "\\\\x0102"
    assert ok(conv("bytea"), "A") == "\\\\x41"


def test_unsupported_type_is_named():
    with pytest.raises(mn.UnsupportedType, match="column c has type tsvector"):
        conv("tsvector")


# -- whole batches ---------------------------------------------------------------------


def test_mixed_types_in_one_column_reject_only_the_bad_rows():
    converters = [conv("int4"), conv("timestamp")]
    rows = [
        (1, "2024-01-15 10:30:00"),
        (2, 1700000000),
        (3, 1700000000123),
        (4, "2024-01-15T10:30:00+02:00"),
        (5, None),
        (6, "not a date"),
        ("7x", "2024-01-15"),
        (8, 1.5),
    ]
    batch = mn.normalise_batch(converters, rows)
    assert batch.lines == [
        "1\t2024-01-15 10:30:00",
        "2\t2023-11-14 22:13:20",
        "3\t2023-11-14 22:13:20.123",
        "4\t2024-01-15 08:30:00",
        "5\t\\N",
        "8\t1970-01-01 00:00:01.5",
    ]
    assert sorted(batch.bad) == [5, 6]
    assert batch.bad[5][0][0] == 1 and "not an ISO 8601" in batch.bad[5][0][2]
    assert batch.bad[6][0][0] == 0 and "not an integer" in batch.bad[6][0][2]


def test_a_row_with_two_bad_values_reports_both():
    batch = mn.normalise_batch([conv("int4"), conv("bool")], [("x", "maybe"), (1, 1)])
    assert batch.lines == ["1\tt"]
    assert [c for c, _v, _r in batch.bad[0]] == [0, 1]


# -- the fast paths give exactly what the rules give -------------------------------------


def _random_values(rnd, n):
    pool = [
        lambda: None,
        lambda: rnd.randrange(-(2**40), 2**40),
        lambda: rnd.randrange(0, 2),
        lambda: rnd.randrange(-(2**15), 2**15),
        lambda: rnd.choice([2**31, -(2**31) - 1, 2**63 - 1, 2**63]),
        lambda: round(rnd.uniform(-1e6, 1e6), rnd.randrange(0, 7)),
        lambda: rnd.random() * 10 ** rnd.randrange(-6, 20),
        lambda: rnd.choice([0.0, -0.0, 0.1 + 0.2, float("inf"), float("nan"), 5.0]),
        lambda: rnd.randrange(0, 10**14),
        lambda: "%04d-%02d-%02d %02d:%02d:%02d" % (rnd.randrange(1, 10000), rnd.randrange(0, 14), rnd.randrange(0, 33),
                                                     rnd.randrange(0, 25), rnd.randrange(0, 61), rnd.randrange(0, 61)),
        lambda: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (rnd.randrange(1970, 2100), rnd.randrange(1, 13), rnd.randrange(1, 32),
                                                          rnd.randrange(0, 24), rnd.randrange(0, 60), rnd.randrange(0, 60),
                                                          rnd.choice([0, 100, 120, 1, 10, 999, rnd.randrange(1000)])),
        lambda: rnd.choice(["t", "false", "yes", "x", "", "12", "1.5", "a\tb", "é", "a\x00", "9999-12-31", '{"a": 1}', "[1, 2.50]"]),
        lambda: "".join(rnd.choice("ab\\\t\n é") for _ in range(rnd.randrange(0, 8))),
        lambda: bytearray(rnd.choice([b"ok", b"\xff\xfe", b"caf\xc3\xa9"])),
        lambda: bytes([rnd.randrange(256)]),
    ]
    return tuple(rnd.choice(pool)() for _ in range(n))


@pytest.mark.parametrize(
    "base,typmod",
    [("int2", -1), ("int4", -1), ("int8", -1), ("numeric", NUMERIC(10, 4)), ("numeric", NUMERIC(3, 2)), ("numeric", -1),
     ("float8", -1), ("float4", -1), ("bool", -1), ("timestamp", -1), ("timestamptz", -1), ("date", -1), ("text", -1),
     ("varchar", VARCHAR(3)), ("jsonb", -1), ("json", -1)],
)
def test_fast_paths_agree_with_the_rules(base, typmod):
    rnd = random.Random(f"{base}{typmod}")
    for notnull in (False, True):
        converter = conv(base, typmod, notnull=notnull)
        samples = [_random_values(rnd, 40) for _ in range(150)]
        # and homogeneous columns, which is where the whole-column paths apply
        samples += [tuple(v for v in s if type(v) is t) for s in samples[:60] for t in (int, float, str)]
        samples += [tuple(v for v in s if type(v) is t or v is None) for s in samples[:60] for t in (int, float, str)]
        for values in samples:
            if not values:
                continue
            bad = {}
            tokens = converter.convert(values, bad, 0)
            for i, value in enumerate(values):
                try:
                    expected = converter.slow(value)
                except Reject:
                    assert i in bad, (value, tokens[i])
                    continue
                assert i not in bad, (value, bad.get(i))
                assert tokens[i] == expected, (value, tokens[i], expected)
            # the whole-row format path: a spec only when every value prints exactly as the rule says
            spec = converter.raw(values)
            if spec is not None:
                assert not bad, (values, spec)
                assert [spec % value for value in values] == tokens, (values, spec)


def test_rows_formatted_whole_are_the_joined_tokens():
    rnd = random.Random(11)
    converters = [conv("int4", notnull=True), conv("int8"), conv("timestamp"), conv("varchar", VARCHAR(3)),
                  conv("numeric", NUMERIC(10, 4)), conv("text"), conv("bool")]
    clean = [(n, n * 2**33, "2024-01-%02d 10:00:00" % (1 + n % 28), "ab", 1.5, "x y", 1) for n in range(50)]
    messy = [tuple(rnd.choice([row[c], *_random_values(rnd, 2)]) for c in range(7)) for row in clean for _ in range(3)]
    for rows in (clean, messy, clean[:1], clean + [(1, None, None, None, None, None, None)]):
        batch = mn.normalise_batch(converters, rows)
        expected, bad = [], {}
        columns = [c.convert([row[i] for row in rows], bad, i) for i, c in enumerate(converters)]
        expected = ["\t".join(tokens) for n, tokens in enumerate(zip(*columns)) if n not in bad]
        assert batch.lines == expected and sorted(batch.bad) == sorted(bad)
        for i in range(len(converters)):
            assert batch.column(i) == [t for n, t in enumerate(columns[i]) if n not in bad]
    assert mn.normalise_batch(converters, clean).raw  # the clean rows did take the whole-row path


def test_timestamp_column_shapes_agree_with_the_rules():
    rnd = random.Random(7)
    converter = conv("timestamp")
    for _ in range(300):
        fraction = rnd.choice(["000", "100", "120", "010", "001", "999", "500", "050"])
        values = tuple(
            "%04d-%02d-%02dT%02d:%02d:%02d.%sZ" % (rnd.randrange(1, 9999), rnd.randrange(1, 13), rnd.randrange(1, 29),
                                                   rnd.randrange(0, 24), rnd.randrange(0, 60), rnd.choice([0, 10, 59]), fraction)
            for _ in range(20)
        )
        assert converter.vector(values) == [converter.slow(v) for v in values]
        spaced = tuple(v[:10] + " " + v[11:19] for v in values)
        assert converter.vector(spaced) == [converter.slow(v) for v in spaced]
    # one invalid value: the whole-column path steps aside, the rule rejects that value only
    assert converter.vector(("2024-02-30 00:00:00", "2024-01-01 00:00:00")) is None


def test_decimal_context_does_not_leak():
    before = decimal.getcontext().prec
    ok(MONEY, "12345.6789")
    assert decimal.getcontext().prec == before


@pytest.mark.parametrize("base", ["jsonb", "json"])
def test_json_for_loading_accepts_and_rejects_exactly_what_the_digest_form_does(base):
    canonical = conv(base)
    loading = mn.make_converter({"name": "c", "base": base, "typmod": -1, "type_name": base}, canonical=False)
    texts = ['{"a": 1}', ' [1, 2.50, "x"] ', '{"a": "\\u00e9"}', '{"a": "\\u0000"}', '"\\ud800"', '"\\ud83d\\ude00"', "NaN",
             '{"a": Infinity}', "{bad", "", '{"b": 1, "b": 2}', "1e400", '"tab\\there"', '{"k\\u0000": 1}']
    for text in texts:
        try:
            expected = canonical.slow(text)
        except Reject:
            rejected(loading, text)
            continue
        token = loading.slow(text)
        assert me.copy_unescape(token) == text  # loaded as written; PostgreSQL reads it as the canonical form
        if base == "json":
            assert token == expected
