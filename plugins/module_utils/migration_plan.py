# -*- coding: utf-8 -*-
"""What to migrate: tables present on both sides, in foreign-key order, columns matched by name.

Both modules (sqlite_to_postgres and migration_verify) build the same plans, so
they normalise and compare exactly the same columns in the same way.
"""

from __future__ import annotations

from ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg import check_identifier, sql
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_normalise import UnsupportedType, make_converter
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_source import TableReader, quote_sqlite, rowid_alias, table_columns
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_source import list_tables as sqlite_tables

# Session settings that fix how PostgreSQL prints values (COPY TO, ::text), so
# that its output matches the converters' tokens byte for byte.
SESSION_SETTINGS = (
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
)

TIMESTAMP_KINDS = ("timestamp", "date")


class PlanError(KitModuleError):
    """Problems found before anything is read or written; .problems lists them all."""

    def __init__(self, problems, result=None):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems), result)


def configure_session(cur):
    cur.connection.set_client_encoding("UTF8")  # the COPY data and the digests are UTF-8
    for name, value in SESSION_SETTINGS:
        cur.execute("SELECT set_config(%s, %s, false)", (name, value))
    cur.execute("SHOW server_encoding")
    encoding = cur.fetchone()[0]
    if encoding.upper() not in ("UTF8", "UTF-8"):
        raise PlanError([f"the database encoding is {encoding}; the migration needs UTF8"])


_COLUMNS_SQL = """
SELECT a.attname,
       format_type(a.atttypid, a.atttypmod),
       CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
       a.attnotnull OR (t.typtype = 'd' AND t.typnotnull),
       a.atthasdef OR (t.typtype = 'd' AND t.typdefault IS NOT NULL),
       a.attidentity,
       a.attgenerated,
       CASE WHEN coalesce(bt.typtype, t.typtype) = 'e'
            THEN ARRAY(SELECT e.enumlabel::text FROM pg_enum e
                       WHERE e.enumtypid = coalesce(bt.oid, t.oid) ORDER BY e.enumsortorder) END,
       pg_get_serial_sequence(format('%%I.%%I', n.nspname, c.relname), a.attname)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_FK_SQL = """
SELECT con.conname, pn.nspname, pc.relname, con.confmatchtype, con.convalidated,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)
FROM pg_constraint con
JOIN pg_class pc ON pc.oid = con.confrelid
JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE con.conrelid = %s AND con.contype = 'f'
ORDER BY con.conname
"""

# Every constraint of the table and every unique index backing none, with its columns
# (none for an expression): a row PostgreSQL refuses is reported with them.
_CONSTRAINTS_SQL = """
SELECT con.conname, ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o)
FROM pg_constraint con
WHERE con.conrelid = %(oid)s
UNION ALL
SELECT ic.relname, ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = %(oid)s AND i.indisunique AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = i.indexrelid)
"""

_OWN_RULES_SQL = """
SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = %(oid)s AND NOT tgisinternal)
     + (SELECT count(*) FROM pg_rewrite WHERE ev_class = %(oid)s AND ev_type <> '1')
"""

_PK_SQL = """
SELECT con.conname, array_agg(a.attname::text ORDER BY k.ord)
FROM pg_constraint con
CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
WHERE con.conrelid = %s AND con.contype = 'p'
GROUP BY con.conname
"""


def pg_tables(cur, schema):
    """{table name: oid} of the ordinary and partitioned tables of a schema."""
    cur.execute(
        "SELECT c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        (schema,),
    )
    return dict(cur.fetchall())


def fk_order(names, edges):
    """Tables ordered so that every referenced table comes before the tables referencing it.

    edges: (child, parent) pairs among names; self-references are ignored. Ties
    keep name order. A cycle raises PlanError naming the tables in it.
    """
    parents = {name: set() for name in names}
    for child, parent in edges:
        if child != parent and child in parents and parent in parents:
            parents[child].add(parent)
    ordered, done = [], set()
    remaining = sorted(names)
    while remaining:
        ready = [name for name in remaining if parents[name] <= done]
        if not ready:
            raise PlanError([f"foreign keys form a cycle between tables {', '.join(remaining)}; migrate them in separate runs"])
        for name in ready:
            ordered.append(name)
            done.add(name)
        remaining = [name for name in remaining if name not in done]
    return ordered


class TablePlan:
    """One table: its PostgreSQL columns matched to SQLite columns, with converters."""

    def __init__(self, schema, table, oid, sqlite_table):
        self.schema = schema
        self.table = table
        self.oid = oid
        self.sqlite_table = sqlite_table
        self.columns = []  # matched, in PostgreSQL order: dicts of catalog data + "source"
        self.converters = []  # canonical: the tokens PostgreSQL prints (digests)
        self.load_converters = []  # the same rules, for loading (JSON sent as written, once checked)
        self.missing = []  # PostgreSQL columns with no source column (they get their default)
        self.extra = []  # SQLite columns with no PostgreSQL column (not migrated)
        self.ignored = []  # generated columns present in the source
        self.pk = []  # indexes into columns of the primary key, in key order
        self.pk_names = []
        self.pk_constraint = None
        self.pk_unmatched = []
        self.serials = []  # (column name, sequence name)
        self.foreign_keys = []  # dicts: name, parent (schema, table), columns, parent_columns, match, validated
        self.constraints = {}  # constraint (or unique index) name: [its columns], for reports
        self.own_triggers = 0  # triggers and non-SELECT rules of the table itself (not foreign key internals)
        self.rowid = None  # SQL name of the SQLite rowid, None for WITHOUT ROWID tables
        self.rowid_column = None  # the SQLite column that is the rowid (INTEGER PRIMARY KEY), if migrated
        self.rowid_index = None  # where the rowid is in a row read by reader()
        self.excluded_keys = frozenset()  # keys (values, or tuples for composite keys) left out of digests

    @property
    def label(self):
        return self.table if self.schema == "public" else f"{self.schema}.{self.table}"

    @property
    def ident(self):
        return sql.Identifier(self.schema, self.table)

    @property
    def column_names(self):
        return [col["name"] for col in self.columns]

    @property
    def source_columns(self):
        return [col["source"] for col in self.columns]

    @property
    def timestamp_indexes(self):
        return [i for i, conv in enumerate(self.converters) if conv.kind in TIMESTAMP_KINDS]

    def mapping(self):
        """The column type mapping shown by check mode."""
        return [
            {"column": col["name"], "source_column": col["source"], "source_type": col["source_type"], "target_type": col["type_name"]}
            for col in self.columns
        ]

    def copy_sql(self):
        cols = sql.SQL(", ").join(sql.Identifier(name) for name in self.column_names)
        return sql.SQL("COPY {} ({}) FROM STDIN").format(self.ident, cols)

    def key_of(self, row):
        """The source key of a raw SQLite row, for reports: {pk column: value} or {rowid: n}."""
        if self.pk and not self.pk_unmatched:
            return {self.pk_names[j]: _jsonable(row[i]) for j, i in enumerate(self.pk)}
        if self.rowid:
            return {"rowid": row[self.rowid_index]}
        return None

    def load_excluded(self, report_keys):
        """Keys from a reject report ({column: value} dicts) to leave out of the digests."""
        keys = set()
        names = self.pk_names if self.pk and not self.pk_unmatched else ["rowid"] if self.rowid else []
        for key in report_keys:
            if not key or not names or any(name not in key for name in names):
                continue
            values = tuple(key[name] for name in names)
            keys.add(values[0] if len(values) == 1 else values)
        self.excluded_keys = frozenset(keys)

    def without_excluded(self, rows):
        """(rows whose key is not excluded, how many were left out)."""
        if not self.excluded_keys:
            return rows, 0
        excluded = self.excluded_keys
        where = self.pk if self.pk and not self.pk_unmatched else [self.rowid_index]
        try:
            if len(where) == 1:
                at = where[0]
                kept = [row for row in rows if row[at] not in excluded]
            else:
                kept = [row for row in rows if tuple(row[i] for i in where) not in excluded]
        except TypeError:  # text read byte-preserving (bytearray): compare as the report shows it
            if len(where) == 1:
                kept = [row for row in rows if _jsonable(row[where[0]]) not in excluded]
            else:
                kept = [row for row in rows if tuple(_jsonable(row[i]) for i in where) not in excluded]
        return kept, len(rows) - len(kept)

    @property
    def rowid_sql(self):
        """How SQL names the SQLite rowid of this table (None without one)."""
        return quote_sqlite(self.rowid_column) if self.rowid_column else self.rowid

    def extent(self, sconn):
        """(lowest rowid, highest rowid, rows) of the SQLite table; the rowids are None without a rowid."""
        table = quote_sqlite(self.sqlite_table)
        if not self.rowid:
            return None, None, sconn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        rid = self.rowid_sql
        return tuple(sconn.execute(f"SELECT min({rid}), max({rid}), count(*) FROM {table}").fetchone())

    def rowid_range(self, low, high):
        """(condition, params) for reader(): rowids from low up to, not including, high. high None
        means no upper bound (the last range: max + 1 may be 2**63, which SQLite cannot bind)."""
        rid = self.rowid_sql
        if high is None:
            return f"{rid} >= ?", (low,)
        return f"{rid} >= ? AND {rid} < ?", (low, high)

    def reader(self, sconn, where="", params=(), **kwargs):
        """A TableReader over the plan's source columns (then the rowid, unless it is one of them)."""
        return TableReader(sconn, self.sqlite_table, self.source_columns, self.rowid, where, params,
                           rowid_column=self.rowid_column, **kwargs)


def _jsonable(value):
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return repr(bytes(value))
    return value


def _match(name, candidates):
    """Source column/table for a PostgreSQL name: exact, else the only case-insensitive match."""
    if name in candidates:
        return name
    folded = [c for c in candidates if c.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def build_plans(cur, sconn, schema, wanted):
    """Plans for the tables to migrate, in foreign-key order, and warnings.

    wanted: table names (empty: every table present in both databases). Raises
    PlanError with every problem found.
    """
    schema = check_identifier(schema, "schema")
    problems, warnings = [], []
    in_pg = pg_tables(cur, schema)
    in_sqlite = sqlite_tables(sconn)
    if wanted:
        names = []
        for name in wanted:
            try:
                check_identifier(name, "table")
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if name not in in_pg:
                problems.append(f"table {schema}.{name} does not exist in PostgreSQL")
            elif _match(name, in_sqlite) is None:
                problems.append(f"table {name} does not exist in the SQLite file")
            else:
                names.append(name)
    else:
        names = [name for name in in_pg if _match(name, in_sqlite) is not None]
        only_sqlite = sorted(t for t in in_sqlite if _match(t, list(in_pg)) is None)
        if only_sqlite:
            warnings.append(f"SQLite tables with no PostgreSQL table of that name are not migrated: {', '.join(only_sqlite)}")
        if not names:
            problems.append(f"no table exists both in the SQLite file and in schema {schema}")
    if problems:
        raise PlanError(problems)

    cur.execute(
        "SELECT c1.relname, c2.relname FROM pg_constraint con"
        " JOIN pg_class c1 ON c1.oid = con.conrelid JOIN pg_class c2 ON c2.oid = con.confrelid"
        " WHERE con.contype = 'f' AND con.conrelid = ANY(%s::oid[]) AND con.confrelid = ANY(%s::oid[])",
        ([in_pg[n] for n in names], [in_pg[n] for n in names]),
    )
    order = fk_order(names, cur.fetchall())

    plans = []
    for name in order:
        plan = TablePlan(schema, name, in_pg[name], _match(name, in_sqlite))
        try:
            _plan_table(cur, sconn, plan, problems, warnings)
        except PlanError as exc:
            problems.extend(exc.problems)
        plans.append(plan)
    if problems:
        raise PlanError(problems)
    return plans, warnings


def _plan_table(cur, sconn, plan, problems, warnings):
    source_cols = table_columns(sconn, plan.sqlite_table)
    source_types = {name: decl for name, decl, _pk in source_cols}
    source_names = [name for name, _decl, _pk in source_cols]
    cur.execute(_COLUMNS_SQL, (plan.oid,))
    matched_sources = set()
    for (name, type_name, base, typmod, notnull, has_default, identity, generated, labels, sequence) in cur.fetchall():
        source = _match(name, source_names)
        if generated:
            if source is not None:
                plan.ignored.append(name)
                matched_sources.add(source)
            continue
        if sequence:
            plan.serials.append((name, sequence))
        if source is None:
            plan.missing.append(name)
            if notnull and not has_default and not identity:
                problems.append(
                    f"table {plan.label}: column {name} ({type_name}) is NOT NULL without a default"
                    " and the SQLite table has no such column"
                )
            continue
        matched_sources.add(source)
        column = dict(name=name, type_name=type_name, base=base, typmod=typmod, notnull=notnull,
                      has_default=has_default, identity=identity, labels=labels, source=source,
                      source_type=source_types.get(source, ""))
        try:
            plan.converters.append(make_converter(column))
            plan.load_converters.append(make_converter(column, canonical=False))
        except UnsupportedType as exc:
            problems.append(f"table {plan.label}: {exc}")
            continue
        plan.columns.append(column)
    plan.extra = [name for name in source_names if name not in matched_sources]
    if plan.extra:
        warnings.append(f"table {plan.label}: SQLite columns with no PostgreSQL column are not migrated: {', '.join(plan.extra)}")
    if plan.missing:
        warnings.append(f"table {plan.label}: PostgreSQL columns missing in SQLite get their default: {', '.join(plan.missing)}")
    if plan.ignored:
        warnings.append(f"table {plan.label}: generated columns are computed by PostgreSQL, SQLite's values are not used: {', '.join(plan.ignored)}")
    if not plan.columns:
        problems.append(f"table {plan.label}: no column of the SQLite table matches a PostgreSQL column")
    _plan_keys(cur, sconn, plan, source_cols)
    _plan_constraints(cur, plan)


def _plan_keys(cur, sconn, plan, source_cols):
    """The primary key on both sides, and where the SQLite rowid is."""
    source_names = [name for name, _decl, _pk in source_cols]
    cur.execute(_PK_SQL, (plan.oid,))
    found = cur.fetchone()
    if found:
        plan.pk_constraint, plan.pk_names = found[0], list(found[1])
        names = plan.column_names
        plan.pk = [names.index(n) for n in plan.pk_names if n in names]
        plan.pk_unmatched = [n for n in plan.pk_names if n not in names]
    plan.rowid = rowid_alias(sconn, plan.sqlite_table, source_names)
    pk_cols = [(name, decl) for name, decl, pk in source_cols if pk]
    if plan.rowid and len(pk_cols) == 1 and pk_cols[0][1].upper() == "INTEGER" and pk_cols[0][0] in plan.source_columns:
        plan.rowid_column = pk_cols[0][0]  # an INTEGER PRIMARY KEY is the rowid: no need to read it twice
        plan.rowid_index = plan.source_columns.index(plan.rowid_column)
    else:
        plan.rowid_index = len(plan.columns)


def _plan_constraints(cur, plan):
    """The foreign keys, every constraint's columns (for reports), the table's own triggers and rules."""
    cur.execute(_FK_SQL, (plan.oid,))
    for name, parent_schema, parent_table, match, validated, columns, parent_columns in cur.fetchall():
        plan.foreign_keys.append(dict(name=name, parent=(parent_schema, parent_table), columns=list(columns),
                                      parent_columns=list(parent_columns), match=match, validated=validated))
    cur.execute(_CONSTRAINTS_SQL, {"oid": plan.oid})
    plan.constraints = {name: list(columns) for name, columns in cur.fetchall()}
    cur.execute(_OWN_RULES_SQL, {"oid": plan.oid})
    plan.own_triggers = cur.fetchone()[0]
