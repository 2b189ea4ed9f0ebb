"""migration_verify against a real PostgreSQL: a clean migration verifies, any change is found and located."""

import sqlite3

import pytest
from conftest import load
import test_sqlite_to_postgres_pg as base
from test_sqlite_to_postgres_pg import USAGE, _bad_source, ansible, connect, generated_source, make_source, migrate, query

from ansible_collections.claude_kit.stack.plugins.module_utils import migration_digest as md
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError

ver = load("plugins/modules/migration_verify.py", "migration_verify")
# The fixtures of test_sqlite_to_postgres_pg, which pytest finds here by name.
pg_template, pg_db, app_role = base.pg_template, base.pg_db, base.app_role


def vparams(src, db, pg, **over):
    out = dict(src=src, db=db, schema="public", tables=[], max_differences=10, allow_rejected=False, reject_report=None,
               timestamp_column="created_at")
    out.update(over)
    return out


def verify(pg, db, src, user="postgres", **over):
    conn = connect(pg, db, user)
    try:
        return ver.verify(vparams(src, db, pg, **over), conn)
    finally:
        conn.close()


def verify_fails(pg, db, src, **over):
    with pytest.raises(KitModuleError) as info:
        verify(pg, db, src, **over)
    return info.value


def tables(result):
    return {t["table"]: t for t in result["tables"]}


def big_source(path, rows=5000):
    """The sample rows plus `rows` generated usage rows, enough for several bisection rounds."""
    return generated_source(path, rows)


def test_clean_migration_verifies(pg_db, pg_server, tmp_path):
    src = big_source(tmp_path / "daemon.db")
    migrated = migrate(pg_server, pg_db, src)
    result = verify(pg_server, pg_db, migrated["backup_path"])
    assert result["changed"] is False and result["differing_tables"] == []
    usage = tables(result)["usage_data"]
    assert usage["match"] and usage["sqlite_rows"] == usage["postgres_rows"] == 5005
    assert usage["digest_sqlite"] == usage["digest_postgres"]
    assert usage["timestamps"]["timestamp"]["match"] and usage["timestamps"]["created_at"]["postgres_min"] == "2023-11-14 22:15:00"
    # the guide's verification table
    rows = {r["table_name"]: r for r in result["verification"]}
    assert rows["users"] == {"table_name": "users", "record_count": 3, "oldest_record": "2024-01-01 10:00:00",
                             "newest_record": "2024-01-01 10:00:00.123"}
    assert result["report"][0].split(" | ")[0].strip() == "table_name"
    assert any(line.startswith("usage_data ") and "5005" in line for line in result["report"])


def test_a_changed_value_is_found_by_key_and_column(pg_db, pg_server, tmp_path):
    src = big_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    query(pg_server, pg_db, "UPDATE usage_data SET tokens_used = tokens_used + 1 WHERE id = 3777")
    failed = verify_fails(pg_server, pg_db, src)
    usage = tables(failed.result)["usage_data"]
    assert usage["match"] is False and usage["sqlite_rows"] == usage["postgres_rows"]  # same count: only the digest sees it
    assert usage["differences"] == [{"key": {"id": "3777"}, "kind": "changed",
                                     "columns": [{"column": "tokens_used", "sqlite": "'11331'", "postgres": "'11332'"}]}]
    assert failed.result["differing_tables"] == ["usage_data"]
    assert "usage_data" in failed.msg and "id=3777 changed (tokens_used)" in failed.msg
    assert tables(failed.result)["alerts"]["match"] is True


def test_missing_extra_and_text_keys(pg_db, pg_server, tmp_path):
    src = big_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    query(pg_server, pg_db, "DELETE FROM usage_data WHERE id IN (150, 4000);"
          " INSERT INTO usage_data (id, user_id, timestamp) VALUES (999999, 1, '2024-01-01');"
          " UPDATE alerts SET metadata = '{\"threshold\": 81, \"tags\": [\"x\"]}' WHERE id = 'a-1'")
    failed = verify_fails(pg_server, pg_db, src)
    usage = tables(failed.result)["usage_data"]
    assert [(d["key"]["id"], d["kind"]) for d in usage["differences"]] == [
        ("150", "missing_in_postgres"), ("4000", "missing_in_postgres"), ("999999", "extra_in_postgres")]
    alerts = tables(failed.result)["alerts"]
    assert alerts["differences"][0]["key"] == {"id": "a-1"} and alerts["differences"][0]["columns"][0]["column"] == "metadata"
    assert sorted(failed.result["differing_tables"]) == ["alerts", "usage_data"]


def test_first_differences_in_key_order_up_to_the_limit(pg_db, pg_server, tmp_path):
    src = big_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    query(pg_server, pg_db, "UPDATE usage_data SET endpoint = 'changed' WHERE id % 500 = 0")
    failed = verify_fails(pg_server, pg_db, src, max_differences=3)
    keys = [d["key"]["id"] for d in tables(failed.result)["usage_data"]["differences"]]
    assert keys == ["500", "1000", "1500"]


def test_shifted_timestamps_show_in_the_ranges(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    query(pg_server, pg_db, "UPDATE users SET created_at = created_at + interval '1 hour' WHERE id = 1")
    failed = verify_fails(pg_server, pg_db, src)
    users = tables(failed.result)["users"]
    assert users["timestamps"]["created_at"]["match"] is False
    assert users["timestamps"]["created_at"]["postgres_max"] == "2024-01-01 11:00:00"
    assert users["differences"][0]["key"] == {"id": "1"}
    assert users["differences"][0]["columns"] == [{"column": "created_at", "sqlite": "'2024-01-01 10:00:00'", "postgres": "'2024-01-01 11:00:00'"}]


def test_rows_the_migration_rejects(pg_db, pg_server, tmp_path):
    usage = USAGE + [(6, 1, "2024-02-30 10:00:00", 1, 1, 1, 1, 0, 0.5, None, None, None),
                     (7, 1, "2030-01-01 00:00:00", "12abc", 1, 1, 1, 0, 0.5, None, None, None)]  # its timestamp is not compared
    src = make_source(tmp_path / "daemon.db", usage=usage)
    migrate(pg_server, pg_db, src, on_reject="skip")
    failed = verify_fails(pg_server, pg_db, src)
    entry = tables(failed.result)["usage_data"]
    assert entry["sqlite_rejected"] == 2 and entry["timestamps"]["timestamp"]["match"]
    assert entry["differences"][0]["kind"] == "not_convertible" and entry["differences"][0]["key"] == {"id": 6}
    assert "not a valid date" in entry["differences"][0]["columns"][0]["reason"]
    result = verify(pg_server, pg_db, src, allow_rejected=True)
    assert tables(result)["usage_data"]["match"] is True


def test_a_reject_report_leaves_its_rows_out(pg_db, pg_server, tmp_path):
    """After on_reject=skip, the rows the conversion and PostgreSQL refused are not differences."""
    src = _bad_source(tmp_path / "daemon.db")
    result = migrate(pg_server, pg_db, src, on_reject="skip")
    assert result["rejected_rows"] == 10
    failed = verify_fails(pg_server, pg_db, src, allow_rejected=True)  # the foreign key's and CHECK's rows are missing
    kinds = {d["kind"] for t in failed.result["tables"] for d in t["differences"]}
    assert kinds == {"missing_in_postgres"}
    verified = verify(pg_server, pg_db, src, reject_report=result["reject_report"])
    usage = tables(verified)["usage_data"]
    assert usage["match"] and usage["sqlite_excluded"] == 5 and usage["sqlite_rows"] == 10 and usage["postgres_rows"] == 5
    # a row changed afterwards is still found
    query(pg_server, pg_db, "UPDATE usage_data SET endpoint = 'x' WHERE id = 2")
    failed = verify_fails(pg_server, pg_db, src, reject_report=result["reject_report"])
    assert [d["key"] for d in tables(failed.result)["usage_data"]["differences"]] == [{"id": "2"}]


ALL_TYPES_PG = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE kinds (
    id bigint PRIMARY KEY, small smallint, f8 double precision, f4 real, n numeric, n2 numeric(6,2), ok boolean,
    t timestamptz, d date, tx text, c char(5), v varchar(10), j json, jb jsonb, u uuid, b bytea, m mood
);
"""
ALL_TYPES_ROWS = [
    (1, 7, 0.1, 0.1, "1.50", 12.5, 1, "2024-01-15T10:30:00+01:00", "2024-01-15", "tab\t nl\n bs\\ cr\r vt\v ff\f bsp\b", "ab", "é",
     '{"b": 1, "a": [1.0, 2e3]}', '{"zz": "\\u00e9\\n", "a": -0.0, "b": {"c": null}}', "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}",
     b"\x00\x01\\\xff", "happy"),
    (2, -32768, 1e300, 3.4e38, "123456789012345678901234567890.000", -0.05, "false", 1705316400123, 1705276800, "", "", "",
     "[]", "[1, 1.50, 100e-2, true, false, null]", "a0eebc999c0b4ef8bb6d6bb9bd380a12", "text to bytes", "sad"),
    (3, None, 5e-324, 1.401298464324817e-45, "1e-5", None, None, None, None, None, None, None, None, None, None, None, None),
    (4, 0, 123456789012345.6, 16777217, -0.0, 0, "t", "2024-01-15 10:30:00.000001", "2024-02-29", "x" * 20, "abcde", "ten chars!",
     '"s"', '"\\ud83d\\ude00 emoji"', "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A13", b"", "ok"),
]


def test_every_supported_type_round_trips_and_verifies(pg_db, pg_server, tmp_path):
    """The converters' tokens are exactly what PostgreSQL prints, for every supported type."""
    pg_server.psql(ALL_TYPES_PG, pg_db)
    src = str(tmp_path / "kinds.db")
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE kinds (id INTEGER PRIMARY KEY, small, f8, f4, n, n2, ok, t, d, tx, c, v, j, jb, u, b, m)")
    conn.executemany(f"INSERT INTO kinds VALUES ({', '.join('?' * 17)})", ALL_TYPES_ROWS)
    conn.commit()
    conn.close()
    result = migrate(pg_server, pg_db, src, tables=["kinds"])
    assert result["rejected_rows"] == 0, result["rejects"]
    verified = verify(pg_server, pg_db, src, tables=["kinds"])
    assert tables(verified)["kinds"]["match"] is True
    assert query(pg_server, pg_db, "SELECT t::text, format('%s|', c), encode(b, 'hex'), u::text FROM kinds WHERE id = 1") == [
        ("2024-01-15 09:30:00+00", "ab   |", "00015cff", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")]
    # a change in any of them is seen
    changes = (("f4", "0.2"), ("jb", "'{\"a\": 0}'"), ("c", "'abc'"), ("b", "'\\x00'::bytea"), ("t", "t + interval '1 microsecond'"),
               ("tx", "tx || ' '"), ("n", "1.5"))
    for column, new in changes:
        conn = connect(pg_server, pg_db)
        cur = conn.cursor()
        cur.execute(f"UPDATE kinds SET {column} = {new} WHERE id = 1")
        conn.commit()
        with pytest.raises(KitModuleError) as info:
            verify(pg_server, pg_db, src, tables=["kinds"])
        diff = tables(info.value.result)["kinds"]["differences"]
        assert [d["key"] for d in diff] == [{"id": "1"}] and [c["column"] for c in diff[0]["columns"]] == [column], (column, diff)
        cur.execute("ROLLBACK; TRUNCATE kinds")
        conn.commit()
        conn.close()
        migrate(pg_server, pg_db, src, tables=["kinds"])


def test_table_without_primary_key_is_compared_but_not_narrowed(pg_db, pg_server, tmp_path):
    pg_server.psql("CREATE TABLE events (name text, at timestamp)", pg_db)
    src = str(tmp_path / "events.db")
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE events (name TEXT, at TEXT)")
    conn.executemany("INSERT INTO events VALUES (?, ?)", [("a", "2024-01-01 00:00:00"), ("a", "2024-01-01 00:00:00"), ("b", None)])
    conn.commit()
    conn.close()
    migrate(pg_server, pg_db, src, tables=["events"])
    assert tables(verify(pg_server, pg_db, src, tables=["events"]))["events"]["match"]
    query(pg_server, pg_db, "DELETE FROM events WHERE ctid = (SELECT min(ctid) FROM events WHERE name = 'a')")
    failed = verify_fails(pg_server, pg_db, src, tables=["events"])
    entry = tables(failed.result)["events"]
    assert (entry["sqlite_rows"], entry["postgres_rows"]) == (3, 2)  # a duplicate row that went missing
    assert "no primary key" in entry["note"]


def test_verify_is_read_only_and_works_with_select_only(pg_db, pg_server, tmp_path, app_role):
    src = make_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    pg_server.psql("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kit_reader') THEN"
                   " CREATE ROLE kit_reader LOGIN; END IF; END $$;")
    pg_server.psql("GRANT USAGE ON SCHEMA public TO kit_reader; GRANT SELECT ON ALL TABLES IN SCHEMA public TO kit_reader", pg_db)
    result = verify(pg_server, pg_db, src, user="kit_reader")
    assert result["differing_tables"] == []
    # the SQLite file is opened read-only: it is not modified, not even its journal mode
    assert open(src, "rb").read(100)[18:20] == b"\x01\x01"


def test_verify_through_ansible(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    args = {"src": src, "db": pg_db, "login_unix_socket": pg_server.dir, "login_port": pg_server.port}
    good = ansible("migration_verify", args, check=True)
    assert good.get("failed") is not True, good.get("msg")
    assert good["changed"] is False and good["differing_tables"] == []
    assert not good.get("deprecations")
    query(pg_server, pg_db, "UPDATE alerts SET acknowledged = NOT acknowledged WHERE id = 'a-2'")
    bad = ansible("migration_verify", args)
    assert bad["failed"] is True and "alerts: " in bad["msg"] and "id=a-2 changed (acknowledged)" in bad["msg"]
    assert bad["differing_tables"] == ["alerts"]


def test_large_tables_are_read_in_parallel_parts(pg_db, pg_server, tmp_path, monkeypatch):
    monkeypatch.setattr(md, "PARALLEL_MIN_ROWS", 100)
    monkeypatch.setattr(ver, "cpu_workers", lambda *args, **kwargs: 3)
    split = []
    real_plan = md.plan_tasks
    monkeypatch.setattr(md, "plan_tasks", lambda *a, **k: split.append(real_plan(*a, **k)) or split[-1])
    src = big_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    result = verify(pg_server, pg_db, src)
    # Three processes; the large usage_data table is read as three rowid ranges, one per process.
    assert split and len(split[0]) == 3
    usage_ranges = [(low, high) for part in split[0] for _n, position, low, high in part if low is not None]
    usage_ranges.sort()
    # ids 1-5 and 100-5099: three ranges from 1, the last one open-ended, no gap, no overlap
    assert len(usage_ranges) == 3 and usage_ranges[0][0] == 1 and usage_ranges[-1][1] is None
    assert all(usage_ranges[n][1] == usage_ranges[n + 1][0] for n in range(2))
    usage = tables(result)["usage_data"]
    assert usage["match"] and usage["sqlite_rows"] == 5005 and usage["timestamps"]["created_at"]["sqlite_max"] == "2024-01-15 13:00:00"
    query(pg_server, pg_db, "UPDATE usage_data SET cost_usd = cost_usd + 1 WHERE id IN (120, 4999)")
    failed = verify_fails(pg_server, pg_db, src)
    assert [d["key"]["id"] for d in tables(failed.result)["usage_data"]["differences"]] == ["120", "4999"]


def test_a_file_written_during_the_comparison_is_refused(pg_db, pg_server, tmp_path, monkeypatch):
    src = make_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    real = ver.verify_table

    def write_meanwhile(cur, sconn, plan, *args):
        if plan.table == "alerts":  # the daemon writes while the comparison runs
            writer = sqlite3.connect(src)
            writer.execute("UPDATE users SET email = 'new@example.org' WHERE id = 2")
            writer.commit()
            writer.close()
        return real(cur, sconn, plan, *args)

    monkeypatch.setattr(ver, "verify_table", write_meanwhile)
    failed = verify_fails(pg_server, pg_db, src)
    assert "changed while it was being compared" in failed.msg and "backup_path" in failed.msg
