"""What the daemon knows about files/schema.sql: the identifier whitelist, value
conversion, and the SQLite translation of the schema.

Every table and column name that ends up in SQL text comes from here: names
from callers are looked up in TABLES and quoted, never interpolated as given.
A unit test compares TABLES with the real PostgreSQL catalogue, so the two
cannot drift apart silently.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import math
import re

LEVELS = ("info", "warning", "error", "success")
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1


class InvalidIdentifier(ValueError):
    """A table, column or ORDER BY clause that is not in the whitelist."""


class InvalidValue(ValueError):
    """A value that does not fit its column."""


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    kind: str  # serial int varchar text timestamp bool json decimal date
    length: int | None = None  # varchar(n)
    precision: int | None = None  # decimal(p, s)
    scale: int | None = None
    not_null: bool = False
    primary_key: bool = False
    unique: bool = False
    default: object = None  # "now", a literal, or None
    references: str | None = None  # "users(id)"
    choices: tuple | None = None


def _cols(*columns):
    return {c.name: c for c in columns}


_NOW = "now"
TABLES = {
    "users": _cols(
        Column("id", "serial", primary_key=True),
        Column("username", "varchar", 255, not_null=True, unique=True),
        Column("email", "varchar", 255, unique=True),
        Column("created_at", "timestamp", default=_NOW),
    ),
    "usage_data": _cols(
        Column("id", "serial", primary_key=True),
        Column("user_id", "int", references="users(id)"),
        Column("timestamp", "timestamp", not_null=True, default=_NOW),
        Column("tokens_used", "int", default=0),
        Column("requests_count", "int", default=0),
        Column("avg_response_time", "int", default=0),
        Column("active_users", "int", default=0),
        Column("error_count", "int", default=0),
        Column("cost_usd", "decimal", precision=10, scale=4, default=0),
        Column("session_id", "varchar", 255),
        Column("endpoint", "varchar", 255),
        Column("created_at", "timestamp", default=_NOW),
    ),
    "alerts": _cols(
        Column("id", "varchar", 255, primary_key=True, not_null=True),
        Column("user_id", "int", references="users(id)"),
        Column("level", "varchar", 20, not_null=True, choices=LEVELS),
        Column("title", "varchar", 255, not_null=True),
        Column("message", "text"),
        Column("timestamp", "timestamp", not_null=True),
        Column("acknowledged", "bool", default=False),
        Column("metadata", "json"),
        Column("created_at", "timestamp", default=_NOW),
    ),
    "predictions": _cols(
        Column("id", "serial", primary_key=True),
        Column("user_id", "int", references="users(id)"),
        Column("date", "date", not_null=True),
        Column("predicted_tokens", "int"),
        Column("predicted_cost", "decimal", precision=10, scale=4),
        Column("confidence", "decimal", precision=3, scale=2),
        Column("model_version", "varchar", 50),
        Column("created_at", "timestamp", default=_NOW),
    ),
}

# Tables whose id is assigned by the store (SERIAL). Rows written during a
# fallback are copied into PostgreSQL without their SQLite id.
SERIAL_TABLES = frozenset(t for t, cols in TABLES.items() if cols["id"].kind == "serial")

# The indexes of files/schema.sql, recreated in the SQLite file.
INDEXES = (
    ("idx_usage_data_timestamp", "usage_data", ("timestamp",)),
    ("idx_usage_data_user_id", "usage_data", ("user_id",)),
    ("idx_alerts_timestamp", "alerts", ("timestamp",)),
    ("idx_alerts_level", "alerts", ("level",)),
    ("idx_predictions_date", "predictions", ("date",)),
    ("idx_usage_data_timestamp_user", "usage_data", ("timestamp", "user_id")),
)

OPERATORS = {"=": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


# -- identifiers -------------------------------------------------------------------------
def quote(name):
    """Quote an identifier that has already been checked against the whitelist."""
    return '"' + name.replace('"', '""') + '"'


def table(name):
    if not isinstance(name, str) or name not in TABLES:
        raise InvalidIdentifier(f"unknown table {name!r}")
    return name


def column(table_name, name):
    cols = TABLES[table(table_name)]
    if not isinstance(name, str) or name not in cols:
        raise InvalidIdentifier(f"unknown column {name!r} of table {table_name}")
    return cols[name]


_ORDER_ITEM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)(?:\s+(ASC|DESC))?\s*$", re.IGNORECASE)


def parse_order_by(table_name, spec):
    """'timestamp DESC, id' or [('timestamp', 'DESC'), 'id'] -> [(column, 'ASC'|'DESC'), ...].

    Each item must be a whitelisted column of the table, optionally followed by
    ASC or DESC; anything else (expressions, NULLS FIRST, comments) is refused.
    """
    if spec is None or spec in ("", []):
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            name, direction = item
            text = f"{name} {direction}" if isinstance(name, str) and isinstance(direction, str) else None
        else:
            text = item if isinstance(item, str) else None
        match = _ORDER_ITEM.match(text) if text is not None else None
        if not match:
            raise InvalidIdentifier(f"invalid ORDER BY item {item!r}")
        col = column(table_name, match.group(1))
        out.append((col.name, (match.group(2) or "ASC").upper()))
    return out


# -- values ------------------------------------------------------------------------------
def utc_naive(value):
    """A datetime as naive UTC (the schema's timestamp without time zone holds UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def parse_timestamp(text):
    """ISO 8601 text -> naive UTC datetime; a naive text is taken as UTC."""
    if not isinstance(text, str) or len(text) > 64:
        raise InvalidValue("expected an ISO 8601 date-time")
    try:
        return utc_naive(dt.datetime.fromisoformat(text.strip()))
    except (ValueError, OverflowError):  # OverflowError: 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise InvalidValue(f"not an ISO 8601 date-time in range: {text!r}") from None


def _check_text(col, value):
    if not isinstance(value, str):
        raise InvalidValue(f"{col.name}: expected a string")
    if "\x00" in value:
        raise InvalidValue(f"{col.name}: NUL characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(f"{col.name}: not valid Unicode text") from None
    if col.length is not None and len(value) > col.length:
        raise InvalidValue(f"{col.name}: at most {col.length} characters")
    if col.choices is not None and value not in col.choices:
        raise InvalidValue(f"{col.name}: expected one of {', '.join(col.choices)}")
    return value


def check_json(value, path="metadata", depth=0):
    """JSON that PostgreSQL's jsonb accepts: no NUL, valid Unicode, finite numbers, bounded depth."""
    if depth > 64:
        raise InvalidValue(f"{path}: nested too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidValue(f"{path}: object keys must be strings")
            _check_text(Column(path, "text"), key)
            check_json(item, path, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, path, depth + 1)
    elif isinstance(value, str):
        _check_text(Column(path, "text"), value)
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidValue(f"{path}: numbers must be finite")
    elif value is not None and not isinstance(value, (bool, int)):
        raise InvalidValue(f"{path}: not a JSON value")
    return value


def coerce(table_name, name, value):
    """Check a value against its column and return it as the Python type both stores use.

    Accepts the Python types (datetime, date, Decimal, bool, int, str, dict)
    and their JSON forms (ISO strings, numbers), so a row read back from the
    fallback outbox converts the same way as one from application code.
    """
    col = column(table_name, name)
    if value is None:
        if col.not_null:
            raise InvalidValue(f"{name}: must not be null")
        return None
    kind = col.kind
    if kind in ("serial", "int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(f"{name}: expected an integer")
        if not INT4_MIN <= value <= INT4_MAX:
            raise InvalidValue(f"{name}: out of range for a 32-bit integer")
        return value
    if kind in ("varchar", "text"):
        return _check_text(col, value)
    if kind == "timestamp":
        if isinstance(value, dt.datetime):
            return utc_naive(value)
        return parse_timestamp(value)
    if kind == "date":
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(value)
        except (TypeError, ValueError):
            raise InvalidValue(f"{name}: expected a date YYYY-MM-DD") from None
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidValue(f"{name}: expected true or false")
        return value
    if kind == "decimal":
        if isinstance(value, bool) or not isinstance(value, (int, float, str, decimal.Decimal)):
            raise InvalidValue(f"{name}: expected a number")
        try:
            number = decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise InvalidValue(f"{name}: expected a number") from None
        if not number.is_finite():
            raise InvalidValue(f"{name}: must be finite")
        number = number.quantize(decimal.Decimal(1).scaleb(-col.scale), rounding=decimal.ROUND_HALF_EVEN)
        if abs(number) >= decimal.Decimal(10) ** (col.precision - col.scale):
            raise InvalidValue(f"{name}: out of range for DECIMAL({col.precision}, {col.scale})")
        return number
    if kind == "json":
        return check_json(value, name)
    raise AssertionError(f"unhandled column kind {kind}")  # pragma: no cover


def coerce_row(table_name, row):
    if not isinstance(row, dict):
        raise InvalidValue("a row must be a mapping of column names to values")
    return {column(table_name, k).name: coerce(table_name, k, v) for k, v in row.items()}


def jsonable(value):
    """A value as JSON: datetimes as ISO 8601 UTC with Z, Decimals as numbers."""
    if isinstance(value, dt.datetime):
        return utc_naive(value).isoformat() + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def jsonable_row(row):
    return {k: jsonable(v) for k, v in row.items()}


def to_portable(value):
    """A coerced value in a lossless JSON form (used by the fallback outbox)."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


# -- SQLite ------------------------------------------------------------------------------
SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# The same text form SQLite itself produces for defaults (millisecond precision);
# both sort correctly as text.
_SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f', 'now'))"


def to_sqlite(table_name, name, value):
    if value is None:
        return None
    kind = column(table_name, name).kind
    if kind == "timestamp":
        return value.strftime(SQLITE_TS_FORMAT)
    if kind == "date":
        return value.isoformat()
    if kind == "bool":
        return 1 if value else 0
    if kind == "decimal":
        return str(value)
    if kind == "json":
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def from_sqlite(table_name, name, value):
    if value is None:
        return None
    col = TABLES[table_name].get(name)
    if col is None:
        return value
    kind = col.kind
    if kind == "timestamp":
        return dt.datetime.fromisoformat(value)
    if kind == "date":
        return dt.date.fromisoformat(value)
    if kind == "bool":
        return bool(value)
    if kind == "decimal":
        # NUMERIC affinity stores a REAL; DECIMAL(10,4) fits a double's 15
        # significant digits, so rounding back to the scale is exact.
        return decimal.Decimal(repr(value)).quantize(decimal.Decimal(1).scaleb(-col.scale))
    if kind == "json":
        return json.loads(value)
    return value


def _sqlite_column(table_name, col):
    q = quote(col.name)
    if col.kind == "serial":
        return f"{q} INTEGER PRIMARY KEY AUTOINCREMENT"
    parts = [q]
    checks = []
    if col.kind == "int":
        parts.append("INTEGER")
        checks.append(f"typeof({q}) = 'integer' AND {q} BETWEEN {INT4_MIN} AND {INT4_MAX}")
    elif col.kind == "varchar":
        parts.append("TEXT")
        checks.append(f"typeof({q}) = 'text' AND length({q}) <= {col.length}")
    elif col.kind == "text":
        parts.append("TEXT")
        checks.append(f"typeof({q}) = 'text'")
    elif col.kind == "timestamp":
        parts.append("TEXT")
        # SQLite's date functions accept 2024-02-30; normalising with a no-op
        # modifier rolls it over, so comparing catches impossible dates.
        checks.append(f"typeof({q}) = 'text' AND date({q}, '+0 days') IS substr({q}, 1, 10)")
    elif col.kind == "date":
        parts.append("TEXT")
        checks.append(f"typeof({q}) = 'text' AND date({q}, '+0 days') IS {q}")
    elif col.kind == "bool":
        parts.append("INTEGER")
        checks.append(f"{q} IN (0, 1)")
    elif col.kind == "decimal":
        parts.append("NUMERIC")
        checks.append(f"typeof({q}) IN ('integer', 'real') AND abs({q}) < {10 ** (col.precision - col.scale)}")
    elif col.kind == "json":
        parts.append("TEXT")
        checks.append(f"json_valid({q})")
    if col.primary_key:
        parts.append("PRIMARY KEY")
    if col.not_null:
        parts.append("NOT NULL")
    if col.unique:
        parts.append("UNIQUE")
    if col.default == _NOW:
        parts.append(f"DEFAULT {_SQLITE_NOW}")
    elif isinstance(col.default, bool):
        parts.append(f"DEFAULT {int(col.default)}")
    elif col.default is not None:
        parts.append(f"DEFAULT {col.default}")
    if col.references:
        ref_table, ref_col = col.references.rstrip(")").split("(")
        parts.append(f"REFERENCES {quote(ref_table)}({quote(ref_col)})")
    if col.choices:
        listed = ", ".join("'" + c + "'" for c in col.choices)
        checks.append(f"{q} IN ({listed})")
    parts.append(f"CHECK ({q} IS NULL OR ({' AND '.join(checks)}))")
    return " ".join(parts)


def sqlite_ddl():
    """CREATE statements for the SQLite fallback file (idempotent)."""
    statements = []
    for name, cols in TABLES.items():
        body = ",\n    ".join(_sqlite_column(name, c) for c in cols.values())
        statements.append(f"CREATE TABLE IF NOT EXISTS {quote(name)} (\n    {body}\n)")
    for index, tbl, cols in INDEXES:
        statements.append(
            f"CREATE INDEX IF NOT EXISTS {quote(index)} ON {quote(tbl)} ({', '.join(quote(c) for c in cols)})"
        )
    return statements
