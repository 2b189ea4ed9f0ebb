"""The database tier as the application and an operator see it."""

import hashlib

import psycopg2
import psycopg2.errors
import pytest
import testinfra.utils.ansible_runner
from helpers import INVENTORY, PROJECT_DIR, app_connect, host_ip, psql

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("database")

EXPECTED_MAJOR = {"molecule-pg-debian12": 15, "molecule-pg-debian13": 17}


def test_distribution_version_of_postgresql(host):
    major = int(psql(host, "SHOW server_version_num")[0]) // 10000
    assert major == EXPECTED_MAJOR[host.backend.get_hostname()]


def test_service_runs_and_listens(host):
    major = EXPECTED_MAJOR[host.backend.get_hostname()]
    assert host.service(f"postgresql@{major}-main").is_running
    assert host.service(f"postgresql@{major}-main").is_enabled
    assert host.socket(f"tcp://{host_ip(host)}:5432").is_listening
    assert host.socket("tcp://127.0.0.1:5432").is_listening


def test_app_role_reads_and_writes_over_tcp(host):
    with app_connect(host) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO alerts (id, level, title, timestamp, metadata) VALUES (%s, 'warning', 'disk', now(), %s)"
            " RETURNING id",
            ("molecule-alert-1", '{"host": "db"}'),
        )
        assert cur.fetchone()[0] == "molecule-alert-1"
        cur.execute("INSERT INTO usage_data (tokens_used, requests_count) VALUES (1000, 50) RETURNING id")
        usage_id = cur.fetchone()[0]
        cur.execute("SELECT level, metadata->>'host' FROM alerts WHERE id = %s", ("molecule-alert-1",))
        assert cur.fetchone() == ("warning", "db")
        cur.execute("UPDATE alerts SET acknowledged = true WHERE id = %s", ("molecule-alert-1",))
        assert cur.rowcount == 1
        cur.execute("DELETE FROM alerts WHERE id = %s", ("molecule-alert-1",))
        cur.execute("DELETE FROM usage_data WHERE id = %s", (usage_id,))
        assert cur.rowcount == 1


def test_alert_level_check_constraint(host):
    with app_connect(host) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute("INSERT INTO alerts (id, level, title, timestamp) VALUES ('bad', 'panic', 't', now())")


def test_wrong_password_is_rejected(host):
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        app_connect(host, password="not-the-password-at-all")


def test_no_other_role_or_database_over_tcp(host):
    # pg_hba.conf allows the app role into its database and nothing else.
    with pytest.raises(psycopg2.OperationalError, match="no pg_hba.conf entry"):
        app_connect(host, user="postgres", password="anything")
    with pytest.raises(psycopg2.OperationalError, match="no pg_hba.conf entry"):
        app_connect(host, dbname="postgres")


def test_only_peer_and_scram_in_pg_hba(host):
    methods = set(psql(host, "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE error IS NULL", "postgres"))
    assert methods == {"peer", "scram-sha-256"}
    assert psql(host, "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'claude_app'") == ["t"]


@pytest.mark.parametrize(
    "statement,message",
    [
        ("CREATE TABLE intruder (id int)", "permission denied for schema public"),
        ("CREATE TEMP TABLE intruder (id int)", "permission denied to create temporary tables"),
        ("DROP TABLE alerts", "must be owner of table alerts"),
        ("ALTER TABLE alerts ADD COLUMN x int", "must be owner of table alerts"),
        ("TRUNCATE alerts", "permission denied for table alerts"),
        ("SELECT * FROM claude_kit.schema_migrations", "permission denied for schema claude_kit"),
        ("SELECT pg_stat_statements_reset()", "permission denied for function pg_stat_statements_reset"),
    ],
)
def test_app_role_gets_permission_denied_for_ddl(host, statement, message):
    with app_connect(host) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match=message):
            cur.execute(statement)


def test_app_role_attributes(host):
    row = psql(
        host,
        "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls"
        " FROM pg_roles WHERE rolname = 'claude_app'",
    )
    assert row == ["t|f|f|f|f|f"]
    assert psql(host, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'claude_owner'") == ["f"]


def test_tables_owned_by_owner_role(host):
    owners = psql(host, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
    assert owners == ["claude_owner"]


def test_tables_created_later_are_covered_by_default_privileges(host):
    psql(host, "SET ROLE claude_owner; CREATE TABLE later_table (id serial PRIMARY KEY, note text)")
    try:
        with app_connect(host) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO later_table (note) VALUES ('added after deploy') RETURNING id")
            cur.execute("SELECT note FROM later_table")
            assert cur.fetchall() == [("added after deploy",)]
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("DROP TABLE later_table")
    finally:
        psql(host, "DROP TABLE later_table")


def test_guide_tables_and_indexes_exist(host):
    tables = set(psql(host, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
    assert {"alerts", "predictions", "usage_data", "users"} <= tables
    indexes = set(psql(host, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"))
    assert {
        "idx_usage_data_timestamp",
        "idx_usage_data_user_id",
        "idx_alerts_timestamp",
        "idx_alerts_level",
        "idx_predictions_date",
        "idx_usage_data_timestamp_user",
    } <= indexes


def test_every_schema_version_recorded_with_its_checksum(host):
    expected = []
    for path in sorted((PROJECT_DIR / "files").glob("*.sql")):
        if path.name == "schema.sql":
            version, name = 1, "schema"
        else:
            number, _, rest = path.stem.partition("_")
            version, name = int(number), rest
        expected.append(f"{version}|{name}|{hashlib.sha256(path.read_bytes()).hexdigest()}")
    rows = psql(host, "SELECT version, name, checksum FROM claude_kit.schema_migrations ORDER BY version")
    assert rows == sorted(expected, key=lambda row: int(row.split("|")[0]))
    assert rows[0].startswith("1|schema|")


def test_tuning_is_live_at_the_guides_values(host):
    # Each container is limited to 1 GiB: the guide's server.
    settings = dict(
        line.split("|")
        for line in psql(
            host,
            "SELECT name, current_setting(name) FROM pg_settings WHERE name IN"
            " ('shared_buffers', 'effective_cache_size', 'work_mem', 'maintenance_work_mem',"
            "  'checkpoint_completion_target', 'random_page_cost', 'shared_preload_libraries',"
            "  'password_encryption')",
        )
    )
    assert settings == {
        "shared_buffers": "256MB",
        "effective_cache_size": "768MB",
        "work_mem": "4MB",
        "maintenance_work_mem": "64MB",
        "checkpoint_completion_target": "0.9",
        "random_page_cost": "1.1",
        "shared_preload_libraries": "pg_stat_statements",
        "password_encryption": "scram-sha-256",
    }
    assert psql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == ["0"]
    sources = psql(host, "SELECT DISTINCT sourcefile FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem')")
    assert len(sources) == 1 and sources[0].endswith("postgresql.auto.conf")


def test_pg_stat_statements_returns_rows(host):
    with app_connect(host) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM usage_data WHERE timestamp >= now() - interval '1 hour'")
    # PostgreSQL 13 renamed the guide's total_time/mean_time to *_exec_time.
    rows = psql(
        host,
        "SELECT calls, round(total_exec_time::numeric, 3), round(mean_exec_time::numeric, 3)"
        " FROM pg_stat_statements WHERE query LIKE 'SELECT count(*) FROM usage_data WHERE timestamp%'",
    )
    assert rows and int(rows[0].split("|")[0]) >= 1
