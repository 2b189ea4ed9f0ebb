"""SQL text for the unified API, built only from whitelisted, quoted names.

Values never enter the SQL text: each becomes a placeholder ("%s" for
psycopg2, "?" for sqlite3) and travels in the parameter list. The builders
take values already checked by schema.coerce and an `adapt` function that
turns them into what the driver wants.
"""

from __future__ import annotations

from . import schema
from .schema import quote


def normalize_where(table, where):
    """{col: value | (op, value) | [(op, value), ...]} -> [(col, sql_op, coerced value)].

    Every name and operator is checked; operators map to a fixed set of SQL tokens.
    """
    if where is None:
        return []
    if not isinstance(where, dict):
        raise schema.InvalidIdentifier("where must be a mapping of column names to values")
    out = []
    for name, cond in where.items():
        col = schema.column(table, name)
        if col.kind == "json":
            raise schema.InvalidIdentifier(f"cannot filter on the json column {name}")
        # value | (op, value) | [(op, value), ...] (several conditions on one column)
        conds = cond if isinstance(cond, list) else [cond]
        for one in conds:
            if isinstance(one, tuple):
                if len(one) != 2 or not isinstance(one[0], str) or one[0] not in schema.OPERATORS:
                    raise schema.InvalidIdentifier(f"invalid condition for {name}: {one!r}")
                op, value = schema.OPERATORS[one[0]], one[1]
            elif isinstance(cond, list):
                raise schema.InvalidIdentifier(f"invalid condition for {name}: {one!r}")
            else:
                op, value = "=", one
            if value is None and op not in ("=", "<>"):
                raise schema.InvalidValue(f"{name}: NULL can only be compared with = or !=")
            out.append((col.name, op, None if value is None else schema.coerce(table, col.name, value)))
    return out


def where_clause(table, conditions, ph, adapt):
    parts, params = [], []
    for name, op, value in conditions:
        if value is None:
            parts.append(f"{quote(name)} IS {'NOT ' if op == '<>' else ''}NULL")
        else:
            parts.append(f"{quote(name)} {op} {ph}")
            params.append(adapt(table, name, value))
    return (" WHERE " + " AND ".join(parts) if parts else ""), params


def column_list(table):
    return ", ".join(quote(c) for c in schema.TABLES[table])


def insert(table, row, ph, adapt, on_conflict_do_nothing=None):
    names = list(row)
    if names:
        cols = ", ".join(quote(n) for n in names)
        sql = f"INSERT INTO {quote(table)} ({cols}) VALUES ({', '.join([ph] * len(names))})"
    else:
        sql = f"INSERT INTO {quote(table)} DEFAULT VALUES"
    if on_conflict_do_nothing:
        sql += f" ON CONFLICT ({quote(schema.column(table, on_conflict_do_nothing).name)}) DO NOTHING"
    sql += f" RETURNING {column_list(table)}"
    return sql, [adapt(table, n, row[n]) for n in names]


def select(table, conditions, order, limit, ph, adapt):
    where, params = where_clause(table, conditions, ph, adapt)
    sql = f"SELECT {column_list(table)} FROM {quote(table)}{where}"
    if order:
        sql += " ORDER BY " + ", ".join(f"{quote(c)} {d}" for c, d in order)
    if limit is not None:
        sql += f" LIMIT {ph}"
        params.append(limit)
    return sql, params


def update(table, values, conditions, ph, adapt):
    if not values:
        raise schema.InvalidValue("update needs at least one column to set")
    if not conditions:
        # An UPDATE without WHERE rewrites the whole table: never from this API.
        raise schema.InvalidValue("update without a where condition is refused")
    sets = ", ".join(f"{quote(n)} = {ph}" for n in values)
    params = [adapt(table, n, v) for n, v in values.items()]
    where, wparams = where_clause(table, conditions, ph, adapt)
    return f"UPDATE {quote(table)} SET {sets}{where} RETURNING {column_list(table)}", params + wparams


def check_limit(limit):
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise schema.InvalidValue("limit must be a non-negative integer")
    return limit


def translate_placeholders(sql, nparams, style):
    """Rewrite the guide's $1, $2 ... placeholders for a driver.

    style "pyformat" (psycopg2): $n -> %(pn)s and every literal % doubled;
    style "qmark" (sqlite3): $n -> ?n. Quoted strings, quoted identifiers and
    comments are copied untouched. Every parameter must be used, none beyond.
    """
    if not isinstance(sql, str):
        raise TypeError("sql must be a string")
    py = style == "pyformat"
    out, used, i, n = [], set(), 0, len(sql)

    def literal(text):
        out.append(text.replace("%", "%%") if py else text)

    while i < n:
        c = sql[i]
        if c in ("'", '"'):
            j = i + 1
            while True:
                k = sql.find(c, j)
                if k == -1:
                    raise ValueError("unterminated quoted string in SQL")
                if k + 1 < n and sql[k + 1] == c:
                    j = k + 2
                    continue
                break
            literal(sql[i:k + 1])
            i = k + 1
        elif sql.startswith("--", i):
            k = sql.find("\n", i)
            k = n if k == -1 else k
            literal(sql[i:k])
            i = k
        elif sql.startswith("/*", i):
            k = sql.find("*/", i + 2)
            if k == -1:
                raise ValueError("unterminated comment in SQL")
            literal(sql[i:k + 2])
            i = k + 2
        elif c == "$" and sql[i + 1:i + 2].isdigit() and not (i and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            num = int(sql[i + 1:j])
            if not 1 <= num <= nparams:
                raise ValueError(f"placeholder ${num} has no parameter ({nparams} given)")
            used.add(num)
            out.append(f"%(p{num})s" if py else f"?{num}")
            i = j
        else:
            literal(c)
            i += 1
    if used != set(range(1, nparams + 1)):
        missing = sorted(set(range(1, nparams + 1)) - used)
        raise ValueError(f"parameters not referenced by any placeholder: {missing}")
    return "".join(out)
