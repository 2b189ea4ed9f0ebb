# -*- coding: utf-8 -*-
"""What the migration does to the target tables around the load: their secondary indexes,
their sequences, and the set-based check of their foreign keys.

All of it runs inside the migration's one transaction, so a failed or interrupted
run takes it back with the rollback.
"""

from __future__ import annotations

from ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg import sql
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_encoding import show_value

REBUILD_MIN_ROWS = 10_000  # fewer rows to load: the indexes stay (building them costs more than it saves)
NEXTVAL_LIMIT = 10_000_000

# -- foreign keys, set-based ----------------------------------------------------------------


def can_check_keys_after(cur, plans):
    """(whether, why not): may the rows be loaded with session_replication_role = replica and
    their foreign keys checked afterwards, set-based (check_foreign_keys), instead of by
    PostgreSQL's per-row triggers? Only as a superuser (the setting requires it), and only
    when no table has triggers or rules of its own (which that setting would silence too)
    or a foreign key that is NOT VALID (whose old rows may break it)."""
    cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    row = cur.fetchone()
    if not row or not row[0]:
        return False, "the role is not a superuser"
    for plan in plans:
        if plan.own_triggers:
            return False, f"table {plan.label} has triggers or rules of its own"
        if any(not fk["validated"] for fk in plan.foreign_keys):
            return False, f"table {plan.label} has a NOT VALID foreign key"
    return True, None


def _child():
    """The alias of the child table in the foreign-key queries (built on use: psycopg2 may be absent at import)."""
    return sql.Identifier("c")


def _parent():
    """The alias of the parent table in the foreign-key queries."""
    return sql.Identifier("p")


def _broken_sql(plan, fk):
    """(condition on child rows c that break fk, condition matching a parent row p to c)."""
    pairs = list(zip(fk["columns"], fk["parent_columns"]))
    matches = sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(_parent(), sql.Identifier(pc), _child(), sql.Identifier(cc)) for cc, pc in pairs
    )
    present = sql.SQL(" AND ").join(sql.SQL("{}.{} IS NOT NULL").format(_child(), sql.Identifier(cc)) for cc, _parent_col in pairs)
    broken = sql.SQL("({} AND NOT EXISTS (SELECT 1 FROM {} {} WHERE {}))").format(present, sql.Identifier(*fk["parent"]), _parent(), matches)
    if fk["match"] == "f" and len(pairs) > 1:  # MATCH FULL: all columns NULL or none
        some_null = sql.SQL(" OR ").join(sql.SQL("{}.{} IS NULL").format(_child(), sql.Identifier(cc)) for cc, _parent_col in pairs)
        broken = sql.SQL("({} OR (({}) AND NOT ({})))").format(broken, some_null, present)
    return broken, matches


def _lock_parents(cur, plan, fk, matches):
    """Lock the parent rows of the table's rows FOR KEY SHARE, as PostgreSQL's own check does."""
    cur.execute(
        sql.SQL("SELECT 1 FROM {} {} WHERE EXISTS (SELECT 1 FROM {} {} WHERE {}) FOR KEY SHARE OF {}").format(
            sql.Identifier(*fk["parent"]), _parent(), plan.ident, _child(), matches, _parent()
        )
    )


def _reject_orphans(cur, plan, fk, broken, rejects, stage):
    """Report every row of the table that breaks fk; returns how many."""
    key_cols = [sql.SQL("{}.{}").format(_child(), sql.Identifier(name)) for name in plan.pk_names] or [sql.SQL("NULL")]
    fk_cols = [sql.SQL("{}.{}::text").format(_child(), sql.Identifier(cc)) for cc in fk["columns"]]
    n_key, orphans = len(key_cols), 0
    with cur.connection.cursor(name="claude_kit_fk_check") as found:  # server-side: memory stays flat
        found.itersize = 1000
        found.execute(sql.SQL("SELECT {}, {} FROM {} {} WHERE {}").format(
            sql.SQL(", ").join(key_cols), sql.SQL(", ").join(fk_cols), plan.ident, _child(), broken))
        for row in found:
            orphans += 1
            key = dict(zip(plan.pk_names, row[:n_key])) if plan.pk_names else None
            shown = ", ".join("null" if v is None else v for v in row[n_key:])
            reason = (f'violates foreign key constraint "{fk["name"]}": Key ({", ".join(fk["columns"])})=({shown})'
                      f' is not present in table "{fk["parent"][1]}"')
            rejects.count_row(plan.label)
            rejects.add(plan.label, key, fk["columns"][0] if len(fk["columns"]) == 1 else None, show_value(shown), reason, stage,
                        constraint=fk["name"], columns=list(fk["columns"]))
    return orphans


def check_foreign_keys(cur, plan, rejects, locked, stage="foreign_key"):
    """Remove and reject the rows of plan's table that break one of its foreign keys.

    Run after loading with session_replication_role = replica. Every foreign key is
    validated, so rows that break one are rows of this run. Parent rows are locked
    FOR KEY SHARE as PostgreSQL's own check does, unless their table is locked
    already (locked: set of (schema, table)). Repeats until nothing is removed (a
    self-reference may orphan more rows). Returns the number of rows removed.
    """
    removed = 0
    while True:
        round_removed = 0
        for fk in plan.foreign_keys:
            broken, matches = _broken_sql(plan, fk)
            if fk["parent"] not in locked:
                _lock_parents(cur, plan, fk, matches)
            if _reject_orphans(cur, plan, fk, broken, rejects, stage):
                # only now: the parents are locked, so no row of this run can lose its parent meanwhile
                cur.execute(sql.SQL("DELETE FROM {} {} WHERE {}").format(plan.ident, _child(), broken))
                round_removed += cur.rowcount
        removed += round_removed
        if not round_removed:
            return removed


# -- secondary indexes, rebuilt after the load ------------------------------------------------

# Plain secondary indexes only: not unique (a duplicate key must still be refused
# row by row while loading), on columns only (an expression or a predicate can fail
# on a row, which must then be rejected on its own, not fail the rebuild), not
# backing a constraint, not part of a partitioned index, nothing depending on them,
# and nothing about them that pg_get_indexdef() does not print (tablespace,
# comment, per-column statistics targets, CLUSTER mark, replica identity).
_DROPPABLE_SQL = """
SELECT n.nspname, ic.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_class t ON t.oid = i.indrelid
WHERE i.indrelid = %(oid)s
  AND t.relkind = 'r' AND ic.relkind = 'i'
  AND pg_has_role(t.relowner, 'USAGE')
  AND NOT i.indisunique AND NOT i.indisprimary AND NOT i.indisexclusion
  AND i.indisvalid AND i.indisready AND i.indislive
  AND NOT i.indisclustered AND NOT i.indisreplident
  AND i.indexprs IS NULL AND i.indpred IS NULL
  AND ic.reltablespace = 0
  AND NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = i.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = i.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_description WHERE objoid = i.indexrelid AND classoid = 'pg_class'::regclass)
  AND NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = i.indexrelid AND attstattarget >= 0)
  AND NOT EXISTS (SELECT 1 FROM pg_depend WHERE refclassid = 'pg_class'::regclass AND refobjid = i.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_depend WHERE classid = 'pg_class'::regclass AND objid = i.indexrelid AND deptype = 'e')
ORDER BY ic.relname
"""


def drop_secondary_indexes(cur, plan, rows):
    """Drop the table's plain secondary indexes for a load of `rows` rows (none below
    REBUILD_MIN_ROWS); returns [(schema, name, definition)] for rebuild_indexes().

    Only for a table that is empty and locked in this transaction: building an index
    once from the loaded rows costs a fraction of updating it row by row. DROP INDEX is
    transactional, so an interrupted run gets them back with the rollback; meanwhile
    the table is locked ACCESS EXCLUSIVE (readers wait too)."""
    if rows < REBUILD_MIN_ROWS:
        return []
    cur.execute(_DROPPABLE_SQL, {"oid": plan.oid})
    dropped = cur.fetchall()
    for schema, name, _definition in dropped:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
    return dropped


def rebuild_indexes(cur, dropped):
    """Create the dropped indexes again from the definitions PostgreSQL printed for them; their names."""
    for _schema, _name, definition in dropped:
        cur.execute(definition)
    return [name for _schema, name, _definition in dropped]


# -- sequences ---------------------------------------------------------------------------


def _sequence_state(cur, sequence):
    """(increment, whether the role may UPDATE it (setval), the value nextval() would give)."""
    cur.execute(
        "SELECT n.nspname, c.relname, s.seqincrement, has_sequence_privilege(c.oid, 'UPDATE')"
        " FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE s.seqrelid = %s::regclass",
        (sequence,),
    )
    seq_schema, seq_name, increment, may_update = cur.fetchone()
    cur.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(seq_schema, seq_name)))
    last, called = cur.fetchone()
    return increment, may_update, last + increment if called else last


def _advance(cur, sequence, highest, increment, next_value):
    """nextval() as many times as needed to pass highest; returns the next value then."""
    calls = -(-(highest - next_value + 1) // increment)
    if calls > NEXTVAL_LIMIT:
        raise KitModuleError(
            f"sequence {sequence} must move {calls} steps past {highest}; the role may not setval() it"
            f" (no UPDATE privilege) and more than {NEXTVAL_LIMIT} nextval() calls are refused: run as the owner"
        )
    cur.execute("SELECT max(nextval(%s)) FROM generate_series(1, %s)", (sequence, calls))
    return cur.fetchone()[0] + increment


def advance_sequences(cur, plan):
    """Move each serial/identity sequence of the table past the highest value in its column.

    setval() where the role may UPDATE the sequence; otherwise (the app role has
    USAGE and SELECT only) nextval() as many times as needed, up to NEXTVAL_LIMIT.
    A sequence already past the column's maximum is left alone. Returns what was done.
    """
    done = []
    for column, sequence in plan.serials:
        cur.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), plan.ident))
        highest = cur.fetchone()[0]
        if highest is None:
            continue
        increment, may_update, next_value = _sequence_state(cur, sequence)
        entry = {"table": plan.label, "column": column, "sequence": sequence, "max_value": highest}
        if increment <= 0 or next_value > highest:
            entry.update(action="none", next_value=next_value)
        elif may_update:
            cur.execute("SELECT setval(%s, %s)", (sequence, highest))
            entry.update(action="setval", next_value=highest + increment)
        else:
            entry.update(action="nextval", next_value=_advance(cur, sequence, highest, increment, next_value))
        done.append(entry)
    return done
